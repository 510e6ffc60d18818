"""The job lifecycle in storage, against the real MongoDB-compatible server: claims exact
across processes, progress, cancel, remove, the email lease, paging, expiry."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable

import grpc
import pytest
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from storage.guard import Leases
from storage.jobstore import JobStore
from storage.mongo import Mongo
from storage.settings import Settings
from tests.fixtures.storage import StorageHandle
from tests.test_storage_jobs import mp3s_of, new_job

Q = jobs_pb2.JOB_STATE_QUEUED
C = jobs_pb2.JOB_STATE_CONVERTING
S = jobs_pb2.JOB_STATE_SUCCEEDED
F = jobs_pb2.JOB_STATE_FAILED
X = jobs_pb2.JOB_STATE_CANCELLED
MP3S = storage_pb2.BUCKET_MP3S


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def claim(
    storage: StorageHandle, job_id: str, worker: str, take_over: bool = False
) -> jobs_pb2.ClaimJobResponse:
    request = jobs_pb2.ClaimJobRequest(job_id=job_id, worker_id=worker, take_over=take_over)
    return storage.jobs.ClaimJob(request, timeout=10)


def report(
    storage: StorageHandle, job_id: str, worker: str, progress: float
) -> jobs_pb2.ReportProgressResponse:
    return storage.jobs.ReportProgress(
        jobs_pb2.ReportProgressRequest(job_id=job_id, worker_id=worker, progress=progress, eta_seconds=3),
        timeout=10,
    )


def mp3_for(storage: StorageHandle, job: jobs_pb2.Job) -> str:
    return storage.upload(
        os.urandom(3000), owner_id=job.owner_id, bucket=MP3S, job_id=job.id, filename="a.mp3"
    ).id


# -------------------------------------------------------------------------- racing processes
def _race(
    env: dict[str, str], job_ids: list[str], worker: str, start: float, out: multiprocessing.Queue
) -> None:
    from bson import ObjectId

    store = JobStore(Mongo(Settings.from_env(env)), Settings.from_env(env))
    while time.time() < start:
        time.sleep(0.001)
    won = []
    for job_id in job_ids:
        try:
            if store.claim(ObjectId(job_id), worker, take_over=False, lease=30)[1]:
                won.append(job_id)
        except Exception:  # noqa: BLE001, S110 - a refused claim is a lost race
            pass
    out.put(won)


def test_claims_are_exact_across_processes(storage_service: StorageHandle) -> None:
    """6 processes, each with its own MongoDB client, claim the same 25 jobs at once."""
    owner = f"race-{time.monotonic_ns()}"
    jobs = [new_job(storage_service, owner).id for _ in range(25)]
    env = {
        "MONGO_URI": storage_service.settings.mongo_uri,
        "MONGO_DB": storage_service.settings.mongo_db,
        "RABBITMQ_URL": "",
    }
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    start = time.time() + 4
    procs = [ctx.Process(target=_race, args=(env, jobs, f"w{i}", start, out)) for i in range(6)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    wins = [job for won in results for job in won]
    assert sorted(wins) == sorted(jobs)  # every job claimed exactly once
    for job_id in jobs:
        job = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id)).job
        assert job.state == C and job.attempts == 1 and job.version == 2


def test_claim_progress_finish(storage_service: StorageHandle) -> None:
    job = new_job(storage_service, f"o-{time.monotonic_ns()}")
    got = claim(storage_service, job.id, "w1")
    assert got.claimed and got.job.state == C and got.job.attempts == 1
    # Another converter cannot take a job with a live lease, unless told its holder is gone.
    assert not claim(storage_service, job.id, "w2").claimed
    assert report(storage_service, job.id, "w1", 0.4).proceed
    assert report(storage_service, job.id, "w1", 0.2).proceed  # never goes back
    seen = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).job
    assert seen.progress == pytest.approx(0.4) and seen.eta_seconds == 3
    taken = claim(storage_service, job.id, "w2", take_over=True)
    assert taken.claimed and taken.job.attempts == 2  # a takeover counts
    lost = report(storage_service, job.id, "w1", 0.5)
    assert not lost.proceed and lost.state == C
    mp3 = mp3_for(storage_service, job)
    fin = jobs_pb2.FinishJobRequest(job_id=job.id, worker_id="w1", mp3_id=mp3)
    assert code_of(lambda: storage_service.jobs.FinishJob(fin)) == grpc.StatusCode.FAILED_PRECONDITION
    done = storage_service.jobs.FinishJob(
        jobs_pb2.FinishJobRequest(job_id=job.id, worker_id="w2", mp3_id=mp3, duration_seconds=2.5)
    ).job
    assert (
        done.state == S
        and done.progress == 1
        and done.mp3_id == mp3
        and done.expires_at.seconds > time.time()
    )
    assert done.video_deleted  # KEEP_VIDEOS is off: the video goes once the MP3 is stored
    videos = storage_service.db[f"{storage_service.settings.video_bucket}.files"]
    assert videos.count_documents({"_id": __import__("bson").ObjectId(job.video_id)}) == 0
    assert not claim(storage_service, job.id, "w3").claimed


def test_queue_position(storage_service: StorageHandle) -> None:
    owner = f"o-{time.monotonic_ns()}"
    first, second = new_job(storage_service, owner), new_job(storage_service, owner)
    pos1 = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=first.id)).job.queue_position
    pos2 = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=second.id)).job.queue_position
    assert pos1 >= 1 and pos2 == pos1 + 1
    claim(storage_service, first.id, "w")
    assert storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=second.id)).job.queue_position == pos1


def test_cancel_queued_and_converting(storage_service: StorageHandle) -> None:
    owner = f"o-{time.monotonic_ns()}"
    queued = new_job(storage_service, owner)
    assert (
        code_of(
            lambda: storage_service.jobs.CancelJob(
                jobs_pb2.CancelJobRequest(job_id=queued.id, owner_id="other")
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    out = storage_service.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=queued.id, owner_id=owner))
    assert out.cancelled and out.job.state == X
    assert not claim(storage_service, queued.id, "w").claimed  # a cancelled job never starts

    converting = new_job(storage_service, owner)
    claim(storage_service, converting.id, "w")
    partial = mp3_for(storage_service, converting)
    out = storage_service.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=converting.id, owner_id=owner))
    assert out.cancelled and out.job.state == X
    response = report(storage_service, converting.id, "w", 0.5)
    assert not response.proceed and response.state == X
    assert mp3s_of(storage_service, converting.id) == []  # its partial MP3 is gone
    assert partial
    again = storage_service.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=converting.id))
    assert not again.cancelled


def test_remove_job_and_files(storage_service: StorageHandle) -> None:
    owner = f"o-{time.monotonic_ns()}"
    job = new_job(storage_service, owner)
    claim(storage_service, job.id, "w")
    mp3 = mp3_for(storage_service, job)
    storage_service.jobs.FinishJob(jobs_pb2.FinishJobRequest(job_id=job.id, worker_id="w", mp3_id=mp3))
    assert (
        code_of(
            lambda: storage_service.jobs.RemoveJob(jobs_pb2.RemoveJobRequest(job_id=job.id, owner_id="x"))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    storage_service.jobs.RemoveJob(jobs_pb2.RemoveJobRequest(job_id=job.id, owner_id=owner))
    assert (
        code_of(lambda: storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)))
        == grpc.StatusCode.NOT_FOUND
    )
    assert mp3s_of(storage_service, job.id) == []
    db = storage_service.db
    assert (
        db[f"{storage_service.settings.mp3_bucket}.chunks"].count_documents(
            {"files_id": __import__("bson").ObjectId(mp3)}
        )
        == 0
    )


def test_notification_lease(storage_service: StorageHandle) -> None:
    job = new_job(storage_service, f"o-{time.monotonic_ns()}")

    def take(who: str, lease: int = 60) -> jobs_pb2.ClaimNotificationResponse:
        return storage_service.jobs.ClaimNotification(
            jobs_pb2.ClaimNotificationRequest(job_id=job.id, notifier_id=who, lease_seconds=lease)
        )

    first = take("n1", lease=1)
    assert first.claimed
    second = take("n2")
    assert not second.claimed and second.held
    time.sleep(1.5)
    # n1 died with the lease: the email may be out, so nobody sends again; the job is marked.
    third = take("n2")
    assert not third.claimed and not third.held and third.job.notified
    # Released before sending: another notifier may send.
    other = new_job(storage_service, f"o-{time.monotonic_ns()}")
    assert storage_service.jobs.ClaimNotification(
        jobs_pb2.ClaimNotificationRequest(job_id=other.id, notifier_id="n1")
    ).claimed
    storage_service.jobs.ClaimNotification(
        jobs_pb2.ClaimNotificationRequest(job_id=other.id, notifier_id="n1", release=True)
    )
    assert storage_service.jobs.ClaimNotification(
        jobs_pb2.ClaimNotificationRequest(job_id=other.id, notifier_id="n2")
    ).claimed
    marked = storage_service.jobs.MarkNotified(
        jobs_pb2.MarkNotifiedRequest(job_id=other.id, notifier_id="n2")
    ).job
    assert marked.notified


def test_paging_over_250_jobs_is_stable_under_inserts(storage_service: StorageHandle) -> None:
    owner = f"page-{time.monotonic_ns()}"
    video = storage_service.upload(b"v" * 100, owner_id=owner)
    made = [
        storage_service.jobs.CreateJob(jobs_pb2.CreateJobRequest(owner_id=owner, video_id=video.id)).job.id
        for _ in range(250)
    ]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = storage_service.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(owner_id=owner, limit=40, page_token=token)
        )
        seen += [job.id for job in response.jobs]
        pages += 1
        if pages == 2:  # a new job arrives while paging: it is newer, so it never shows up in later pages
            storage_service.jobs.CreateJob(jobs_pb2.CreateJobRequest(owner_id=owner, video_id=video.id))
        token = response.next_page_token
        if not token:
            break
    assert seen == list(reversed(made)) and pages == 7
    bad = jobs_pb2.ListJobsRequest(owner_id=owner, page_token="not a token!")
    assert code_of(lambda: storage_service.jobs.ListJobs(bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_leases_one_holder(storage_service: StorageHandle) -> None:
    leases = Leases(storage_service.db[f"leases_test_{time.monotonic_ns()}"])
    assert leases.take("sweep", "a", 30)
    assert not leases.take("sweep", "b", 30)
    assert leases.take("sweep", "a", 30)  # renewed
    leases.release("sweep", "a")
    assert leases.take("sweep", "b", 0.5)
    time.sleep(0.8)
    assert leases.take("sweep", "a", 30)  # b's expired


def test_events_follow_every_change(storage_service: StorageHandle) -> None:
    seen: list[events_pb2.JobChanged] = []
    store = JobStore(Mongo(storage_service.settings), storage_service.settings, seen.append)
    job = new_job(storage_service, f"o-{time.monotonic_ns()}")
    from bson import ObjectId

    oid = ObjectId(job.id)
    store.claim(oid, "w", take_over=False, lease=30)
    store.report(oid, "w", 0.5, 1.0, 0)
    store.cancel(oid)
    assert [(e.state, e.version) for e in seen] == [(C, 2), (C, 0), (X, 3)]
    assert seen[1].progress == 0.5 and all(e.owner_id == job.owner_id for e in seen)
