"""The events sent over RabbitMQ: their routing keys and the functions that build them.

``ConversionRequested`` is published by the gateway (and published again for a job left
queued); ``ConversionSucceeded`` / ``ConversionFailed`` by the converter. The topology
that routes these keys to queues is in ``common/amqp.py``.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2

RK_REQUESTED = "conversion.requested"
RK_SUCCEEDED = "conversion.succeeded"
RK_FAILED = "conversion.failed"


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def conversion_requested(job: jobs_pb2.Job) -> events_pb2.ConversionRequested:
    """The request to convert a job's video (routing key ``RK_REQUESTED``)."""
    return events_pb2.ConversionRequested(
        job_id=job.id,
        video_id=job.video_id,
        owner_id=job.owner_id,
        owner_email=job.owner_email,
        filename=job.filename,
        requested_at=_now(),
        options=job.options,
    )


def conversion_succeeded(
    request: events_pb2.ConversionRequested, mp3_id: str, mp3_size: int, duration_seconds: float
) -> events_pb2.ConversionSucceeded:
    """A finished conversion (routing key ``RK_SUCCEEDED``)."""
    return events_pb2.ConversionSucceeded(
        job_id=request.job_id,
        video_id=request.video_id,
        mp3_id=mp3_id,
        owner_id=request.owner_id,
        owner_email=request.owner_email,
        filename=request.filename,
        duration_seconds=duration_seconds,
        mp3_size=mp3_size,
        finished_at=_now(),
    )


def conversion_failed(request: events_pb2.ConversionRequested, reason: str) -> events_pb2.ConversionFailed:
    """A conversion that failed for good, with a reason a person can read (``RK_FAILED``)."""
    return events_pb2.ConversionFailed(
        job_id=request.job_id,
        video_id=request.video_id,
        owner_id=request.owner_id,
        owner_email=request.owner_email,
        filename=request.filename,
        reason=reason,
        finished_at=_now(),
    )
