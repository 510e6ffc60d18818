"""The notifier's message handler: one email per finished job.

For each ConversionSucceeded / ConversionFailed event (dispatched on the AMQP ``type``
property) the handler

1. reads the job from storage's JobService; a job already marked ``notified`` means this
   is a redelivery or a duplicate event: nothing is sent;
2. builds the email (for a success, with a download link whose token comes from
   AuthService.IssueDownloadToken for that user and that file);
3. sends it (temporary SMTP errors → retried through the delay queue; permanent ones →
   parked in the dead-letter queue, logged);
4. records the ``notified`` mark with MarkNotified (set-once on the server).

Concurrent duplicates of one job inside a process are serialised by a per-job lock. A job
that was sent but could not be marked yet (storage down) is remembered, so the retry only
records the mark and never sends a second email. The one remaining window — the process
dies between the SMTP "250 OK" and the mark — is at-least-once; the Message-ID is fixed per
job so a mail client would still show one message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc

from common.amqp import Delivery, Outcome, TransientError
from common.grpc_client import describe, is_transient
from notifier.mailer import PermanentMailError
from notifier.messages import (
    FailureMail,
    InvalidAddress,
    SuccessMail,
    download_link,
    failure_message,
    success_message,
)

log = logging.getLogger("notifier")

SUCCEEDED_TYPE = events_pb2.ConversionSucceeded.DESCRIPTOR.full_name
FAILED_TYPE = events_pb2.ConversionFailed.DESCRIPTOR.full_name


class MailSender(Protocol):
    def send(self, message: EmailMessage) -> None: ...


class Park(Exception):
    """This message can never be handled: park it in the dead-letter queue."""


@dataclass(frozen=True)
class WorkerConfig:
    sender: Address
    public_base_url: str
    link_ttl_seconds: int
    grpc_timeout_seconds: float = 10.0
    mark_attempts: int = 3
    mark_retry_seconds: float = 0.5


class _JobLocks:
    """One lock per job id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, job_id: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(job_id, (threading.Lock(), 0))
            self._locks[job_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[job_id]
                if users <= 1:
                    del self._locks[job_id]
                else:
                    self._locks[job_id] = (lock, users - 1)


class Notifier:
    def __init__(
        self,
        jobs: jobs_pb2_grpc.JobServiceStub,
        auth: auth_pb2_grpc.AuthServiceStub,
        mailer: MailSender,
        config: WorkerConfig,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.jobs = jobs
        self.auth = auth
        self.mailer = mailer
        self.config = config
        self._sleep = sleep
        self._locks = _JobLocks()
        self._sent_unmarked: OrderedDict[str, None] = OrderedDict()
        self._sent_lock = threading.Lock()

    # -- entry point (common.amqp.Handler)
    def handle(self, delivery: Delivery) -> Outcome:
        kind = delivery.message_type
        try:
            event: events_pb2.ConversionSucceeded | events_pb2.ConversionFailed
            if kind == SUCCEEDED_TYPE:
                event = events_pb2.ConversionSucceeded.FromString(delivery.body)
            elif kind == FAILED_TYPE:
                event = events_pb2.ConversionFailed.FromString(delivery.body)
            else:
                raise Park(f"unexpected message type {kind!r}")
            job_id = event.job_id or delivery.correlation_id
            if not job_id:
                raise Park("event without a job id")
            with self._locks.hold(job_id):
                return self._notify(job_id, event, delivery.attempt)
        except DecodeError:
            log.error(
                "undecodable event; parked",
                extra={"type": kind, "job_id": delivery.correlation_id, "attempt": delivery.attempt},
            )
            return Outcome.DEAD
        except (Park, PermanentMailError, InvalidAddress) as error:
            log.error(
                "cannot notify; parked in the dead-letter queue",
                extra={"type": kind, "job_id": delivery.correlation_id, "reason": str(error)},
            )
            return Outcome.DEAD

    # -- the work
    def _notify(
        self, job_id: str, event: events_pb2.ConversionSucceeded | events_pb2.ConversionFailed, attempt: int
    ) -> Outcome:
        job = self._get_job(job_id)
        if job.notified:
            log.info("already notified; nothing sent", extra={"job_id": job_id, "attempt": attempt})
            self._forget_sent(job_id)
            return Outcome.ACK
        if event.owner_id and job.owner_id and event.owner_id != job.owner_id:
            raise Park("the event's owner does not match the job's owner")
        if not self._was_sent(job_id):
            message = self._build(job, event)
            self.mailer.send(message)
            self._remember_sent(job_id)
            log.info(
                "email sent",
                extra={"job_id": job_id, "kind": type(event).__name__, "attempt": attempt},
            )
        else:
            log.info("email was sent before; recording the mark only", extra={"job_id": job_id})
        self._mark(job_id)
        self._forget_sent(job_id)
        return Outcome.ACK

    def _build(
        self, job: jobs_pb2.Job, event: events_pb2.ConversionSucceeded | events_pb2.ConversionFailed
    ) -> EmailMessage:
        recipient = job.owner_email or event.owner_email
        filename = job.filename or event.filename
        if isinstance(event, events_pb2.ConversionSucceeded):
            if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
                self._state_mismatch(job, "succeeded")
            mp3_id = job.mp3_id or event.mp3_id
            owner_id = job.owner_id or event.owner_id
            if not mp3_id or not owner_id:
                raise Park("succeeded job without an MP3 id or an owner")
            token, expires_at = self._issue_token(owner_id, mp3_id)
            link = download_link(self.config.public_base_url, mp3_id, token)
            mail = SuccessMail(
                job_id=job.id or event.job_id,
                recipient=recipient,
                filename=filename,
                link=link,
                expires_at=expires_at,
                duration_seconds=event.duration_seconds or job.duration_seconds,
            )
            return success_message(mail, self.config.sender)
        if job.state != jobs_pb2.JOB_STATE_FAILED:
            self._state_mismatch(job, "failed")
        failure = FailureMail(
            job_id=job.id or event.job_id,
            recipient=recipient,
            filename=filename,
            reason=event.reason or job.failure_reason,
        )
        return failure_message(failure, self.config.sender)

    @staticmethod
    def _state_mismatch(job: jobs_pb2.Job, expected: str) -> None:
        state = jobs_pb2.JobState.Name(job.state)
        if job.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_CONVERTING):
            # The record lags behind the event: look again later.
            raise TransientError(f"job is still {state}, event says {expected}")
        raise Park(f"job is {state} but the event says {expected}")

    # -- remote calls
    def _call_error(self, what: str, error: grpc.RpcError) -> Exception:
        """A transient failure is retried later (common.grpc_client.is_transient); any other
        answer is permanent and the message is parked."""
        if is_transient(error):
            return TransientError(f"{what}: {describe(error)}")
        return Park(f"{what}: {describe(error)}")

    def _get_job(self, job_id: str) -> jobs_pb2.Job:
        try:
            response = self.jobs.GetJob(
                jobs_pb2.GetJobRequest(job_id=job_id), timeout=self.config.grpc_timeout_seconds
            )
        except grpc.RpcError as error:
            raise self._call_error("reading the job", error) from error
        return response.job

    def _issue_token(self, owner_id: str, mp3_id: str) -> tuple[str, int]:
        try:
            response = self.auth.IssueDownloadToken(
                auth_pb2.IssueDownloadTokenRequest(
                    user_id=owner_id, file_id=mp3_id, ttl_seconds=self.config.link_ttl_seconds
                ),
                timeout=self.config.grpc_timeout_seconds,
            )
        except grpc.RpcError as error:
            raise self._call_error("issuing the download token", error) from error
        if not response.download_token:
            raise TransientError("auth returned an empty download token")
        expires_at = response.expires_at or int(time.time()) + self.config.link_ttl_seconds
        return response.download_token, int(expires_at)

    def _mark(self, job_id: str) -> None:
        last: Exception | None = None
        for attempt in range(1, self.config.mark_attempts + 1):
            try:
                self.jobs.MarkNotified(
                    jobs_pb2.MarkNotifiedRequest(job_id=job_id), timeout=self.config.grpc_timeout_seconds
                )
                return
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.warning("job was already marked notified", extra={"job_id": job_id})
                    return
                last = self._call_error("recording the notified mark", error)
                if isinstance(last, Park):
                    # The email went out; parking keeps it from ever being sent again.
                    raise last from error
                if attempt < self.config.mark_attempts:
                    self._sleep(self.config.mark_retry_seconds * attempt)
        assert last is not None
        raise last

    # -- sent-but-not-marked memory (bounded)
    def _was_sent(self, job_id: str) -> bool:
        with self._sent_lock:
            return job_id in self._sent_unmarked

    def _remember_sent(self, job_id: str) -> None:
        with self._sent_lock:
            self._sent_unmarked[job_id] = None
            while len(self._sent_unmarked) > 10_000:
                self._sent_unmarked.popitem(last=False)

    def _forget_sent(self, job_id: str) -> None:
        with self._sent_lock:
            self._sent_unmarked.pop(job_id, None)
