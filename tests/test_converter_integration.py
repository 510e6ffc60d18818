"""End to end with real processes: the storage service (``python -m storage``, on this test
session's MongoDB database), converter workers (``python -m converter``) and RabbitMQ."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pymongo
import pytest
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc, storage_pb2, storage_pb2_grpc

from common.amqp import dead_queue
from common.file_streams import UploadStream
from converter.spool import ROOT_NAME
from testing.infra import Infra, rabbitmqctl
from testing.media import MediaSpec, audio_duration, audio_info, random_file, truncated_copy
from testing.processes import ServiceProcess, free_port, port_open, python_module, wait_for
from tests.fixtures.converter import ConverterRunner, MediaCache
from tests.test_converter_transcode import AUDIO_ONLY, MATRIX

MP3_BUCKET = "mp3s"


class StorageProcess:
    """The real storage service as a process the test can stop and start on the same port."""

    def __init__(self, infra: Infra, work_dir: Path) -> None:
        self.infra = infra
        self.work_dir = work_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: ServiceProcess | None = None
        self.starts = 0
        self.channel = infra.channel(self.address)
        self.files = storage_pb2_grpc.StorageServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.mongo: pymongo.MongoClient = infra.mongo()
        self.db = self.mongo[infra.mongo_db]

    def start(self) -> None:
        self.starts += 1
        env = self.infra.service_env(STORAGE_PORT=str(self.port), LOG_LEVEL="INFO")
        self.process = ServiceProcess(f"storage-{self.starts}", python_module("storage"), env, self.work_dir)
        self.process.start()
        wait_for(lambda: port_open("127.0.0.1", self.port), 30, what="storage listening")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.channel.close()
        self.mongo.close()

    # -- what a gateway would do
    def add_job(self, source: Path, filename: str | None = None, owner: str = "u1") -> jobs_pb2.Job:
        name = filename or source.name
        header = storage_pb2.UploadHeader(
            bucket=storage_pb2.BUCKET_VIDEOS, filename=name, content_type="video/mp4", owner_id=owner
        )
        data = source.read_bytes()
        chunks = (data[start : start + 256 * 1024] for start in range(0, len(data), 256 * 1024))
        info = self.files.Upload(UploadStream(header, chunks), timeout=30).file
        return self.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                owner_id=owner, owner_email=f"{owner}@example.com", video_id=info.id, filename=name
            ),
            timeout=10,
        ).job

    def job(self, job_id: str) -> jobs_pb2.Job:
        return self.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10).job

    def mp3(self, mp3_id: str, target: Path) -> Path:
        responses = self.files.Download(
            storage_pb2.DownloadRequest(bucket=storage_pb2.BUCKET_MP3S, file_id=mp3_id), timeout=30
        )
        with target.open("wb") as out:
            for response in responses:
                if response.HasField("chunk"):
                    out.write(response.chunk)
        return target

    def mp3_count(self, job_id: str) -> int:
        return int(self.db[f"{MP3_BUCKET}.files"].count_documents({"metadata.job_id": job_id}))

    def orphan_mp3_chunks(self) -> int:
        ids = {doc["_id"] for doc in self.db[f"{MP3_BUCKET}.files"].find({}, {"_id": 1})}
        return sum(
            1 for c in self.db[f"{MP3_BUCKET}.chunks"].find({}, {"files_id": 1}) if c["files_id"] not in ids
        )


@pytest.fixture
def storage(infra: Infra, tmp_path: Path) -> Iterator[StorageProcess]:
    process = StorageProcess(infra, tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def runner(infra: Infra, storage: StorageProcess, tmp_path: Path) -> Iterator[ConverterRunner]:
    with ConverterRunner(infra, storage.address, tmp_path) as run:
        yield run


def is_state(storage: StorageProcess, job: jobs_pb2.Job, state: int) -> bool:
    return storage.job(job.id).state == state


def state_is(storage: StorageProcess, job: jobs_pb2.Job, state: int) -> Callable[[], bool]:
    return lambda: is_state(storage, job, state)


def test_every_container_and_codec_end_to_end(
    runner: ConverterRunner, storage: StorageProcess, media_cache: MediaCache, tmp_path: Path
) -> None:
    specs = [MediaSpec(container=c, audio_codec=a, duration=1.0) for c, a in MATRIX]
    specs += [MediaSpec(container=c, video_codec=None, duration=1.0) for c in AUDIO_ONLY]
    sources = [media_cache.get(spec) for spec in specs]
    jobs = [storage.add_job(source) for source in sources]
    worker = runner.start(CONVERTER_WORKERS="2", CONVERTER_PREFETCH="1")
    wait_for(lambda: worker.logs().count('"consuming"') == 2, 20, what="two consumers")
    for job in jobs:
        runner.request(job)
    for job in jobs:
        wait_for(state_is(storage, job, jobs_pb2.JOB_STATE_SUCCEEDED), 120, what=job.filename)
    events = runner.events(len(jobs))
    assert {e.job_id for kind, e in events if kind == "succeeded"} == {job.id for job in jobs}
    for source, job in zip(sources, jobs, strict=True):
        done = storage.job(job.id)
        mp3 = storage.mp3(done.mp3_id, tmp_path / f"{source.stem}.mp3")
        info = audio_info(mp3)
        assert (info["format"], info["channels"], info["bit_rate"]) == ("mp3", 2, 192_000), source.name
        assert abs(audio_duration(mp3) - audio_duration(source)) < 0.1, source.name
        assert abs(done.duration_seconds - audio_duration(source)) < 0.1
        assert storage.mp3_count(job.id) == 1


def test_bad_media_fails_with_the_right_reason_and_the_worker_lives_on(
    runner: ConverterRunner, storage: StorageProcess, media_cache: MediaCache, tmp_path: Path
) -> None:
    cases = {
        "no sound track": media_cache.get(MediaSpec(container="mp4", audio_codec=None, duration=1.0)),
        "not a video or audio file": random_file(tmp_path / "random.mp4"),
        "damaged or incomplete": truncated_copy(
            media_cache.get(MediaSpec(container="mp4", duration=2.0)), tmp_path / "cut.mp4"
        ),
        "incomplete": truncated_copy(
            media_cache.get(MediaSpec(container="webm", duration=2.0)), tmp_path / "cut.webm"
        ),
    }
    # A zero-byte video never reaches a converter: storage refuses empty files (the
    # transcoder's answer to one is tested in tests/test_converter_transcode.py).
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(grpc.RpcError) as refused:
        storage.add_job(empty)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    jobs = {reason: storage.add_job(source) for reason, source in cases.items()}
    worker = runner.start()
    for job in jobs.values():
        runner.request(job)
    for reason, job in jobs.items():
        wait_for(state_is(storage, job, jobs_pb2.JOB_STATE_FAILED), 30, what=reason)
        assert reason in storage.job(job.id).failure_reason
        assert storage.mp3_count(job.id) == 0
    failed = {e.job_id: e.reason for kind, e in runner.events(len(jobs)) if kind == "failed"}
    assert failed == {job.id: storage.job(job.id).failure_reason for job in jobs.values()}
    assert worker.alive()
    good = storage.add_job(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    runner.request(good)
    wait_for(
        lambda: is_state(storage, good, jobs_pb2.JOB_STATE_SUCCEEDED), 30, what="good job after bad ones"
    )
    assert runner.depth("video") == 0 and runner.depth(dead_queue("video")) == 0


def consumer_connections(infra: Infra) -> set[str]:
    """Client ports of the connections with a 1 s heartbeat (the worker's consumer; its
    publisher and the test's own connections keep the server's default)."""
    out = rabbitmqctl(
        "list_connections", "-p", infra.vhost, "-q", "--no-table-headers", "peer_port", "timeout"
    )
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return {port for port, timeout in rows if timeout == "1"}


def test_long_conversion_outlasts_heartbeats_on_the_same_connection(
    runner: ConverterRunner, storage: StorageProcess, media_cache: MediaCache, infra: Infra
) -> None:
    job = storage.add_job(media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=2.0)))
    # 2 s of audio at 3 s per second of audio: about 6 s, six heartbeat intervals.
    worker = runner.start(RABBITMQ_HEARTBEAT_SECONDS="1", CONVERTER_TEST_SLOWDOWN="3")
    before = consumer_connections(infra)
    assert len(before) == 1  # heartbeat negotiated to 1 s
    started = time.monotonic()
    runner.request(job)
    wait_for(lambda: is_state(storage, job, jobs_pb2.JOB_STATE_SUCCEEDED), 60, what="slow job done")
    assert time.monotonic() - started > 5
    [(kind, _)] = runner.events(1)
    assert kind == "succeeded"
    assert runner.depth("video") == 0  # acked on the connection that received it
    assert consumer_connections(infra) == before
    logs = worker.logs()
    assert logs.count('"consuming"') == 1 and "connection lost" not in logs


def test_worker_killed_mid_conversion_the_job_finishes_once(
    runner: ConverterRunner, storage: StorageProcess, media_cache: MediaCache
) -> None:
    # 8 s of audio at 1 s per second: the MP3 upload is streaming when the worker dies.
    job = storage.add_job(media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=8.0)))
    first = runner.start(CONVERTER_TEST_SLOWDOWN="1")
    runner.request(job)
    wait_for(lambda: is_state(storage, job, jobs_pb2.JOB_STATE_CONVERTING), 30, what="converting")
    time.sleep(4.5)
    first.signal(signal.SIGKILL)
    assert first.proc is not None
    first.proc.wait(10)
    assert is_state(storage, job, jobs_pb2.JOB_STATE_CONVERTING)
    runner.start(name="second")
    wait_for(lambda: is_state(storage, job, jobs_pb2.JOB_STATE_SUCCEEDED), 60, what="job done after the kill")
    [(kind, event)] = runner.events(1)
    assert kind == "succeeded" and event.job_id == job.id
    assert storage.mp3_count(job.id) == 1
    assert storage.orphan_mp3_chunks() == 0
    assert storage.job(job.id).attempts == 2  # claimed once, taken over once
    # The killed worker's spooled video went with it: only the live worker's folder is left.
    spool = runner.spool_dir / ROOT_NAME
    assert len(list(spool.glob("*.lock"))) == 1
    assert [p for p in spool.rglob("*") if p.is_file() and p.suffix != ".lock"] == []
    assert runner.depth("video") == 0 and runner.depth(dead_queue("video")) == 0


def test_storage_stopped_during_a_job_is_retried_then_succeeds(
    runner: ConverterRunner, storage: StorageProcess, media_cache: MediaCache
) -> None:
    job = storage.add_job(media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=4.0)))
    worker = runner.start(
        CONVERTER_TEST_SLOWDOWN="1", CONVERTER_RETRY_BASE_SECONDS="1", CONVERTER_MAX_ATTEMPTS="8"
    )
    runner.request(job)
    wait_for(lambda: is_state(storage, job, jobs_pb2.JOB_STATE_CONVERTING), 30, what="converting")
    storage.kill()
    wait_for(lambda: '"transient failure"' in worker.logs(), 30, what="a transient failure")
    time.sleep(2)  # at least one more attempt while storage is down
    storage.start()
    wait_for(
        lambda: is_state(storage, job, jobs_pb2.JOB_STATE_SUCCEEDED), 90, what="job done after the outage"
    )
    [(kind, _)] = runner.events(1)
    assert kind == "succeeded"
    assert storage.mp3_count(job.id) == 1
    assert worker.alive()
    assert runner.depth(dead_queue("video")) == 0
