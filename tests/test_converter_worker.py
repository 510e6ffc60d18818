"""converter.worker: the message handler against the real storage service over gRPC (with
faults injected: tests/fixtures/faulty_storage.py) and a recording publisher."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pika
import pytest
from google.protobuf.message import Message
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from common.amqp import Delivery, Outcome, PublishError, TransientError
from common.config import SettingsError
from common.events import RK_FAILED, RK_SUCCEEDED
from converter.settings import Settings
from converter.worker import GAVE_UP_REASON, Converter
from testing.infra import Infra
from testing.media import MediaSpec, audio_duration, audio_info, random_file, truncated_copy
from tests.fixtures.converter import MediaCache
from tests.fixtures.faulty_storage import FaultyStorage


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[tuple[str, Message, str]] = []
        self.fail = False

    def publish(self, routing_key: str, message: Message, correlation_id: str) -> None:
        if self.fail:
            raise PublishError("message broker unavailable: test")
        self.events.append((routing_key, message, correlation_id))


@dataclasses.dataclass
class Env:
    storage: FaultyStorage
    converter: Converter
    publisher: RecordingPublisher
    spool_dir: Path
    tmp_path: Path

    def job_for(self, source: Path, filename: str | None = None) -> jobs_pb2.Job:
        name = filename or source.name
        video_id = self.storage.put(storage_pb2.BUCKET_VIDEOS, source.read_bytes(), name)
        return self.storage.create_job(video_id, name)

    def job(self, job_id: str) -> jobs_pb2.Job:
        return self.storage.job(job_id)


def delivery(job: jobs_pb2.Job, redelivered: bool = False, attempt: int = 1) -> Delivery:
    request = events_pb2.ConversionRequested(
        job_id=job.id,
        video_id=job.video_id,
        owner_id=job.owner_id,
        owner_email=job.owner_email,
        filename=job.filename,
    )
    props = pika.BasicProperties(
        type=events_pb2.ConversionRequested.DESCRIPTOR.full_name, correlation_id=job.id, headers={}
    )
    return Delivery(request.SerializeToString(), props, "conversion.requested", redelivered, attempt)


@pytest.fixture
def env(
    infra: Infra, faulty_storage: FaultyStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[Env]:
    caplog.set_level(logging.DEBUG)  # every log call runs (a bad ``extra`` key raises)
    settings = Settings(
        storage_address=faulty_storage.address,
        grpc_tls_dir=str(infra.tls_dir),
        rabbitmq_url="amqp://unused",
        tmp_dir=str(tmp_path / "tmp"),
        max_attempts=3,
        spool_reserve_bytes=0,
    )
    channel = infra.channel(faulty_storage.address, "converter")
    publisher = RecordingPublisher()
    converter = Converter(settings, channel, publisher)
    try:
        yield Env(faulty_storage, converter, publisher, converter.spool.folder, tmp_path)
    finally:
        converter.close()
        channel.close()


def test_converts_and_publishes(env: Env, media_cache: MediaCache) -> None:
    source = media_cache.get(MediaSpec(container="mp4", duration=1.5))
    job = env.job_for(source, "My Holiday.mp4")
    assert env.converter(delivery(job)) is Outcome.ACK

    done = env.job(job.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert done.attempts == 1
    [mp3] = env.storage.mp3s(job.id)
    assert done.mp3_id == mp3.info.id
    assert mp3.info.filename == "My Holiday.mp3"
    assert mp3.info.owner_id == env.storage.owner_id
    out = env.tmp_path / "out.mp3"
    out.write_bytes(mp3.data)
    assert abs(audio_duration(out) - audio_duration(source)) < 0.1
    assert audio_info(out)["bit_rate"] == 192_000

    [(key, event, correlation)] = env.publisher.events
    assert key == RK_SUCCEEDED and correlation == job.id
    assert isinstance(event, events_pb2.ConversionSucceeded)
    assert event.mp3_id == mp3.info.id and event.mp3_size == len(mp3.data)
    assert event.owner_email == f"{env.storage.owner_id}@example.com" and event.filename == "My Holiday.mp4"
    assert abs(event.duration_seconds - done.duration_seconds) < 1e-6 and event.duration_seconds > 1.4
    assert list(env.spool_dir.iterdir()) == []  # spooled video removed


def test_already_succeeded_publishes_again_and_converts_nothing(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    assert env.converter(delivery(job)) is Outcome.ACK
    assert env.converter(delivery(job, redelivered=True)) is Outcome.ACK
    assert len(env.storage.mp3s(job.id)) == 1
    assert [key for key, _, _ in env.publisher.events] == [RK_SUCCEEDED, RK_SUCCEEDED]
    first, second = (event for _, event, _ in env.publisher.events)
    assert isinstance(second, events_pb2.ConversionSucceeded) and isinstance(
        first, events_pb2.ConversionSucceeded
    )
    assert second.mp3_id == first.mp3_id and second.mp3_size == first.mp3_size
    assert env.job(job.id).attempts == 1


def test_already_failed_publishes_the_failure_again(env: Env, tmp_path: Path) -> None:
    job = env.job_for(random_file(tmp_path / "noise.mp4"))
    assert env.converter(delivery(job)) is Outcome.ACK
    assert env.converter(delivery(job)) is Outcome.ACK
    assert [key for key, _, _ in env.publisher.events] == [RK_FAILED, RK_FAILED]
    assert env.job(job.id).attempts == 1


def test_duplicate_while_converting_is_dropped(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.claim_as(job.id, "another-worker")  # converting, under a live lease
    assert env.converter(delivery(job, redelivered=False)) is Outcome.ACK
    assert env.storage.mp3s() == [] and env.publisher.events == []
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_CONVERTING


@pytest.mark.parametrize(("redelivered", "attempt"), [(True, 1), (False, 2)])
def test_job_left_converting_is_taken_over(
    redelivered: bool, attempt: int, env: Env, media_cache: MediaCache
) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.claim_as(job.id, "dead-worker")  # the worker that died had claimed it: one attempt
    assert env.converter(delivery(job, redelivered=redelivered, attempt=attempt)) is Outcome.ACK
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert env.job(job.id).attempts == 2  # the takeover counts
    assert len(env.storage.mp3s(job.id)) == 1


def test_converting_job_with_an_expired_lease_is_taken_over(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.claim_as(job.id, "silent-worker")  # converting, one attempt
    env.storage.expire_lease(job.id)
    assert env.converter(delivery(job)) is Outcome.ACK
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert env.job(job.id).attempts == 2


def test_malformed_job_id_is_parked(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.faults["ClaimJob"] = grpc.StatusCode.INVALID_ARGUMENT
    assert env.converter(delivery(job)) is Outcome.DEAD


def test_unknown_job_is_dropped(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.delete_job(job.id)
    assert env.converter(delivery(job)) is Outcome.ACK
    assert env.publisher.events == []


def test_a_bug_on_the_last_attempt_fails_the_job(
    env: Env, media_cache: MediaCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Converter, "_convert", broken)
    with pytest.raises(RuntimeError):
        env.converter(delivery(job, attempt=1))
    assert env.converter(delivery(job, attempt=3)) is Outcome.DEAD
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_FAILED


def test_garbage_messages_are_parked(env: Env) -> None:
    props = pika.BasicProperties(type=events_pb2.ConversionRequested.DESCRIPTOR.full_name)
    assert env.converter(Delivery(b"\xff\xff\xff", props, "x", False, 1)) is Outcome.DEAD
    assert env.converter(Delivery(b"", props, "x", False, 1)) is Outcome.DEAD
    other = pika.BasicProperties(type="something.Else")
    assert env.converter(Delivery(b"", other, "x", False, 1)) is Outcome.DEAD


def bad_inputs(tmp_path: Path, media_cache: MediaCache) -> dict[str, tuple[Path, str]]:
    # An empty video never reaches the converter (storage refuses empty files); the
    # transcoder's answer to one is tested in tests/test_converter_transcode.py.
    return {
        "no-audio": (
            media_cache.get(MediaSpec(container="mp4", audio_codec=None, duration=1.0)),
            "no sound track",
        ),
        "random": (random_file(tmp_path / "random.mp4"), "not a video or audio file"),
        "truncated-mp4": (
            truncated_copy(media_cache.get(MediaSpec(container="mp4", duration=2.0)), tmp_path / "cut.mp4"),
            "damaged or incomplete",
        ),
        "truncated-mkv": (
            truncated_copy(
                media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=2.0)),
                tmp_path / "cut.mkv",
            ),
            "incomplete",
        ),
    }


@pytest.mark.parametrize("case", ["no-audio", "random", "truncated-mp4", "truncated-mkv"])
def test_bad_media_fails_the_job_for_good(
    case: str, env: Env, media_cache: MediaCache, tmp_path: Path
) -> None:
    source, reason = bad_inputs(tmp_path, media_cache)[case]
    job = env.job_for(source)
    assert env.converter(delivery(job)) is Outcome.ACK
    failed = env.job(job.id)
    assert failed.state == jobs_pb2.JOB_STATE_FAILED
    assert reason in failed.failure_reason
    [(key, event, _)] = env.publisher.events
    assert key == RK_FAILED and isinstance(event, events_pb2.ConversionFailed)
    assert event.reason == failed.failure_reason
    assert env.storage.mp3s() == []  # a stream cut mid-way leaves nothing
    assert list(env.spool_dir.iterdir()) == []


def test_too_long_is_a_permanent_failure(env: Env, media_cache: MediaCache) -> None:
    env.converter.options = dataclasses.replace(env.converter.options, max_duration_seconds=1.0)
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=2.0)))
    assert env.converter(delivery(job)) is Outcome.ACK
    assert "too long" in env.job(job.id).failure_reason


def test_too_large_to_spool_is_a_permanent_failure(env: Env, media_cache: MediaCache) -> None:
    env.converter.settings = dataclasses.replace(env.converter.settings, spool_max_bytes=1000)
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    assert env.converter(delivery(job)) is Outcome.ACK
    assert "too large" in env.job(job.id).failure_reason


def test_not_enough_disk_is_transient(env: Env, media_cache: MediaCache) -> None:
    env.converter.settings = dataclasses.replace(env.converter.settings, spool_reserve_bytes=2**62)
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    with pytest.raises(TransientError, match="disk space"):
        env.converter(delivery(job))
    assert list(env.spool_dir.iterdir()) == []


def test_missing_video_is_a_permanent_failure(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.delete_file(storage_pb2.BUCKET_VIDEOS, job.video_id)
    assert env.converter(delivery(job)) is Outcome.ACK
    assert env.job(job.id).failure_reason == "the uploaded video is no longer available"


@pytest.mark.parametrize("method", ["ClaimJob", "FinishJob", "Download", "Upload"])
def test_storage_unavailable_is_transient_then_succeeds(
    method: str, env: Env, media_cache: MediaCache
) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.faults[method] = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TransientError, match=r"(?i)unavailable"):
        env.converter(delivery(job))
    # An MP3 that could not be recorded stays (the change may have been applied with only
    # the answer lost); storage removes it when the job finishes with another.
    assert len(env.storage.mp3s()) == (1 if method == "FinishJob" else 0)
    del env.storage.faults[method]
    assert env.converter(delivery(job, attempt=2)) is Outcome.ACK
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert len(env.storage.mp3s(job.id)) == 1
    assert list(env.spool_dir.iterdir()) == []


def test_storage_process_down_is_transient(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.stop()
    with pytest.raises(TransientError):
        env.converter(delivery(job))


def test_last_attempt_marks_the_job_failed_and_parks_it(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.storage.faults["Download"] = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TransientError):
        env.converter(delivery(job, attempt=1))
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_CONVERTING
    assert env.converter(delivery(job, attempt=3)) is Outcome.DEAD  # max_attempts=3
    failed = env.job(job.id)
    assert failed.state == jobs_pb2.JOB_STATE_FAILED and failed.failure_reason == GAVE_UP_REASON
    [(key, _, _)] = env.publisher.events
    assert key == RK_FAILED


def test_publish_failure_is_transient_and_the_retry_publishes(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    env.publisher.fail = True
    with pytest.raises(TransientError, match="broker"):
        env.converter(delivery(job))
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_SUCCEEDED  # durable before the event
    env.publisher.fail = False
    assert env.converter(delivery(job, attempt=2)) is Outcome.ACK
    assert [key for key, _, _ in env.publisher.events] == [RK_SUCCEEDED]
    assert len(env.storage.mp3s(job.id)) == 1


def test_losing_the_race_deletes_our_mp3(env: Env, media_cache: MediaCache) -> None:
    """Another worker finished the job while this one converted: one MP3 stays, theirs."""
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))
    theirs = env.storage.put(storage_pb2.BUCKET_MP3S, b"theirs", "x.mp3", job.id)

    def other_worker_wins() -> None:
        stored = env.job(job.id)
        if stored.state == jobs_pb2.JOB_STATE_CONVERTING and not stored.mp3_id:
            env.storage.transition(job.id, stored.state, jobs_pb2.JOB_STATE_SUCCEEDED, mp3_id=theirs)

    env.storage.hooks["FinishJob"] = other_worker_wins
    assert env.converter(delivery(job)) is Outcome.ACK
    assert [f.info.id for f in env.storage.mp3s(job.id)] == [theirs]
    assert env.publisher.events == []  # the winner publishes


def test_job_finished_during_the_upload_is_settled_on_retry(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mp4", duration=1.0)))

    def finished_elsewhere() -> None:
        env.storage.transition(job.id, jobs_pb2.JOB_STATE_CONVERTING, jobs_pb2.JOB_STATE_FAILED)

    env.storage.hooks["Upload"] = finished_elsewhere
    with pytest.raises(TransientError, match="refused"):
        env.converter(delivery(job))
    del env.storage.hooks["Upload"]
    assert env.converter(delivery(job, attempt=2)) is Outcome.ACK
    assert env.storage.mp3s() == []
    assert [key for key, _, _ in env.publisher.events] == [RK_FAILED]


def test_abort_cuts_off_the_job_and_leaves_nothing(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=8.0)))
    env.converter.abort = threading.Event()
    env.converter.abort.set()
    assert env.converter(delivery(job)) is Outcome.RETRY
    assert env.storage.mp3s() == []
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_CONVERTING  # taken over on the retry
    assert list(env.spool_dir.iterdir()) == []


def test_settings_from_env() -> None:
    env = {
        "STORAGE_SVC_ADDRESS": "storage:5001",
        "RABBITMQ_HOST": "rabbit",
        "CONVERTER_PREFETCH": "2",
        "CONVERTER_WORKERS": "3",
        "MP3_BITRATE_KBPS": "128",
        "MP3_VBR": "true",
        "MAX_DURATION_SECONDS": "60",
        "CONVERTER_HEALTH_PORT": "8081",
        "TMP_DIR": "/scratch",
    }
    settings = Settings.from_env(env)
    assert settings.rabbitmq_url == "amqp://guest:guest@rabbit:5672/%2F"
    assert (settings.prefetch, settings.workers, settings.health_port) == (2, 3, 8081)
    options = settings.encode_options()
    assert (options.bitrate_kbps, options.vbr, options.max_duration_seconds) == (128, True, 60.0)
    assert settings.video_consumer().queue == "video"
    with pytest.raises(SettingsError, match="STORAGE_SVC_ADDRESS"):
        Settings.from_env({})
    with pytest.raises(SettingsError, match="bit rate"):
        Settings.from_env({"STORAGE_SVC_ADDRESS": "x", "MP3_BITRATE_KBPS": "100"})
    with pytest.raises(SettingsError, match="PREFETCH"):
        Settings.from_env({"STORAGE_SVC_ADDRESS": "x", "CONVERTER_PREFETCH": "0"})


def test_progress_is_reported_and_rises(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=8.0)))
    env.converter.options = dataclasses.replace(env.converter.options, slowdown=0.5)
    assert env.converter(delivery(job)) is Outcome.ACK
    reports = [r.progress for r in env.storage.requests["ReportProgress"]]
    assert len(reports) >= 2 and reports == sorted(reports) and 0 < reports[-1] < 1
    assert env.job(job.id).progress == 1.0


def test_cancel_while_converting_stops_and_leaves_nothing(env: Env, media_cache: MediaCache) -> None:
    job = env.job_for(media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=20.0)))
    env.converter.options = dataclasses.replace(env.converter.options, slowdown=1.0)

    def cancel_on_first_report() -> None:
        if env.job(job.id).state == jobs_pb2.JOB_STATE_CONVERTING:
            env.storage.cancel(job.id)

    env.storage.hooks["ReportProgress"] = cancel_on_first_report
    assert env.converter(delivery(job)) is Outcome.ACK
    assert env.job(job.id).state == jobs_pb2.JOB_STATE_CANCELLED
    assert env.storage.mp3s() == [] and env.publisher.events == []
    assert list(env.spool_dir.iterdir()) == []
