"""The gateway's job endpoints against the real auth, storage and RabbitMQ: paging, cancel,
delete, expired downloads (410), progress fields and a live event stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from tests.fixtures.storage import StorageHandle
from tests.fixtures.storage_gateway import MediaUser

MP3S = storage_pb2.BUCKET_MP3S


def _job_for(storage: StorageHandle, user: MediaUser) -> jobs_pb2.Job:
    video = storage.upload(b"a video" * 100, owner_id=user.id, filename="clip.mp4")
    return storage.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(owner_id=user.id, owner_email=user.email, video_id=video.id)
    ).job


def _finish(storage: StorageHandle, job: jobs_pb2.Job) -> str:
    storage.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(job_id=job.id, worker_id="w"))
    mp3 = storage.upload(
        b"ID3" + b"\xff" * 5000, owner_id=job.owner_id, bucket=MP3S, job_id=job.id, filename="a.mp3"
    )
    storage.jobs.FinishJob(
        jobs_pb2.FinishJobRequest(job_id=job.id, worker_id="w", mp3_id=mp3.id, duration_seconds=1)
    )
    return mp3.id


def test_paging_over_250_jobs(media_user: Callable[[], MediaUser], storage_service: StorageHandle) -> None:
    user = media_user()
    video = storage_service.upload(b"v" * 100, owner_id=user.id)
    made = [
        storage_service.jobs.CreateJob(jobs_pb2.CreateJobRequest(owner_id=user.id, video_id=video.id)).job.id
        for _ in range(250)
    ]
    seen: list[str] = []
    url = "/jobs?limit=100"
    pages = 0
    while url:
        page = user.http.get(url.replace("http://gateway.test", ""), headers=user.headers)
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        url = body["next"]
        if pages == 1:  # a job created meanwhile is newer: it never shows up on later pages
            _job_for(storage_service, user)
    assert pages == 3 and seen == list(reversed(made))
    assert user.http.get("/jobs?page_token=bogus!", headers=user.headers).status_code == 400
    assert user.http.get("/jobs?limit=ten", headers=user.headers).status_code == 400


def test_job_fields_cancel_and_delete(
    media_user: Callable[[], MediaUser], storage_service: StorageHandle
) -> None:
    user, other = media_user(), media_user()
    queued = _job_for(storage_service, user)
    shown = user.http.get(f"/jobs/{queued.id}", headers=user.headers).get_json()
    assert shown["state"] == "queued" and shown["queue_position"] >= 1 and shown["progress"] == 0
    assert other.http.post(f"/jobs/{queued.id}/cancel", headers=other.headers).status_code == 404
    cancelled = user.http.post(f"/jobs/{queued.id}/cancel", headers=user.headers)
    assert cancelled.status_code == 200 and cancelled.get_json()["state"] == "cancelled"
    again = user.http.post(f"/jobs/{queued.id}/cancel", headers=user.headers)
    assert again.status_code == 409

    done = _job_for(storage_service, user)
    mp3_id = _finish(storage_service, done)
    shown = user.http.get(f"/jobs/{done.id}", headers=user.headers).get_json()
    assert shown["progress"] == 1 and shown["expires_at"] and shown["download_url"].endswith(mp3_id)
    assert other.http.delete(f"/jobs/{done.id}", headers=other.headers).status_code == 404
    assert user.http.delete(f"/jobs/{done.id}", headers=user.headers).status_code == 204
    assert user.http.get(f"/jobs/{done.id}", headers=user.headers).status_code == 404
    db = storage_service.db
    assert db[f"{storage_service.settings.mp3_bucket}.files"].count_documents({"_id": ObjectId(mp3_id)}) == 0
    assert (
        db[f"{storage_service.settings.video_bucket}.files"].count_documents({"_id": ObjectId(done.video_id)})
        == 0
    )


def test_expired_mp3_download_is_410(
    media_user: Callable[[], MediaUser], storage_service: StorageHandle
) -> None:
    user = media_user()
    job = _job_for(storage_service, user)
    mp3_id = _finish(storage_service, job)
    assert user.http.get(f"/download?fid={mp3_id}", headers=user.headers).status_code == 200
    storage_service.db[storage_service.settings.jobs_collection].update_one(
        {"_id": ObjectId(job.id)}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    gone = user.http.get(f"/download?fid={mp3_id}", headers=user.headers)
    assert gone.status_code == 410 and gone.get_json()["error"] == "gone"


def _events(response: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1)
                for line in block.splitlines()
                if ": " in line and not line.startswith(":")
            )
            if "event" in fields:
                yield fields["event"], json.loads(fields["data"])


def test_event_stream_sees_every_state_in_order(
    media_user: Callable[[], MediaUser], storage_service: StorageHandle
) -> None:
    user = media_user()
    job = _job_for(storage_service, user)
    response = user.http.get(f"/jobs/{job.id}/events", headers=user.headers, buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert user.http.get("/jobs/0123456789abcdef01234567/events", headers=user.headers).status_code == 404

    def drive() -> None:
        time.sleep(1.5)  # the stream's consumer is bound by then
        storage_service.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(job_id=job.id, worker_id="w"))
        for value in (0.25, 0.5, 0.75):
            storage_service.jobs.ReportProgress(
                jobs_pb2.ReportProgressRequest(job_id=job.id, worker_id="w", progress=value, eta_seconds=2)
            )
            time.sleep(0.2)
        mp3 = storage_service.upload(b"ID3" + b"\xff" * 900, owner_id=user.id, bucket=MP3S, job_id=job.id)
        storage_service.jobs.FinishJob(jobs_pb2.FinishJobRequest(job_id=job.id, worker_id="w", mp3_id=mp3.id))

    driver = threading.Thread(target=drive)
    driver.start()
    got = list(_events(response))  # the stream ends by itself when the job ends
    driver.join()
    states = [data["state"] for kind, data in got if kind in ("job", "state")]
    assert states[0] == "queued" and states[-1] == "succeeded"
    order = ["queued", "converting", "succeeded"]
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == order
    progress = [data["progress"] for kind, data in got if kind == "progress"]
    assert progress == sorted(progress) and progress  # monotonic
    assert got[-1][0] == "job" and got[-1][1]["download_url"]


def test_event_stream_ends_when_its_job_is_deleted(
    media_user: Callable[[], MediaUser], storage_service: StorageHandle
) -> None:
    user = media_user()
    job = _job_for(storage_service, user)
    response = user.http.get(f"/jobs/{job.id}/events", headers=user.headers, buffered=False)

    def remove() -> None:
        time.sleep(1.5)
        assert user.http.delete(f"/jobs/{job.id}", headers=user.headers).status_code == 204

    remover = threading.Thread(target=remove)
    remover.start()
    got = list(_events(response))  # ends by itself
    remover.join()
    kinds = [kind for kind, _ in got]
    states = [data.get("state") for kind, data in got if kind in ("job", "state")]
    assert kinds[0] == "job" and states[0] == "queued"
    assert kinds[-1] == "removed" or states[-1] == "cancelled"
