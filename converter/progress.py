"""Reports a job's progress to storage while it converts, and hears back whether to go on.

One thread per job calls JobService.ReportProgress every ``interval`` seconds (at most 2,
so a cancelled job stops within 2 s): progress is the part of the sound track decoded so
far, the ETA is extrapolated from the time spent. Each report renews the converter's lease
on the job; ``proceed=false`` in the answer (the job was cancelled, deleted or taken over
by another converter) sets ``stop``, which the transcoder and the transfers check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger("converter.progress")

Source = Callable[[], tuple[float, float]]  # (seconds converted, seconds expected)


class ProgressReporter:
    def __init__(
        self,
        jobs: jobs_pb2_grpc.JobServiceStub,
        job_id: str,
        worker_id: str,
        interval: float,
        timeout: float,
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval = interval
        self.timeout = timeout
        self.stop = threading.Event()
        self.state: int = 0
        self.source: Source | None = None
        self._done = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"progress-{job_id}", daemon=True)

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.timeout + 1)

    def measure(self) -> tuple[float, float]:
        if self.source is None:
            return 0.0, 0.0
        done, expected = self.source()
        if expected <= 0:
            return 0.0, 0.0
        progress = min(done / expected, 0.99)  # 1 only once the MP3 is stored
        elapsed = time.monotonic() - self._started
        eta = elapsed * (1 - progress) / progress if progress > 0.01 else 0.0
        return progress, eta

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            progress, eta = self.measure()
            try:
                answer = self.jobs.ReportProgress(
                    jobs_pb2.ReportProgressRequest(
                        job_id=self.job_id, worker_id=self.worker_id, progress=progress, eta_seconds=eta
                    ),
                    timeout=self.timeout,
                )
            except grpc.RpcError as error:
                # Storage unreachable for a moment: the conversion goes on; the lease only
                # runs out if this lasts longer than JOB_LEASE_SECONDS.
                log.warning("progress not reported", extra={"job_id": self.job_id, "error": repr(error)})
                continue
            if not answer.proceed:
                self.state = int(answer.state)
                log.info("job no longer ours; stopping", extra={"job_id": self.job_id, "state": self.state})
                self.stop.set()
                return
