"""JobService against the real MongoDB-compatible server: records, conditional transitions
under races, at most one MP3 per job, notified mark, stale jobs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from tests.fixtures.storage import StorageHandle

Q = jobs_pb2.JOB_STATE_QUEUED
C = jobs_pb2.JOB_STATE_CONVERTING
S = jobs_pb2.JOB_STATE_SUCCEEDED
F = jobs_pb2.JOB_STATE_FAILED
MP3S = storage_pb2.BUCKET_MP3S


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def new_job(storage: StorageHandle, owner: str = "u1", email: str = "u1@example.com") -> jobs_pb2.Job:
    video = storage.upload(os.urandom(1000), owner_id=owner, filename="movie.mkv")
    request = jobs_pb2.CreateJobRequest(owner_id=owner, owner_email=email, video_id=video.id)
    return storage.jobs.CreateJob(request).job


def transition(
    storage: StorageHandle, job_id: str, expected: int, new: int, **extra: object
) -> jobs_pb2.TransitionJobResponse:
    request = jobs_pb2.TransitionJobRequest(job_id=job_id, expected_state=expected, new_state=new, **extra)  # type: ignore[arg-type]
    return storage.jobs.TransitionJob(request, timeout=10)


def mp3s_of(storage: StorageHandle, job_id: str) -> list[str]:
    files = storage.db[f"{storage.settings.mp3_bucket}.files"]
    return sorted(str(doc["_id"]) for doc in files.find({"metadata.job_id": job_id}))


def test_create_get_list(storage_service: StorageHandle) -> None:
    owner = f"owner-{time.monotonic_ns()}"
    first = new_job(storage_service, owner)
    assert first.state == Q and first.attempts == 0 and not first.notified
    assert first.filename == "movie.mkv" and first.owner_email == "u1@example.com"
    assert first.created_at == first.updated_at and first.created_at.seconds > 0
    second = new_job(storage_service, owner)

    got = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=first.id, owner_id=owner)).job
    assert got == first
    listed = storage_service.jobs.ListJobs(jobs_pb2.ListJobsRequest(owner_id=owner)).jobs
    assert [job.id for job in listed] == [second.id, first.id]
    limited = storage_service.jobs.ListJobs(jobs_pb2.ListJobsRequest(owner_id=owner, limit=1)).jobs
    assert [job.id for job in limited] == [second.id]
    assert list(storage_service.jobs.ListJobs(jobs_pb2.ListJobsRequest(owner_id="nobody")).jobs) == []


def test_jobs_are_private_and_ids_checked(storage_service: StorageHandle) -> None:
    job = new_job(storage_service, "alice")
    jobs = storage_service.jobs
    assert code_of(lambda: jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id, owner_id="bob"))) == (
        grpc.StatusCode.NOT_FOUND
    )
    missing = jobs_pb2.GetJobRequest(job_id="0123456789abcdef01234567")
    assert code_of(lambda: jobs.GetJob(missing)) == grpc.StatusCode.NOT_FOUND
    assert (
        code_of(lambda: jobs.GetJob(jobs_pb2.GetJobRequest(job_id="zzz"))) == grpc.StatusCode.INVALID_ARGUMENT
    )
    # A job needs an existing video of the same owner.
    video = storage_service.upload(b"v", owner_id="alice")
    bob_job = jobs_pb2.CreateJobRequest(owner_id="bob", video_id=video.id)
    assert code_of(lambda: jobs.CreateJob(bob_job)) == grpc.StatusCode.NOT_FOUND
    nothing = jobs_pb2.CreateJobRequest(owner_id="alice", video_id="0123456789abcdef01234567")
    assert code_of(lambda: jobs.CreateJob(nothing)) == grpc.StatusCode.NOT_FOUND
    no_owner = jobs_pb2.CreateJobRequest(video_id=video.id)
    assert code_of(lambda: jobs.CreateJob(no_owner)) == grpc.StatusCode.INVALID_ARGUMENT


def test_life_of_a_job(storage_service: StorageHandle) -> None:
    job = new_job(storage_service)
    converting = transition(storage_service, job.id, Q, C, increment_attempts=True).job
    assert converting.state == C and converting.attempts == 1
    assert converting.updated_at.ToDatetime() >= job.updated_at.ToDatetime()
    # Wrong expectation: FAILED_PRECONDITION, nothing changes.
    assert code_of(lambda: transition(storage_service, job.id, Q, C)) == grpc.StatusCode.FAILED_PRECONDITION
    # SUCCEEDED needs an MP3 of the same owner.
    assert code_of(lambda: transition(storage_service, job.id, C, S)) == grpc.StatusCode.INVALID_ARGUMENT
    strangers = storage_service.upload(b"ID3 other", owner_id="someone-else", bucket=MP3S)
    assert code_of(lambda: transition(storage_service, job.id, C, S, mp3_id=strangers.id)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    mp3 = storage_service.upload(b"ID3 audio", owner_id=job.owner_id, bucket=MP3S, job_id=job.id)
    done = transition(storage_service, job.id, C, S, mp3_id=mp3.id, duration_seconds=12.5).job
    assert (done.state, done.mp3_id, done.duration_seconds, done.attempts) == (S, mp3.id, 12.5, 1)
    # Finished jobs never change again.
    assert code_of(lambda: transition(storage_service, job.id, S, F)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: transition(storage_service, job.id, C, F, failure_reason="x")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    # A duplicate of the winning call (a retry after a lost answer) leaves the MP3 alone.
    assert code_of(lambda: transition(storage_service, job.id, C, S, mp3_id=mp3.id)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert mp3s_of(storage_service, job.id) == [mp3.id]
    # No more MP3s for a finished job.
    assert (
        code_of(lambda: storage_service.upload(b"late", owner_id=job.owner_id, bucket=MP3S, job_id=job.id))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert mp3s_of(storage_service, job.id) == [mp3.id]


def test_failed_job_keeps_reason_and_drops_mp3s(storage_service: StorageHandle) -> None:
    job = new_job(storage_service)
    transition(storage_service, job.id, Q, C, increment_attempts=True)
    storage_service.upload(b"ID3 half", owner_id=job.owner_id, bucket=MP3S, job_id=job.id)
    failed = transition(storage_service, job.id, C, F, failure_reason="the file has no audio track").job
    assert failed.state == F and failed.failure_reason == "the file has no audio track"
    assert mp3s_of(storage_service, job.id) == []
    unknown_reason = transition(storage_service, new_job(storage_service).id, Q, F).job
    assert unknown_reason.failure_reason


def test_only_one_worker_wins_a_transition(storage_service: StorageHandle) -> None:
    for _ in range(5):
        job = new_job(storage_service)
        barrier = threading.Barrier(8)

        def attempt(job_id: str = job.id, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            try:
                transition(storage_service, job_id, Q, C, increment_attempts=True)
                return "won"
            except grpc.RpcError as error:
                return error.code().name

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: attempt(), range(8)))
        assert results.count("won") == 1, results
        assert results.count("FAILED_PRECONDITION") == 7, results
        final = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).job
        assert final.state == C and final.attempts == 1


def test_racing_converters_leave_one_mp3(storage_service: StorageHandle) -> None:
    """Two workers convert the same job (a redelivery): both upload, both try to finish."""
    job = new_job(storage_service)
    transition(storage_service, job.id, Q, C)
    mp3s = [
        storage_service.upload(os.urandom(400_000), owner_id=job.owner_id, bucket=MP3S, job_id=job.id)
        for _ in range(2)
    ]
    barrier = threading.Barrier(2)

    def finish(mp3_id: str) -> str:
        barrier.wait()
        try:
            transition(storage_service, job.id, C, S, mp3_id=mp3_id)
            return mp3_id
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            return ""

    with ThreadPoolExecutor(2) as pool:
        winners = [w for w in pool.map(finish, [m.id for m in mp3s]) if w]
    assert len(winners) == 1
    final = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).job
    assert final.mp3_id == winners[0]
    assert mp3s_of(storage_service, job.id) == [winners[0]]
    assert storage_service.download(winners[0], bucket=MP3S)[0].size == 400_000


def test_mp3_of_a_crashed_worker_is_removed(storage_service: StorageHandle) -> None:
    job = new_job(storage_service)
    transition(storage_service, job.id, Q, C, increment_attempts=True)
    orphan = storage_service.upload(b"ID3 first try", owner_id=job.owner_id, bucket=MP3S, job_id=job.id)
    # The worker died before recording it; the redelivered message runs again.
    transition(storage_service, job.id, C, C, increment_attempts=True)
    mp3 = storage_service.upload(b"ID3 second try", owner_id=job.owner_id, bucket=MP3S, job_id=job.id)
    assert sorted([orphan.id, mp3.id]) == mp3s_of(storage_service, job.id)
    done = transition(storage_service, job.id, C, S, mp3_id=mp3.id).job
    assert done.attempts == 2
    assert mp3s_of(storage_service, job.id) == [mp3.id]
    # An MP3 uploaded for one job cannot finish another.
    other = new_job(storage_service, owner=job.owner_id)
    transition(storage_service, other.id, Q, C)
    assert code_of(lambda: transition(storage_service, other.id, C, S, mp3_id=mp3.id)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_mp3_upload_needs_an_open_job_of_the_owner(storage_service: StorageHandle) -> None:
    job = new_job(storage_service, owner="carol")
    assert code_of(lambda: storage_service.upload(b"x", owner_id="dave", bucket=MP3S, job_id=job.id)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert code_of(lambda: storage_service.upload(b"x", owner_id="carol", bucket=MP3S, job_id="bad")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_mark_notified_once(storage_service: StorageHandle) -> None:
    job = new_job(storage_service)
    transition(storage_service, job.id, Q, F, failure_reason="not a video")
    barrier = threading.Barrier(6)

    def mark(_: int) -> str:
        barrier.wait()
        try:
            storage_service.jobs.MarkNotified(jobs_pb2.MarkNotifiedRequest(job_id=job.id))
            return "won"
        except grpc.RpcError as error:
            return error.code().name

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(mark, range(6)))
    assert sorted(results) == ["FAILED_PRECONDITION"] * 5 + ["won"]
    assert storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).job.notified
    missing = jobs_pb2.MarkNotifiedRequest(job_id="0123456789abcdef01234567")
    assert code_of(lambda: storage_service.jobs.MarkNotified(missing)) == grpc.StatusCode.NOT_FOUND


def test_stale_jobs_and_requeue_claim(storage_service: StorageHandle) -> None:
    job = new_job(storage_service, owner="stale")
    time.sleep(1.1)
    stale = storage_service.jobs.ListStaleJobs(
        jobs_pb2.ListStaleJobsRequest(state=Q, older_than_seconds=1, limit=1000)
    ).jobs
    assert job.id in [j.id for j in stale]
    recent = storage_service.jobs.ListStaleJobs(
        jobs_pb2.ListStaleJobsRequest(state=Q, older_than_seconds=3600)
    ).jobs
    assert job.id not in [j.id for j in recent]
    # QUEUED → QUEUED is the sweeper's claim before it publishes again: it refreshes
    # updated_at, so the job is no longer stale and a second sweeper does not resend it.
    claimed = transition(storage_service, job.id, Q, Q).job
    assert claimed.state == Q and claimed.updated_at.ToDatetime() > job.updated_at.ToDatetime()
    again = storage_service.jobs.ListStaleJobs(
        jobs_pb2.ListStaleJobsRequest(state=Q, older_than_seconds=1, limit=1000)
    ).jobs
    assert job.id not in [j.id for j in again]
    no_state = jobs_pb2.ListStaleJobsRequest(older_than_seconds=1)
    assert code_of(lambda: storage_service.jobs.ListStaleJobs(no_state)) == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_job(storage_service: StorageHandle) -> None:
    job = new_job(storage_service)
    storage_service.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.id))
    assert code_of(lambda: storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))) == (
        grpc.StatusCode.NOT_FOUND
    )
    again = jobs_pb2.DeleteJobRequest(job_id=job.id)
    assert code_of(lambda: storage_service.jobs.DeleteJob(again)) == grpc.StatusCode.NOT_FOUND


def test_indexes_exist(storage_service: StorageHandle) -> None:
    names = set(storage_service.db[storage_service.settings.jobs_collection].index_information())
    assert {"owner_created", "state_updated", "video"} <= names
