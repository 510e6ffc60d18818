"""JobService: the gRPC face of the job records (storage/jobstore.py) and their lifecycle
(storage/lifecycle.py). Every change of a job is one call here, exact across storage
processes on MongoDB and on the local FerretDB (storage/guard.py says how).

At most one MP3 per job: MP3s uploaded with a ``job_id`` carry it in their metadata. When
a job finishes, every MP3 of that job other than its ``mp3_id`` is removed (the output of
a converter that lost the job, or of a cancelled one), and an MP3 upload that completes
after its job finished is refused and removed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pymongo
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc, storage_pb2

from common.conversion_options import problem
from storage import lifecycle
from storage.guard import Busy, JobMissing
from storage.jobstore import BadPageToken, JobStore, as_dict, to_job
from storage.lifecycle import FAILED, QUEUED, STATES, SUCCEEDED, TERMINAL, Refused, state_name
from storage.mongo import Mongo, now
from storage.rpc import parse_id, unavailable_on_mongo_error

log = logging.getLogger("storage.jobs")

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500
DEFAULT_STALE_LIMIT = 100
MAX_STALE_LIMIT = 1000
MAX_REASON = 1000
MAX_TEXT = 320
MAX_TRACKS = 64
MAX_WORKER_ID = 200


@contextlib.contextmanager
def lifecycle_errors(context: grpc.ServicerContext) -> Iterator[None]:
    with unavailable_on_mongo_error(context):
        try:
            yield
        except JobMissing:
            context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        except Refused as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except Busy:
            context.abort(grpc.StatusCode.ABORTED, "the job is being changed by others; try again")


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, mongo: Mongo, store: JobStore) -> None:
        self.mongo = mongo
        self.store = store

    def _find(self, job_id: str, owner_id: str, context: grpc.ServicerContext) -> dict[str, Any]:
        oid = parse_id(job_id, "job_id", context)
        doc = self.store.find(oid)
        if doc is None or (owner_id and doc.get("owner_id") != owner_id):
            context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        assert doc is not None
        return doc

    @staticmethod
    def _worker(worker_id: str, context: grpc.ServicerContext, required: bool = True) -> str:
        if (required and not worker_id) or len(worker_id) > MAX_WORKER_ID:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "a worker id of at most 200 characters is required"
            )
        return worker_id

    def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.CreateJobResponse:
        if not request.owner_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "owner_id is required")
        if len(request.owner_email) > MAX_TEXT or len(request.filename) > MAX_TEXT:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "owner_email or filename is too long")
        wrong = problem(request.options)
        if wrong:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"options: {wrong}")
        video_oid = parse_id(request.video_id, "video_id", context)
        with unavailable_on_mongo_error(context):
            self.mongo.ensure_indexes()
            video = self.mongo.files(storage_pb2.BUCKET_VIDEOS).find_one(
                {"_id": video_oid}, {"filename": 1, "metadata.owner_id": 1}
            )
            if video is None or (video.get("metadata") or {}).get("owner_id") != request.owner_id:
                context.abort(grpc.StatusCode.NOT_FOUND, "video not found")
            assert video is not None
            created = now()
            doc: dict[str, Any] = {
                "owner_id": request.owner_id,
                "owner_email": request.owner_email,
                "video_id": request.video_id,
                "filename": request.filename or video.get("filename", ""),
                "state": QUEUED,
                "attempts": 0,
                "mp3_id": "",
                "failure_reason": "",
                "notified": False,
                "duration_seconds": 0.0,
                "version": 1,  # 0 is a progress report in JobChanged events
                "options": as_dict(request.options),
                "created_at": created,
                "updated_at": created,
            }
            doc["_id"] = self.mongo.jobs.insert_one(doc).inserted_id
            self.store.changed(doc)
            job = self.store.view(doc)
        log.info("job created", extra={"job_id": str(doc["_id"]), "video_id": request.video_id})
        return jobs_pb2.CreateJobResponse(job=job)

    def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        with unavailable_on_mongo_error(context):
            return jobs_pb2.GetJobResponse(
                job=self.store.view(self._find(request.job_id, request.owner_id, context))
            )

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        if not request.owner_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "owner_id is required")
        if request.limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        limit = min(request.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        with unavailable_on_mongo_error(context):
            try:
                jobs, token = self.store.page(request.owner_id, limit, request.page_token)
            except BadPageToken as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    # -- the lifecycle
    def ClaimJob(
        self, request: jobs_pb2.ClaimJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ClaimJobResponse:
        worker = self._worker(request.worker_id, context)
        oid = parse_id(request.job_id, "job_id", context)
        if request.lease_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lease_seconds must not be negative")
        with lifecycle_errors(context):
            try:
                doc, claimed = self.store.claim(oid, worker, request.take_over, request.lease_seconds)
            except Refused:
                doc, claimed = self.store.find(oid) or {"_id": oid}, False
                if "state" not in doc:
                    raise JobMissing(request.job_id) from None
            if claimed:
                log.info(
                    "job claimed",
                    extra={"job_id": request.job_id, "worker": worker, "attempts": doc.get("attempts")},
                )
            return jobs_pb2.ClaimJobResponse(job=to_job(doc), claimed=claimed)

    def ReportProgress(
        self, request: jobs_pb2.ReportProgressRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ReportProgressResponse:
        worker = self._worker(request.worker_id, context)
        oid = parse_id(request.job_id, "job_id", context)
        if not 0.0 <= request.progress <= 1.0 or request.eta_seconds < 0 or request.lease_seconds < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "progress must be in 0..1, eta and lease not negative"
            )
        with lifecycle_errors(context):
            proceed, state = self.store.report(
                oid, worker, request.progress, request.eta_seconds, request.lease_seconds
            )
        return jobs_pb2.ReportProgressResponse(proceed=proceed, state=state)  # type: ignore[arg-type]

    def FinishJob(
        self, request: jobs_pb2.FinishJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.FinishJobResponse:
        worker = self._worker(request.worker_id, context)
        if request.duration_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "duration_seconds must not be negative")
        with lifecycle_errors(context):
            job = self._find(request.job_id, "", context)
            self._check_mp3(job, request.mp3_id, context)
            doc = self.store.finish(job["_id"], worker, request.mp3_id, request.duration_seconds)
        log.info("job succeeded", extra={"job_id": request.job_id, "mp3_id": request.mp3_id})
        return jobs_pb2.FinishJobResponse(job=to_job(doc))

    def FailJob(
        self, request: jobs_pb2.FailJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.FailJobResponse:
        self._worker(request.worker_id, context, required=False)
        if len(request.reason) > MAX_REASON:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reason is too long")
        oid = parse_id(request.job_id, "job_id", context)
        with lifecycle_errors(context):
            doc = self.store.fail(oid, request.worker_id, request.reason)
        log.info("job failed", extra={"job_id": request.job_id, "reason": doc.get("failure_reason")})
        return jobs_pb2.FailJobResponse(job=to_job(doc))

    def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        with lifecycle_errors(context):
            job = self._find(request.job_id, request.owner_id, context)
            doc, cancelled = self.store.cancel(job["_id"])
        if cancelled:
            log.info("job cancelled", extra={"job_id": request.job_id})
        return jobs_pb2.CancelJobResponse(job=to_job(doc), cancelled=cancelled)

    def RemoveJob(
        self, request: jobs_pb2.RemoveJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.RemoveJobResponse:
        with lifecycle_errors(context):
            self.store.remove(self._find(request.job_id, request.owner_id, context))
        return jobs_pb2.RemoveJobResponse()

    def ClaimNotification(
        self, request: jobs_pb2.ClaimNotificationRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ClaimNotificationResponse:
        notifier = self._worker(request.notifier_id, context)
        oid = parse_id(request.job_id, "job_id", context)
        with lifecycle_errors(context):
            if request.release:
                self.store.leases.release(f"notify:{oid}", notifier)
                return jobs_pb2.ClaimNotificationResponse()
            doc, claimed, held = self.store.claim_notification(oid, notifier, request.lease_seconds)
        return jobs_pb2.ClaimNotificationResponse(job=to_job(doc), claimed=claimed, held=held)

    def MarkNotified(
        self, request: jobs_pb2.MarkNotifiedRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.MarkNotifiedResponse:
        oid = parse_id(request.job_id, "job_id", context)
        with lifecycle_errors(context):
            doc = self.store.mark_notified(oid, request.notifier_id)
        return jobs_pb2.MarkNotifiedResponse(job=to_job(doc))

    # -- deprecated and internal
    def TransitionJob(
        self, request: jobs_pb2.TransitionJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.TransitionJobResponse:
        """Deprecated (see the proto); kept for callers of the previous contract."""
        expected, new = request.expected_state, request.new_state
        if expected not in STATES or new not in STATES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected_state and new_state are required")
        if expected in TERMINAL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a finished job never changes state")
        if len(request.failure_reason) > MAX_REASON:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "failure_reason is too long")
        if request.duration_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "duration_seconds must not be negative")
        with lifecycle_errors(context):
            job = self._find(request.job_id, "", context)
            extra: dict[str, Any] = {}
            if new == SUCCEEDED:
                self._check_mp3(job, request.mp3_id, context)
                extra.update(mp3_id=request.mp3_id, failure_reason="", progress=1.0)
                extra["expires_at"] = now() + self.store.retention
                if request.duration_seconds:
                    extra["duration_seconds"] = request.duration_seconds
            elif new == FAILED:
                extra["failure_reason"] = request.failure_reason or "the conversion failed"

            def rule(doc: dict[str, Any]) -> dict[str, Any]:
                changes = lifecycle.legacy_transition(doc, expected, new, dict(extra), now())
                if request.increment_attempts:
                    changes["attempts"] = int(doc.get("attempts", 0)) + 1
                return changes

            try:
                doc, _ = self.store.apply(job["_id"], rule)
            except Refused:
                current = self.store.find(job["_id"])
                if current is None:
                    raise JobMissing(request.job_id) from None
                self.store.reconcile_mp3s(current)
                raise
        log.info(
            "job transition",
            extra={"job_id": request.job_id, "from": state_name(expected), "to": state_name(new)},
        )
        return jobs_pb2.TransitionJobResponse(job=to_job(doc))

    def _check_mp3(self, job: dict[str, Any], mp3_id: str, context: grpc.ServicerContext) -> None:
        """A job can only succeed with an existing MP3 of its owner, made for this job."""
        oid = parse_id(mp3_id, "mp3_id", context)
        found = self.mongo.files(storage_pb2.BUCKET_MP3S).find_one({"_id": oid}, {"metadata": 1})
        metadata = (found or {}).get("metadata") or {}
        if found is None or metadata.get("owner_id") != job.get("owner_id"):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "mp3_id does not name an MP3 of the job's owner"
            )
        if metadata.get("job_id", str(job["_id"])) != str(job["_id"]):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "mp3_id was uploaded for another job")

    def DeleteJob(
        self, request: jobs_pb2.DeleteJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.DeleteJobResponse:
        """Removes only the record (an upload rolled back); RemoveJob removes a user's job."""
        oid = parse_id(request.job_id, "job_id", context)
        with unavailable_on_mongo_error(context):
            if self.mongo.jobs.delete_one({"_id": oid}).deleted_count == 0:
                context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
            self.store.guard.forget(oid)
        log.info("job deleted", extra={"job_id": request.job_id})
        return jobs_pb2.DeleteJobResponse()

    def RecordSource(
        self, request: jobs_pb2.RecordSourceRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.RecordSourceResponse:
        oid = parse_id(request.job_id, "job_id", context)
        if len(request.source.audio_tracks) > MAX_TRACKS:
            request.source.ClearField("audio_tracks")  # listed up to a sane number only
        source = as_dict(request.source)

        def rule(doc: dict[str, Any]) -> dict[str, Any]:
            if doc.get("state") in TERMINAL:
                raise Refused("the job is finished")
            return {"source": source}

        with lifecycle_errors(context):
            doc, _ = self.store.apply(oid, rule)
        return jobs_pb2.RecordSourceResponse(job=to_job(doc))

    def ListStaleJobs(
        self, request: jobs_pb2.ListStaleJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListStaleJobsResponse:
        if request.state not in STATES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "state is required")
        if request.older_than_seconds < 0 or request.limit < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "older_than_seconds and limit must not be negative"
            )
        limit = min(request.limit or DEFAULT_STALE_LIMIT, MAX_STALE_LIMIT)
        cutoff = now() - timedelta(seconds=request.older_than_seconds)
        with unavailable_on_mongo_error(context):
            cursor = (
                self.mongo.jobs.find({"state": request.state, "updated_at": {"$lt": cutoff}})
                .sort([("updated_at", pymongo.ASCENDING), ("_id", pymongo.ASCENDING)])
                .limit(limit)
            )
            return jobs_pb2.ListStaleJobsResponse(jobs=[to_job(doc) for doc in cursor])
