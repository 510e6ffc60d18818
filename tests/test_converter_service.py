"""The converter as a real process (``python -m converter``) on a real RabbitMQ virtual host.

Storage here is the real service run in the test process behind a fault injector
(tests/fixtures/faulty_storage.py), so faults can be injected per method.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from common.amqp import dead_queue
from converter.worker import GAVE_UP_REASON
from testing.infra import Infra
from testing.media import MediaSpec, random_file
from testing.processes import ServiceProcess, python_module, wait_for
from tests.fixtures.converter import ConverterRunner, MediaCache
from tests.fixtures.faulty_storage import FaultyStorage


@pytest.fixture
def storage(faulty_storage: FaultyStorage) -> FaultyStorage:
    return faulty_storage


@pytest.fixture
def runner(infra: Infra, storage: FaultyStorage, tmp_path: Path) -> Iterator[ConverterRunner]:
    with ConverterRunner(infra, storage.address, tmp_path) as run:
        yield run


def add_job(storage: FaultyStorage, source: Path, filename: str | None = None) -> jobs_pb2.Job:
    name = filename or source.name
    video_id = storage.put(storage_pb2.BUCKET_VIDEOS, source.read_bytes(), name)
    return storage.create_job(video_id, name)


def state(storage: FaultyStorage, job: jobs_pb2.Job) -> int:
    return storage.job(job.id).state


def test_converts_reports_and_survives_bad_media(
    runner: ConverterRunner, storage: FaultyStorage, media_cache: MediaCache, tmp_path: Path
) -> None:
    worker = runner.start()
    good = add_job(storage, media_cache.get(MediaSpec(container="webm", duration=1.0)), "clip.webm")
    bad = add_job(storage, random_file(tmp_path / "x.mp4"), "x.mp4")
    runner.request(bad)
    runner.request(good)
    wait_for(lambda: state(storage, good) == jobs_pb2.JOB_STATE_SUCCEEDED, 30, what="good job done")
    wait_for(lambda: state(storage, bad) == jobs_pb2.JOB_STATE_FAILED, 30, what="bad job failed")
    events = runner.events(2)
    assert {(e.job_id, kind) for kind, e in events} == {(good.id, "succeeded"), (bad.id, "failed")}
    assert worker.alive()
    assert runner.depth("video") == 0 and runner.depth(dead_queue("video")) == 0


def test_outage_retries_through_the_delay_queue_then_parks_and_fails(
    runner: ConverterRunner, storage: FaultyStorage, media_cache: MediaCache
) -> None:
    worker = runner.start(CONVERTER_MAX_ATTEMPTS="3", CONVERTER_RETRY_BASE_SECONDS="0.3")
    job = add_job(storage, media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    storage.faults["Download"] = grpc.StatusCode.UNAVAILABLE
    runner.request(job)
    wait_for(lambda: runner.depth(dead_queue("video")) == 1, 30, what="message parked")
    stored = storage.job(job.id)
    assert stored.state == jobs_pb2.JOB_STATE_FAILED and stored.failure_reason == GAVE_UP_REASON
    [(kind, event)] = runner.events(1)
    assert kind == "failed" and event.reason == GAVE_UP_REASON
    assert worker.logs().count('"transient failure"') == 2
    assert runner.depth("video") == 0 and runner.depth("video.retry") == 0
    assert worker.alive()


def test_sigterm_finishes_the_current_job_and_exits_zero(
    runner: ConverterRunner, storage: FaultyStorage, media_cache: MediaCache
) -> None:
    worker = runner.start(CONVERTER_TEST_SLOWDOWN="1.5")
    job = add_job(storage, media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=2.0)))
    queued = add_job(storage, media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    runner.request(job)
    wait_for(lambda: state(storage, job) == jobs_pb2.JOB_STATE_CONVERTING, 20, what="converting")
    runner.request(queued)
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    assert worker.proc is not None
    assert worker.proc.wait(30) == 0
    assert state(storage, job) == jobs_pb2.JOB_STATE_SUCCEEDED
    assert state(storage, queued) == jobs_pb2.JOB_STATE_QUEUED  # not taken: still in the queue
    assert runner.depth("video") == 1
    [(kind, event)] = runner.events(1)
    assert kind == "succeeded" and event.job_id == job.id


def test_sigterm_grace_over_cuts_off_and_the_job_is_redelivered(
    runner: ConverterRunner, storage: FaultyStorage, media_cache: MediaCache
) -> None:
    worker = runner.start(CONVERTER_TEST_SLOWDOWN="5", CONVERTER_STOP_GRACE_SECONDS="1")
    job = add_job(storage, media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=2.0)))
    runner.request(job)
    wait_for(lambda: state(storage, job) == jobs_pb2.JOB_STATE_CONVERTING, 20, what="converting")
    worker.signal(signal.SIGTERM)
    assert worker.proc is not None
    assert worker.proc.wait(30) == 0
    assert storage.mp3s() == []  # the cut-off upload was rejected in-band
    runner.start(name="second")
    wait_for(
        lambda: state(storage, job) == jobs_pb2.JOB_STATE_SUCCEEDED, 30, what="job done by the next worker"
    )
    assert len(storage.mp3s(job.id)) == 1


def test_health_endpoint(runner: ConverterRunner) -> None:
    import urllib.request

    from testing.processes import free_port

    port = free_port()
    worker = runner.start(CONVERTER_HEALTH_PORT=str(port))

    def status(path: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)

    assert wait_for(lambda: status("/readyz") == 200, 20, what="ready")
    assert status("/healthz") == 200
    worker.stop()


def test_missing_setting_stops_the_process_with_a_clear_message(infra: Infra, tmp_path: Path) -> None:
    env = infra.service_env(STORAGE_SVC_ADDRESS="")  # empty counts as missing
    process = ServiceProcess("converter-misconfigured", python_module("converter"), env, tmp_path)
    process.start()
    assert process.proc is not None
    assert process.proc.wait(30) == 2
    assert "STORAGE_SVC_ADDRESS" in process.logs()
