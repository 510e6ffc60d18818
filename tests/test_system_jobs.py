"""Jobs people follow and control, through the whole running system (real processes):
progress that rises to 1, an event stream that sees every state in order, cancel while
converting (the converter is free again, nothing left in GridFS, no email), delete."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from testing.infra import Infra
from testing.media import MediaSpec, make_media
from testing.processes import wait_for
from tests.fixtures.auth import unique_email
from tests.fixtures.system import System, running_system

pytestmark = pytest.mark.timeout(600)
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def slow_system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One converter that takes about half a second per second of sound."""

    def start(srv: System) -> None:
        srv.start_auth()
        srv.start_storage()
        srv.start_gateway()
        srv.start_converter(1, CONVERTER_TEST_SLOWDOWN="0.5")
        srv.start_notifier()
        srv.start_sweeper()

    with running_system(infra, tmp_path_factory.mktemp("system-jobs"), start) as srv:
        yield srv


class Stream:
    """A Server-Sent Events stream read on a thread: (event, data) in arrival order."""

    def __init__(self, url: str, token: str) -> None:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
        self.response = urllib.request.urlopen(request, timeout=120)  # noqa: S310 - loopback
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = ""
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    self.events.append((kind, json.loads(line[6:])))
        finally:
            self.ended.set()

    def states(self) -> list[str]:
        seen = [data["state"] for kind, data in self.events if kind in ("job", "state")]
        return [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]

    def progress(self) -> list[float]:
        return [data["progress"] for kind, data in self.events if kind == "progress"]


def _user(system: System) -> tuple[str, str, dict[str, str]]:
    email = unique_email("jobs")
    assert system.register(email, PASSWORD).status == 201
    token = system.login(email, PASSWORD)
    return email, token, {"Authorization": f"Bearer {token}"}


def _mp3s_of(system: System, job_id: str) -> int:
    client = system.infra.mongo()
    try:
        return int(client[system.mongo_db]["mp3s.files"].count_documents({"metadata.job_id": job_id}))
    finally:
        client.close()


def test_progress_events_cancel_and_delete(slow_system: System, tmp_path: Path) -> None:
    email, token, headers = _user(slow_system)
    long_video = make_media(tmp_path / "long.mp4", MediaSpec(duration=30.0))
    short_video = make_media(tmp_path / "short.mp4", MediaSpec(duration=6.0))

    # A long job, followed live, cancelled while converting.
    first = slow_system.upload(token, long_video).json()["job_id"]
    stream = Stream(f"{slow_system.base_url}/jobs/{first}/events", token)
    wait_for(
        lambda: (lambda j: j["state"] == "converting" and j["progress"] > 0)(slow_system.job(token, first)),
        timeout=60,
        interval=0.2,
        what="the long job converting with some progress",
    )
    cancelled = slow_system.request("POST", f"/jobs/{first}/cancel", headers=headers)
    assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled"
    assert stream.ended.wait(30), "the stream ends when the job ends"
    assert stream.states() == ["queued", "converting", "cancelled"] or stream.states() == [
        "converting",
        "cancelled",
    ]
    assert stream.progress() == sorted(stream.progress())
    wait_for(lambda: _mp3s_of(slow_system, first) == 0, timeout=10, what="no MP3 of the cancelled job")

    # The converter is free again: the next job runs, its progress rises to 1.
    second = slow_system.upload(token, short_video).json()["job_id"]
    stream = Stream(f"{slow_system.base_url}/jobs/{second}/events", token)
    done = slow_system.wait_job_finished(token, second, timeout=120)
    assert done["state"] == "succeeded" and done["progress"] == 1 and done["expires_at"]
    assert stream.ended.wait(30)
    assert stream.states()[-1] == "succeeded" and "converting" in stream.states()
    rising = stream.progress()
    assert rising and rising == sorted(rising) and rising[-1] < 1
    assert stream.events[-1][0] == "job" and stream.events[-1][1]["progress"] == 1

    # One email: the succeeded job's; none for the cancelled one.
    [mail] = slow_system.sink.mailbox.wait_for(email, timeout=60)
    time.sleep(2)
    assert len(slow_system.sink.mailbox.to(email)) == 1 and "short" in str(mail["Subject"])
    assert slow_system.job(token, first)["state"] == "cancelled"

    # Delete: the job, its video and its MP3 are gone.
    mp3_id, video_id = done["mp3_id"], done["video_id"]
    assert slow_system.request("DELETE", f"/jobs/{second}", headers=headers).status == 204
    assert slow_system.request("GET", f"/jobs/{second}", headers=headers).status == 404
    client = slow_system.infra.mongo()
    try:
        db = client[slow_system.mongo_db]
        assert db["mp3s.files"].count_documents({"_id": ObjectId(mp3_id)}) == 0
        assert db["mp3s.chunks"].count_documents({"files_id": ObjectId(mp3_id)}) == 0
        assert db["videos.files"].count_documents({"_id": ObjectId(video_id)}) == 0
    finally:
        client.close()
    assert slow_system.request("GET", f"/download?fid={mp3_id}", headers=headers).status == 404
