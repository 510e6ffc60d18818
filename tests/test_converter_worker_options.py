"""converter.worker with a job's options: they travel in ConversionRequested, shape the MP3,
and the probed source is recorded in the job (also when a probe-time check fails it)."""

from __future__ import annotations

import dataclasses

from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, options_pb2

from common.amqp import RK_FAILED, Delivery, Outcome
from testing.media import MediaSpec, audio_duration, audio_info
from tests.fixtures.converter import MediaCache
from tests.test_converter_worker import Env, delivery
from tests.test_converter_worker import env as env  # the fixture, shared with that module


def with_options(job: jobs_pb2.Job, options: options_pb2.ConversionOptions) -> jobs_pb2.Job:
    job.options.CopyFrom(options)
    return job


def delivery_with(job: jobs_pb2.Job) -> Delivery:
    """The job's ConversionRequested, with its options, as the gateway publishes it."""
    plain = delivery(job)
    request = events_pb2.ConversionRequested()
    request.ParseFromString(plain.body)
    request.options.CopyFrom(job.options)
    return dataclasses.replace(plain, body=request.SerializeToString())


def test_options_shape_the_mp3_and_the_source_is_recorded(env: Env, media_cache: MediaCache) -> None:
    source = media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=3.0, languages=("fra",)))
    job = with_options(
        env.job_for(source),
        options_pb2.ConversionOptions(
            bitrate_kbps=64, channels=options_pb2.CHANNEL_MODE_MONO, start_seconds=0.5, end_seconds=2.5
        ),
    )
    assert env.converter(delivery_with(job)) is Outcome.ACK
    done = env.job(job.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert done.source.container == "matroska" and done.source.audio_tracks[0].language == "fra"
    [mp3] = env.storage.mp3s(job.id)
    out = env.tmp_path / "out.mp3"
    out.write_bytes(mp3.data)
    info = audio_info(out)
    assert (info["bit_rate"], info["channels"]) == (64_000, 1)
    assert abs(audio_duration(out) - 2.0) < 0.03


def test_a_missing_track_fails_the_job_with_the_tracks_listed(env: Env, media_cache: MediaCache) -> None:
    source = media_cache.get(
        MediaSpec(container="mkv", audio_codec="flac", duration=1.0, audio_tracks=2, languages=("en", "de"))
    )
    job = with_options(env.job_for(source), options_pb2.ConversionOptions(track=2))
    assert env.converter(delivery_with(job)) is Outcome.ACK
    done = env.job(job.id)
    assert done.state == jobs_pb2.JOB_STATE_FAILED
    assert done.failure_reason == (
        "there is no audio track 2: the video has 2 audio tracks: 0 (flac, en), 1 (flac, de)"
    )
    assert len(done.source.audio_tracks) == 2
    [(key, event, _)] = env.publisher.events
    assert key == RK_FAILED and isinstance(event, events_pb2.ConversionFailed)
    assert event.reason == done.failure_reason
