"""Publishes ConversionRequested again for jobs stuck in ``queued``.

A gateway that crashed between creating a job and its publish confirm (or a message lost
with a broker) leaves a job that nothing will run. Every ``SWEEP_INTERVAL_SECONDS`` each
gateway process asks storage for jobs queued longer than ``REQUEUE_AFTER_SECONDS``, claims
each one with the conditional QUEUED → QUEUED transition (it refreshes the job's
``updated_at``; of several sweepers exactly one wins a job) and publishes it again.
Consumers treat duplicates as harmless (the converter's QUEUED → CONVERTING transition
lets only one delivery work). Runs in a daemon thread per process, started on the first
request so it survives gunicorn's fork.
"""

from __future__ import annotations

import logging
import os
import random
import threading

import grpc
from video2mp3.storage.v1 import jobs_pb2

from common.amqp import PublishError
from common.events import RK_REQUESTED, conversion_requested
from gateway.clients import Clients
from gateway.settings import Settings

log = logging.getLogger("gateway.sweeper")

BATCH = 100


class Sweeper:
    def __init__(self, clients: Clients, settings: Settings) -> None:
        self.clients = clients
        self.settings = settings
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stop = threading.Event()

    def sweep_once(self) -> int:
        """One pass; returns how many jobs were published again."""
        timeout = self.settings.grpc_timeout_seconds
        stale = self.clients.jobs.ListStaleJobs(
            jobs_pb2.ListStaleJobsRequest(
                state=jobs_pb2.JOB_STATE_QUEUED,
                older_than_seconds=self.settings.requeue_after_seconds,
                limit=BATCH,
            ),
            timeout=timeout,
        ).jobs
        published = 0
        for job in stale:
            try:
                claimed = self.clients.jobs.TransitionJob(
                    jobs_pb2.TransitionJobRequest(
                        job_id=job.id,
                        expected_state=jobs_pb2.JOB_STATE_QUEUED,
                        new_state=jobs_pb2.JOB_STATE_QUEUED,
                    ),
                    timeout=timeout,
                ).job
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    continue  # started meanwhile, or removed
                raise
            try:
                self.clients.publisher.publish(
                    RK_REQUESTED, conversion_requested(claimed), correlation_id=job.id
                )
            except PublishError as error:
                # Claimed but not sent: it becomes stale again and the next pass retries it.
                log.warning("broker unavailable; will retry", extra={"job_id": job.id, "error": str(error)})
                break
            published += 1
            log.info("job published again", extra={"job_id": job.id})
        return published

    def run(self) -> None:
        interval = self.settings.sweep_interval_seconds
        while not self._stop.wait(interval * random.uniform(0.8, 1.2)):  # noqa: S311 - jitter only
            try:
                self.sweep_once()
            except (grpc.RpcError, PublishError) as error:
                log.warning("sweep failed; will retry", extra={"error": repr(error)})
            except Exception:
                log.exception("sweep failed unexpectedly")

    def ensure_started(self) -> None:
        """Start the thread once per process (cheap to call on every request)."""
        if self.settings.sweep_interval_seconds <= 0 or self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            threading.Thread(target=self.run, name="sweeper", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
