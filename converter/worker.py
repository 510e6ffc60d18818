"""The converter's message handler: one ConversionRequested → one MP3 in storage + one event.

Order of work (so that a crash at any point is repaired by redelivery):

1. ``TransitionJob`` queued → converting (conditional; the attempt counter goes up).
   If the job is not queued: succeeded → publish ConversionSucceeded again (the notifier
   deduplicates) and ack; failed → publish ConversionFailed again and ack; converting and the
   message was redelivered (or came back from the delay queue) → a worker died or gave up
   mid-job: take it over; converting otherwise → a duplicate message: ack.
2. Spool the video from storage to a private temporary file (removed in ``finally``).
3. Transcode and stream the MP3 into ``StorageService.Upload`` as it is produced, then the
   finish message. A failure mid-way ends the stream without finish: storage keeps nothing.
4. ``TransitionJob`` converting → succeeded with the MP3 id. If another worker won, the
   MP3 just written is deleted.
5. Publish ConversionSucceeded with publisher confirms; the consumer acks afterwards.

Bad media fails the job for good (ConversionFailed). An unavailable dependency raises
``TransientError``: the consumer retries through the delay queue; on the last attempt the
job is marked failed before the message is parked in the dead-letter queue.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc, options_pb2, storage_pb2, storage_pb2_grpc

from common import memory
from common.amqp import Delivery, Outcome, PublishError, TransientError
from common.events import RK_FAILED, RK_SUCCEEDED, conversion_failed, conversion_succeeded
from common.file_streams import UploadStream, split_download
from common.grpc_client import describe, details, is_transient, status_code
from converter.media import Cancelled, MediaError, title_from_filename
from converter.settings import Settings
from converter.spool import Spool
from converter.transcode import Transcoder

log = logging.getLogger("converter")
T = TypeVar("T")

QUEUED = jobs_pb2.JOB_STATE_QUEUED
CONVERTING = jobs_pb2.JOB_STATE_CONVERTING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
FAILED = jobs_pb2.JOB_STATE_FAILED

GAVE_UP_REASON = (
    "the conversion could not be finished because a service it needs was unavailable for too long; "
    "please upload the video again later"
)
SPOOL_CHUNK = 1024 * 1024


class Publisher(Protocol):
    """What the worker needs from common.amqp.Publisher (a fake in unit tests)."""

    def publish(self, routing_key: str, message: Message, correlation_id: str) -> None: ...


@dataclass
class Result:
    mp3_id: str
    mp3_size: int
    duration_seconds: float


class Converter:
    """The handler given to common.amqp.Consumer. Thread-safe: no per-job state on self."""

    def __init__(
        self,
        settings: Settings,
        channel: grpc.Channel,
        publisher: Publisher,
        abort: threading.Event | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        # Where videos wait on disk while they are converted; a dead converter's leftovers
        # are removed at start and after every job (see converter/spool.py).
        self.spool = spool or Spool(settings.tmp_dir)
        self.storage = storage_pb2_grpc.StorageServiceStub(channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(channel)
        self.publisher = publisher
        self.options = settings.encode_options()
        # Set after SIGTERM's grace period: the current job is cut off (and redelivered later).
        self.abort = abort or threading.Event()

    # ------------------------------------------------------------------------------ entry
    def __call__(self, delivery: Delivery) -> Outcome:
        request = self._parse(delivery)
        if request is None:
            return Outcome.DEAD
        extra = {"job_id": request.job_id, "attempt": delivery.attempt, "redelivered": delivery.redelivered}
        try:
            return self._handle(request, delivery, extra)
        except Cancelled:
            log.info("worker stopping: job cut off, it will be converted again", extra=extra)
            return Outcome.RETRY
        except Exception as error:
            # Transient errors (and bugs) are retried by the consumer; on the last attempt the
            # job is marked failed here, so it is never left "converting" in the dead letters.
            if delivery.attempt >= self.settings.max_attempts:
                log.error("giving up on the job", exc_info=True, extra={**extra, "error": str(error)})
                self._give_up(request)
                return Outcome.DEAD
            raise

    def _parse(self, delivery: Delivery) -> events_pb2.ConversionRequested | None:
        expected = events_pb2.ConversionRequested.DESCRIPTOR.full_name
        if delivery.message_type and delivery.message_type != expected:
            log.error("unexpected message type; parked", extra={"type": delivery.message_type})
            return None
        request = events_pb2.ConversionRequested()
        try:
            request.ParseFromString(delivery.body)
        except DecodeError:
            log.error(
                "message is not a ConversionRequested; parked", extra={"job_id": delivery.correlation_id}
            )
            return None
        if not request.job_id or not request.video_id:
            log.error("ConversionRequested without job or video id; parked")
            return None
        return request

    def _handle(
        self, request: events_pb2.ConversionRequested, delivery: Delivery, extra: dict[str, object]
    ) -> Outcome:
        claimed = self._claim(request, delivery, extra)
        if claimed is not None:
            return claimed
        started = time.monotonic()
        log.info("converting", extra={**extra, "original_filename": request.filename})
        try:
            result = self._convert(request)
        except MediaError as error:
            log.info(
                "media cannot be converted", extra={**extra, "reason": error.reason, "kind": error.kind.value}
            )
            self._fail(request, error.reason)
            return Outcome.ACK
        if not self._finish(request, result, extra):
            return Outcome.ACK
        self._publish_succeeded(request, result)
        log.info(
            "converted",
            extra={
                **extra,
                "mp3_id": result.mp3_id,
                "mp3_bytes": result.mp3_size,
                "audio_seconds": round(result.duration_seconds, 3),
                "took_s": round(time.monotonic() - started, 3),
            },
        )
        return Outcome.ACK

    # ------------------------------------------------------------------------------ job state
    def _rpc(self, what: str, call: Callable[[], T]) -> T:
        """Run one unary call; transient gRPC errors become TransientError."""
        try:
            return call()
        except grpc.RpcError as error:
            if is_transient(error):
                raise TransientError(f"storage unavailable during {what}: {describe(error)}") from error
            raise

    def _transition(
        self,
        job_id: str,
        expected: jobs_pb2.JobState.ValueType,
        new: jobs_pb2.JobState.ValueType,
        *,
        mp3_id: str = "",
        failure_reason: str = "",
        increment_attempts: bool = False,
        duration_seconds: float = 0.0,
    ) -> jobs_pb2.Job | None:
        """The job after the change, or None when it was not in ``expected`` (someone else won)."""
        request = jobs_pb2.TransitionJobRequest(
            job_id=job_id,
            expected_state=expected,
            new_state=new,
            mp3_id=mp3_id,
            failure_reason=failure_reason,
            increment_attempts=increment_attempts,
            duration_seconds=duration_seconds,
        )
        try:
            response = self._rpc(
                "TransitionJob",
                lambda: self.jobs.TransitionJob(request, timeout=self.settings.rpc_timeout_seconds),
            )
        except grpc.RpcError as error:
            if status_code(error) == grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise
        return response.job

    def _get_job(self, job_id: str) -> jobs_pb2.Job | None:
        try:
            response = self._rpc(
                "GetJob",
                lambda: self.jobs.GetJob(
                    jobs_pb2.GetJobRequest(job_id=job_id), timeout=self.settings.rpc_timeout_seconds
                ),
            )
        except grpc.RpcError as error:
            if status_code(error) == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.job

    def _claim(
        self, request: events_pb2.ConversionRequested, delivery: Delivery, extra: dict[str, object]
    ) -> Outcome | None:
        """None when this worker now owns the job; otherwise how to settle the message."""
        try:
            job = self._transition(request.job_id, QUEUED, CONVERTING, increment_attempts=True)
        except grpc.RpcError as error:
            if status_code(error) == grpc.StatusCode.NOT_FOUND:
                log.warning("job does not exist (upload rolled back?); dropped", extra=extra)
                return Outcome.ACK
            if status_code(error) == grpc.StatusCode.INVALID_ARGUMENT:
                log.error("storage rejects the job id; parked", extra={**extra, "error": details(error)})
                return Outcome.DEAD
            raise
        if job is not None:
            return None
        current = self._get_job(request.job_id)
        if current is None:
            log.warning("job does not exist (upload rolled back?); dropped", extra=extra)
            return Outcome.ACK
        if current.state == SUCCEEDED:
            log.info("job already succeeded; publishing its result again", extra=extra)
            self._publish_succeeded(
                request,
                Result(current.mp3_id, self._mp3_size(current), current.duration_seconds),
            )
            return Outcome.ACK
        if current.state == FAILED:
            log.info("job already failed; publishing its failure again", extra=extra)
            self._publish_failed(request, current.failure_reason)
            return Outcome.ACK
        if current.state == CONVERTING:
            if delivery.redelivered or delivery.attempt > 1:
                log.info("taking over a job left converting", extra=extra)
                return self._take_over(request)
            age = time.time() - current.updated_at.ToSeconds() if current.HasField("updated_at") else 0.0
            if age > self.settings.takeover_after_seconds:
                # Converting for longer than any conversion takes: its worker is gone.
                log.warning("taking over a stale converting job", extra={**extra, "age_s": round(age)})
                return self._take_over(request)
            log.info("job is being converted by another worker; duplicate message dropped", extra=extra)
            return Outcome.ACK
        # Still queued after a failed conditional change: a race with the gateway; try later.
        raise TransientError(f"job {request.job_id} is in state {current.state}; will retry")

    def _take_over(self, request: events_pb2.ConversionRequested) -> Outcome | None:
        """Own a job another worker left converting: converting → converting counts the attempt
        and refreshes the job's ``updated_at``. If the job changed meanwhile (it finished, or
        another worker took it over first), the message is looked at again later."""
        if self._transition(request.job_id, CONVERTING, CONVERTING, increment_attempts=True) is None:
            raise TransientError(f"job {request.job_id} changed while being taken over; will retry")
        return None

    def _mp3_size(self, job: jobs_pb2.Job) -> int:
        try:
            response = self.storage.Stat(
                storage_pb2.StatRequest(bucket=storage_pb2.BUCKET_MP3S, file_id=job.mp3_id),
                timeout=self.settings.rpc_timeout_seconds,
            )
            return int(response.file.size)
        except grpc.RpcError:
            return 0

    def _fail(self, request: events_pb2.ConversionRequested, reason: str) -> None:
        job = self._transition(request.job_id, CONVERTING, FAILED, failure_reason=reason)
        if job is None:
            current = self._get_job(request.job_id)
            if current is None or current.state != FAILED:
                log.warning(
                    "job was finished elsewhere; failure not recorded",
                    extra={"job_id": request.job_id, "state": None if current is None else current.state},
                )
                return
            reason = current.failure_reason or reason
        self._publish_failed(request, reason)

    def _give_up(self, request: events_pb2.ConversionRequested) -> None:
        """Last attempt failed on an outage: mark the job failed (best effort) before parking."""
        try:
            for expected in (CONVERTING, QUEUED):
                if self._transition(request.job_id, expected, FAILED, failure_reason=GAVE_UP_REASON):
                    self._publish_failed(request, GAVE_UP_REASON)
                    return
        except (TransientError, grpc.RpcError) as error:
            log.error(
                "could not mark the job failed; it stays for the stale-job sweep",
                extra={"job_id": request.job_id, "error": str(error)},
            )

    def _finish(
        self, request: events_pb2.ConversionRequested, result: Result, extra: dict[str, object]
    ) -> bool:
        """Record success. False (after deleting our MP3) when another worker finished first."""
        job: jobs_pb2.Job | None = None
        for delay in (0.5, 1.0, 2.0, None):
            try:
                job = self._transition(
                    request.job_id,
                    CONVERTING,
                    SUCCEEDED,
                    mp3_id=result.mp3_id,
                    duration_seconds=result.duration_seconds,
                )
                break
            except TransientError:
                # The MP3 is stored: a short wait beats converting again on redelivery. Never
                # delete it here — the change may have been applied with only the answer lost.
                if delay is None or self.abort.is_set():
                    raise
                time.sleep(delay)
        if job is not None:
            return True
        current = self._get_job(request.job_id)
        if current is not None and current.state == SUCCEEDED and current.mp3_id == result.mp3_id:
            return True  # our own change, applied earlier with only the answer lost
        if current is not None and current.state == CONVERTING:
            # Storage refused our MP3 (e.g. it vanished): convert again on the next attempt.
            raise TransientError("storage did not accept the finished MP3; will convert again")
        log.info(
            "the job was finished elsewhere; deleting our MP3",
            extra={**extra, "mp3_id": result.mp3_id, "state": None if current is None else current.state},
        )
        with contextlib.suppress(grpc.RpcError):
            self.storage.Delete(
                storage_pb2.DeleteRequest(bucket=storage_pb2.BUCKET_MP3S, file_id=result.mp3_id),
                timeout=self.settings.rpc_timeout_seconds,
            )
        return False

    # ------------------------------------------------------------------------------ events
    def _publish(
        self,
        routing_key: str,
        message: events_pb2.ConversionSucceeded | events_pb2.ConversionFailed,
        job_id: str,
    ) -> None:
        try:
            self.publisher.publish(routing_key, message, job_id)
        except PublishError as error:
            raise TransientError(str(error)) from error

    def _publish_succeeded(self, request: events_pb2.ConversionRequested, result: Result) -> None:
        event = conversion_succeeded(request, result.mp3_id, result.mp3_size, result.duration_seconds)
        self._publish(RK_SUCCEEDED, event, request.job_id)

    def _publish_failed(self, request: events_pb2.ConversionRequested, reason: str) -> None:
        self._publish(RK_FAILED, conversion_failed(request, reason), request.job_id)

    # ------------------------------------------------------------------------------ conversion
    def _convert(self, request: events_pb2.ConversionRequested) -> Result:
        spool = self._spool_path(request)
        try:
            self._download(request, spool)
            memory.release_free_memory()
            transcoder = Transcoder(
                spool,
                title_from_filename(request.filename),
                self.options,
                should_stop=self.abort.is_set,
                job=request.options,
                on_probed=lambda source: self._record_source(request.job_id, source),
                filename=request.filename,
            )
            return self._upload(request, transcoder)
        finally:
            spool.unlink(missing_ok=True)
            self.spool.sweep()
            memory.release_free_memory()

    def _record_source(self, job_id: str, source: options_pb2.SourceInfo) -> None:
        """Store what probing found in the job (shown to its owner)."""
        request = jobs_pb2.RecordSourceRequest(job_id=job_id, source=source)
        try:
            self._rpc(
                "RecordSource",
                lambda: self.jobs.RecordSource(request, timeout=self.settings.rpc_timeout_seconds),
            )
        except grpc.RpcError as error:  # the job finished or vanished meanwhile: settled later
            log.info("source not recorded", extra={"job_id": job_id, "error": details(error)})

    def _spool_path(self, request: events_pb2.ConversionRequested) -> Path:
        return self.spool.new_file(".video")  # mode 0600, in this process's own folder

    def close(self) -> None:
        """Remove this process's spool folder (on a graceful stop)."""
        self.spool.close()

    def _check_space(self, size: int, directory: Path) -> None:
        limit = self.settings.spool_max_bytes
        if size > limit:
            raise MediaError.too_large(size, limit)
        free = shutil.disk_usage(directory).free
        if size + self.settings.spool_reserve_bytes > free:
            raise TransientError(f"not enough temporary disk space for {size} bytes ({free} free)")

    def _download(self, request: events_pb2.ConversionRequested, spool: Path) -> None:
        call = self.storage.Download(
            storage_pb2.DownloadRequest(bucket=storage_pb2.BUCKET_VIDEOS, file_id=request.video_id),
            timeout=self.settings.stream_timeout_seconds,
        )
        written = 0
        limit = self.settings.spool_max_bytes
        try:
            info, chunks = split_download(call)
            self._check_space(int(info.size), spool.parent)
            with spool.open("wb") as out:
                for chunk in chunks:
                    if self.abort.is_set():
                        call.cancel()
                        raise Cancelled("worker stopping")
                    written += len(chunk)
                    if written > limit:
                        call.cancel()
                        raise MediaError.too_large(written, limit)
                    out.write(chunk)
        except grpc.RpcError as error:
            if status_code(error) == grpc.StatusCode.NOT_FOUND:
                raise MediaError.gone() from error
            if is_transient(error):
                raise TransientError(f"video download failed: {describe(error)}") from error
            raise

    def _upload(self, request: events_pb2.ConversionRequested, transcoder: Transcoder) -> Result:
        stem = title_from_filename(request.filename) or "audio"
        header = storage_pb2.UploadHeader(
            bucket=storage_pb2.BUCKET_MP3S,
            filename=f"{stem}.mp3",
            content_type="audio/mpeg",
            owner_id=request.owner_id,
            job_id=request.job_id,
        )
        chunks = transcoder.chunks()
        # Errors found early (most bad media) surface here, before any upload is opened.
        first = next(chunks, b"")

        def checked() -> Iterator[bytes]:
            for chunk in itertools.chain([first], chunks):
                if self.abort.is_set():
                    raise Cancelled("worker stopping")
                yield chunk

        # A failure mid-way ends the stream without its finish message: storage keeps nothing,
        # and the failure is raised here once the call has ended.
        stream = UploadStream(header, checked())
        try:
            response = self.storage.Upload(stream, timeout=self.settings.stream_timeout_seconds)
        except grpc.RpcError as error:
            if stream.error is not None:
                raise stream.error from None
            if is_transient(error):
                raise TransientError(f"MP3 upload failed: {describe(error)}") from error
            if status_code(error) in {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}:
                # The job finished (or vanished) meanwhile: the retry settles it from its state.
                raise TransientError(f"storage refused the MP3: {details(error)}") from error
            raise
        finally:
            transcoder.close()
        if stream.error is not None:  # the call ended although the stream broke: never trust that file
            with contextlib.suppress(grpc.RpcError):
                self.storage.Delete(
                    storage_pb2.DeleteRequest(bucket=storage_pb2.BUCKET_MP3S, file_id=response.file.id),
                    timeout=self.settings.rpc_timeout_seconds,
                )
            raise stream.error
        return Result(response.file.id, int(response.file.size), transcoder.duration_seconds)
