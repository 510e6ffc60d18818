"""JobService keeps a job's conversion options and its probed source, against the real
MongoDB-compatible server."""

from __future__ import annotations

import os
import time

import grpc
from video2mp3.storage.v1 import jobs_pb2, options_pb2

from tests.fixtures.storage import StorageHandle
from tests.test_storage_jobs import C, F, Q, code_of, transition

OPTIONS = options_pb2.ConversionOptions(
    vbr_quality=2,
    channels=options_pb2.CHANNEL_MODE_MONO,
    start_seconds=75.5,
    end_seconds=90.0,
    track=1,
    normalize=True,
    title="Été",
    cover=options_pb2.COVER_MODE_FRAME,
)
SOURCE = options_pb2.SourceInfo(
    container="matroska",
    duration_seconds=123.4,
    audio_tracks=[
        options_pb2.AudioTrack(index=0, codec="aac", channels=2, sample_rate=48000, language="eng"),
        options_pb2.AudioTrack(
            index=1, codec="opus", channels=6, sample_rate=48000, language="deu", is_default=True
        ),
    ],
    chosen_track=1,
)


def create(storage: StorageHandle, owner: str, options: options_pb2.ConversionOptions) -> jobs_pb2.Job:
    video = storage.upload(os.urandom(1000), owner_id=owner, filename="movie.mkv")
    request = jobs_pb2.CreateJobRequest(owner_id=owner, video_id=video.id, options=options)
    return storage.jobs.CreateJob(request).job


def test_options_and_source_are_kept(storage_service: StorageHandle) -> None:
    owner = f"opt-{time.monotonic_ns()}"
    job = create(storage_service, owner, OPTIONS)
    assert job.options == OPTIONS and not job.HasField("source")
    assert not job.options.HasField("bitrate_kbps") and not job.options.HasField("sample_rate")
    transition(storage_service, job.id, Q, C)
    recorded = storage_service.jobs.RecordSource(
        jobs_pb2.RecordSourceRequest(job_id=job.id, source=SOURCE)
    ).job
    assert recorded.source == SOURCE and recorded.state == C
    got = storage_service.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id, owner_id=owner)).job
    assert got.options == OPTIONS and got.source == SOURCE
    listed = storage_service.jobs.ListJobs(jobs_pb2.ListJobsRequest(owner_id=owner)).jobs
    assert listed[0].options == OPTIONS
    # A job without options has none set: every default.
    plain = create(storage_service, owner, options_pb2.ConversionOptions())
    assert plain.options == options_pb2.ConversionOptions()


def test_record_source_refusals(storage_service: StorageHandle) -> None:
    owner = f"opt-{time.monotonic_ns()}"
    job = create(storage_service, owner, options_pb2.ConversionOptions())
    request = jobs_pb2.RecordSourceRequest(job_id=job.id, source=SOURCE)
    transition(storage_service, job.id, Q, F, failure_reason="bad")
    assert code_of(lambda: storage_service.jobs.RecordSource(request)) == grpc.StatusCode.FAILED_PRECONDITION
    missing = jobs_pb2.RecordSourceRequest(job_id="0" * 24, source=SOURCE)
    assert code_of(lambda: storage_service.jobs.RecordSource(missing)) == grpc.StatusCode.NOT_FOUND
    bad = jobs_pb2.RecordSourceRequest(job_id="nope", source=SOURCE)
    assert code_of(lambda: storage_service.jobs.RecordSource(bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_options_are_invalid_argument(storage_service: StorageHandle) -> None:
    owner = f"opt-{time.monotonic_ns()}"
    for options in (
        options_pb2.ConversionOptions(bitrate_kbps=100),
        options_pb2.ConversionOptions(bitrate_kbps=128, vbr_quality=2),
        options_pb2.ConversionOptions(sample_rate=22050),
        options_pb2.ConversionOptions(start_seconds=10, end_seconds=5),
        options_pb2.ConversionOptions(title="x" * 251),
        options_pb2.ConversionOptions(cover=7),  # type: ignore[arg-type]
    ):
        with_error = code_of(lambda options=options: create(storage_service, owner, options))  # type: ignore[misc]
        assert with_error == grpc.StatusCode.INVALID_ARGUMENT, options
