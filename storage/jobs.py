"""JobService: conversion job records in one MongoDB collection.

Every state change is one conditional ``find_one_and_update`` filtered on the expected
state, so of two workers racing for the same job exactly one wins; the other gets
FAILED_PRECONDITION. Finished jobs (SUCCEEDED, FAILED) never change state again.

On MongoDB that update is atomic, whatever the number of storage replicas. FerretDB 1.x
(the local MongoDB-compatible server, SQLite handler) runs findAndModify as a query
followed by a separate write, so two concurrent calls can both match: the service
therefore also serialises the conditional updates of one job inside the process (striped
locks). With FerretDB, run a single storage replica; with MongoDB, any number.

At most one MP3 per job: MP3s uploaded with a ``job_id`` carry it in their metadata. When
a job reaches a finished state, every MP3 of that job other than its ``mp3_id`` is removed
(the output of a worker that lost the race, or of one that died before recording it), and
an MP3 upload that completes after its job finished is refused and removed.
"""

from __future__ import annotations

import logging
import threading
import zlib
from datetime import timedelta
from typing import Any

import grpc
import pymongo
import pymongo.errors
from google.protobuf import json_format
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc, options_pb2, storage_pb2

from common.conversion_options import problem
from storage.mongo import Mongo, now
from storage.rpc import parse_id, timestamp, unavailable_on_mongo_error

log = logging.getLogger("storage.jobs")

QUEUED = jobs_pb2.JOB_STATE_QUEUED
CONVERTING = jobs_pb2.JOB_STATE_CONVERTING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
FAILED = jobs_pb2.JOB_STATE_FAILED
TERMINAL = frozenset({SUCCEEDED, FAILED})
STATES = frozenset({QUEUED, CONVERTING, SUCCEEDED, FAILED})

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500
DEFAULT_STALE_LIMIT = 100
MAX_STALE_LIMIT = 1000
MAX_REASON = 1000
MAX_TEXT = 320
MAX_TRACKS = 64


def state_name(state: int) -> str:
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]


def to_job(doc: dict[str, Any]) -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        id=str(doc["_id"]),
        owner_id=doc.get("owner_id", ""),
        owner_email=doc.get("owner_email", ""),
        video_id=doc.get("video_id", ""),
        filename=doc.get("filename", ""),
        state=doc.get("state", 0),
        attempts=int(doc.get("attempts", 0)),
        mp3_id=doc.get("mp3_id", ""),
        failure_reason=doc.get("failure_reason", ""),
        notified=bool(doc.get("notified", False)),
        created_at=timestamp(doc.get("created_at")),
        updated_at=timestamp(doc.get("updated_at")),
        duration_seconds=float(doc.get("duration_seconds", 0.0)),
        options=json_format.ParseDict(
            doc.get("options") or {}, options_pb2.ConversionOptions(), ignore_unknown_fields=True
        ),
    )
    if doc.get("source"):  # once a converter has probed the video
        job.source.CopyFrom(
            json_format.ParseDict(doc["source"], options_pb2.SourceInfo(), ignore_unknown_fields=True)
        )
    return job


def _as_dict(message: options_pb2.ConversionOptions | options_pb2.SourceInfo) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def reconcile_job_mp3s(mongo: Mongo, doc: dict[str, Any]) -> None:
    """Remove the MP3s tagged with a finished job except the one the job names."""
    if doc.get("state") not in TERMINAL:
        return
    keep = doc.get("mp3_id", "")
    files = mongo.files(storage_pb2.BUCKET_MP3S)
    for extra in files.find({"metadata.job_id": str(doc["_id"])}, {"_id": 1}):
        if str(extra["_id"]) == keep:
            continue
        if mongo.delete_file(storage_pb2.BUCKET_MP3S, extra["_id"]):
            log.info("removed a surplus MP3", extra={"job_id": str(doc["_id"]), "file_id": str(extra["_id"])})


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, mongo: Mongo, lock_stripes: int = 64) -> None:
        self.mongo = mongo
        self._locks = [threading.Lock() for _ in range(lock_stripes)]

    def _lock(self, job_id: str) -> threading.Lock:
        """Serialises the conditional updates of one job in this process (see the module doc)."""
        return self._locks[zlib.crc32(job_id.encode()) % len(self._locks)]

    def _find(self, job_id: str, owner_id: str, context: grpc.ServicerContext) -> dict[str, Any]:
        oid = parse_id(job_id, "job_id", context)
        doc = self.mongo.jobs.find_one({"_id": oid})
        if doc is None or (owner_id and doc.get("owner_id") != owner_id):
            context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        assert doc is not None
        return doc

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
                "options": _as_dict(request.options),
                "created_at": created,
                "updated_at": created,
            }
            doc["_id"] = self.mongo.jobs.insert_one(doc).inserted_id
        log.info("job created", extra={"job_id": str(doc["_id"]), "video_id": request.video_id})
        return jobs_pb2.CreateJobResponse(job=to_job(doc))

    def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        with unavailable_on_mongo_error(context):
            return jobs_pb2.GetJobResponse(job=to_job(self._find(request.job_id, request.owner_id, context)))

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        if not request.owner_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "owner_id is required")
        if request.limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        limit = min(request.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        with unavailable_on_mongo_error(context):
            cursor = (
                self.mongo.jobs.find({"owner_id": request.owner_id})
                .sort([("created_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)])
                .limit(limit)
            )
            return jobs_pb2.ListJobsResponse(jobs=[to_job(doc) for doc in cursor])

    def TransitionJob(
        self, request: jobs_pb2.TransitionJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.TransitionJobResponse:
        expected, new = request.expected_state, request.new_state
        if expected not in STATES or new not in STATES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected_state and new_state are required")
        if expected in TERMINAL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a finished job never changes state")
        if len(request.failure_reason) > MAX_REASON:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "failure_reason is too long")
        if request.duration_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "duration_seconds must not be negative")
        with unavailable_on_mongo_error(context):
            job = self._find(request.job_id, "", context)
            changes: dict[str, Any] = {"state": new, "updated_at": now()}
            if new == SUCCEEDED:
                self._check_mp3(job, request.mp3_id, context)
                changes.update(mp3_id=request.mp3_id, failure_reason="")
                if request.duration_seconds:
                    changes["duration_seconds"] = request.duration_seconds
            elif new == FAILED:
                changes["failure_reason"] = request.failure_reason or "the conversion failed"
            update: dict[str, Any] = {"$set": changes}
            if request.increment_attempts:
                update["$inc"] = {"attempts": 1}
            with self._lock(request.job_id):
                doc = self.mongo.jobs.find_one_and_update(
                    {"_id": job["_id"], "state": expected},
                    update,
                    return_document=pymongo.ReturnDocument.AFTER,
                )
            if doc is None:
                current = self.mongo.jobs.find_one({"_id": job["_id"]})
                if current is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
                assert current is not None
                reconcile_job_mp3s(self.mongo, current)
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"job is {state_name(current['state'])}, not {state_name(expected)}",
                )
            assert doc is not None
            reconcile_job_mp3s(self.mongo, doc)
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

    def MarkNotified(
        self, request: jobs_pb2.MarkNotifiedRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.MarkNotifiedResponse:
        oid = parse_id(request.job_id, "job_id", context)
        with unavailable_on_mongo_error(context):
            with self._lock(request.job_id):
                doc = self.mongo.jobs.find_one_and_update(
                    {"_id": oid, "notified": {"$ne": True}},
                    {"$set": {"notified": True, "updated_at": now()}},
                    return_document=pymongo.ReturnDocument.AFTER,
                )
            if doc is None:
                if self.mongo.jobs.count_documents({"_id": oid}, limit=1) == 0:
                    context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job is already marked notified")
            assert doc is not None
        return jobs_pb2.MarkNotifiedResponse(job=to_job(doc))

    def DeleteJob(
        self, request: jobs_pb2.DeleteJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.DeleteJobResponse:
        oid = parse_id(request.job_id, "job_id", context)
        with unavailable_on_mongo_error(context):
            if self.mongo.jobs.delete_one({"_id": oid}).deleted_count == 0:
                context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        log.info("job deleted", extra={"job_id": request.job_id})
        return jobs_pb2.DeleteJobResponse()

    def RecordSource(
        self, request: jobs_pb2.RecordSourceRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.RecordSourceResponse:
        oid = parse_id(request.job_id, "job_id", context)
        if len(request.source.audio_tracks) > MAX_TRACKS:
            request.source.ClearField("audio_tracks")  # listed up to a sane number only
        with unavailable_on_mongo_error(context):
            with self._lock(request.job_id):
                doc = self.mongo.jobs.find_one_and_update(
                    {"_id": oid, "state": {"$nin": list(TERMINAL)}},
                    {"$set": {"source": _as_dict(request.source), "updated_at": now()}},
                    return_document=pymongo.ReturnDocument.AFTER,
                )
            if doc is None:
                if self.mongo.jobs.count_documents({"_id": oid}, limit=1) == 0:
                    context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the job is finished")
            assert doc is not None
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
