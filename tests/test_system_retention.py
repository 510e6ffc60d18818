"""Retention through the whole running system, with short retention periods: the video
goes once its MP3 is stored, a failed job's video after VIDEO_RETENTION_HOURS, and an MP3
past MP3_RETENTION_DAYS is removed by the sweeper, after which its download is 410 Gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bson import ObjectId

from testing.infra import Infra
from testing.media import MediaSpec, make_media, random_file
from testing.processes import wait_for
from tests.fixtures.auth import unique_email
from tests.fixtures.system import System, running_system

pytestmark = pytest.mark.timeout(300)
PASSWORD = "correct horse battery staple"
MP3_RETENTION_SECONDS = 20.0
VIDEO_RETENTION_SECONDS = 6.0


@pytest.fixture(scope="module")
def system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    def start(srv: System) -> None:
        srv.start_auth()
        srv.start_storage()
        srv.start_gateway()
        srv.start_converter(1)
        srv.start_notifier()
        srv.start_sweeper()

    short_retention = {
        "MP3_RETENTION_DAYS": str(MP3_RETENTION_SECONDS / 86400),
        "VIDEO_RETENTION_HOURS": str(VIDEO_RETENTION_SECONDS / 3600),
        "SWEEP_INTERVAL_SECONDS": "1",
    }
    with running_system(infra, tmp_path_factory.mktemp("system-retention"), start, short_retention) as srv:
        yield srv


def gridfs_count(system: System, bucket: str, file_id: str) -> tuple[int, int]:
    """(files, chunks) stored for one file id in a GridFS bucket of the system's database."""
    client = system.infra.mongo()
    try:
        db = client[system.mongo_db]
        oid = ObjectId(file_id)
        return (
            int(db[f"{bucket}.files"].count_documents({"_id": oid})),
            int(db[f"{bucket}.chunks"].count_documents({"files_id": oid})),
        )
    finally:
        client.close()


def test_videos_go_after_conversion_and_mp3s_expire_with_410(system: System, tmp_path: Path) -> None:
    email = unique_email("retention")
    assert system.register(email, PASSWORD).status == 201
    token = system.login(email, PASSWORD)
    headers = {"Authorization": f"Bearer {token}"}

    good = system.upload(token, make_media(tmp_path / "clip.mp4", MediaSpec(duration=2.0))).json()
    bad = system.upload(token, random_file(tmp_path / "noise.mp4")).json()
    done = system.wait_job_finished(token, good["job_id"])
    failed = system.wait_job_finished(token, bad["job_id"])
    assert done["state"] == "succeeded" and failed["state"] == "failed"

    # The converted video is gone as soon as its MP3 is stored; the MP3 is there until expiry.
    assert gridfs_count(system, "videos", good["video_id"]) == (0, 0)
    expires_at = datetime.fromisoformat(done["expires_at"].replace("Z", "+00:00"))
    assert 0 < (expires_at - datetime.now(UTC)).total_seconds() <= MP3_RETENTION_SECONDS
    download = system.request("GET", f"/download?fid={done['mp3_id']}", headers=headers)
    assert download.status == 200 and download.body[:3] in (b"ID3", b"\xff\xfb")
    assert gridfs_count(system, "mp3s", done["mp3_id"])[0] == 1

    # A failed job's video stays for VIDEO_RETENTION_HOURS, then the sweeper removes it.
    wait_for(
        lambda: gridfs_count(system, "videos", bad["video_id"]) == (0, 0),
        timeout=VIDEO_RETENTION_SECONDS + 30,
        interval=0.5,
        what="the failed job's video removed after its retention",
    )

    # Past its expiry the MP3 is removed (file and chunks) and its download is 410 Gone.
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()))
    wait_for(
        lambda: gridfs_count(system, "mp3s", done["mp3_id"]) == (0, 0),
        timeout=30,
        interval=0.5,
        what="the expired MP3 removed from GridFS",
    )
    gone = system.request("GET", f"/download?fid={done['mp3_id']}", headers=headers)
    assert gone.status == 410, gone.body
    assert gone.json()["error"] == "gone"
    job = system.job(token, good["job_id"])
    assert job["expired"] is True and "download_url" not in job
