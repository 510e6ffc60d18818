"""The job records and their lifecycle operations, over MongoDB (used by the JobService and
by storage.sweeper). Rules live in storage/lifecycle.py; exactness across processes comes
from storage/guard.py; every change is announced as a JobChanged event.

Collections: ``<jobs>`` (the records, each with a ``version``), ``<jobs>.progress`` (the
converter's progress reports, kept beside the record so frequent reports never contend
with state changes), ``<jobs>.claims`` (one claim per version being written) and
``<jobs>.leases`` (email leases, the sweeper's lease).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
from bson import ObjectId
from bson.errors import InvalidId
from google.protobuf import json_format
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, options_pb2, storage_pb2

from storage import lifecycle
from storage.guard import Guard, JobMissing, Leases
from storage.lifecycle import CONVERTING, QUEUED, SUCCEEDED, TERMINAL
from storage.mongo import Mongo, now
from storage.rpc import timestamp
from storage.settings import Settings

log = logging.getLogger("storage.jobs")

Doc = dict[str, Any]
EventSink = Callable[[events_pb2.JobChanged], None]


class BadPageToken(ValueError):
    pass


def notify_lease(job_id: str) -> str:
    return f"notify:{job_id}"


def as_dict(message: options_pb2.ConversionOptions | options_pb2.SourceInfo) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def to_job(doc: Doc, progress: Doc | None = None, queue_position: int = 0) -> jobs_pb2.Job:
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
        progress=float(doc.get("progress", 0.0)),
        queue_position=queue_position,
        expired=bool(doc.get("expired", False)),
        version=int(doc.get("version", 0)),
        video_deleted=bool(doc.get("video_deleted", False)),
        options=json_format.ParseDict(
            doc.get("options") or {}, options_pb2.ConversionOptions(), ignore_unknown_fields=True
        ),
    )
    if doc.get("source"):  # once a converter has probed the video
        job.source.CopyFrom(
            json_format.ParseDict(doc["source"], options_pb2.SourceInfo(), ignore_unknown_fields=True)
        )
    for name in ("expires_at", "started_at", "finished_at"):
        if doc.get(name) is not None:
            getattr(job, name).CopyFrom(timestamp(doc[name]))
    if doc.get("state") == CONVERTING and progress is not None:
        job.progress = max(job.progress, float(progress.get("progress", 0.0)))
        job.eta_seconds = float(progress.get("eta_seconds", 0.0))
    return job


def encode_token(doc: Doc) -> str:
    millis = int(doc["created_at"].timestamp() * 1000)
    return base64.urlsafe_b64encode(f"{millis}:{doc['_id']}".encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, ObjectId]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        millis, oid = raw.split(":", 1)
        return datetime.fromtimestamp(int(millis) / 1000, UTC), ObjectId(oid)
    except (ValueError, binascii.Error, InvalidId, UnicodeDecodeError) as error:
        raise BadPageToken("page_token is malformed") from error


class JobStore:
    def __init__(self, mongo: Mongo, settings: Settings, events: EventSink | None = None) -> None:
        self.mongo = mongo
        self.settings = settings
        self.jobs = mongo.jobs
        name = settings.jobs_collection
        self.progress = mongo.db[f"{name}.progress"]
        self.guard = Guard(mongo.jobs, mongo.db[f"{name}.claims"])
        self.leases = Leases(mongo.db[f"{name}.leases"])
        self.events = events
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        self.retention = timedelta(days=settings.mp3_retention_days)

    # -- reading
    def find(self, oid: ObjectId) -> Doc | None:
        return self.jobs.find_one({"_id": oid})

    def view(self, doc: Doc) -> jobs_pb2.Job:
        progress = (
            self.progress.find_one({"_id": str(doc["_id"])}) if doc.get("state") == CONVERTING else None
        )
        position = 0
        if doc.get("state") == QUEUED:
            position = 1 + self.jobs.count_documents(
                {"state": QUEUED, "created_at": {"$lt": doc["created_at"]}}
            )
        return to_job(doc, progress, position)

    def page(self, owner_id: str, limit: int, token: str) -> tuple[list[jobs_pb2.Job], str]:
        query: Doc = {"owner_id": owner_id}
        if token:
            created, oid = decode_token(token)
            query["$or"] = [{"created_at": {"$lt": created}}, {"created_at": created, "_id": {"$lt": oid}}]
        cursor = (
            self.jobs.find(query)
            .sort([("created_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)])
            .limit(limit + 1)
        )
        docs = list(cursor)
        converting = [str(d["_id"]) for d in docs[:limit] if d.get("state") == CONVERTING]
        progress = (
            {p["_id"]: p for p in self.progress.find({"_id": {"$in": converting}})} if converting else {}
        )
        jobs = [to_job(d, progress.get(str(d["_id"]))) for d in docs[:limit]]
        return jobs, (encode_token(docs[limit - 1]) if len(docs) > limit else "")

    # -- events
    def changed(self, doc: Doc, removed: bool = False, progress: Doc | None = None) -> None:
        if self.events is None:
            return
        event = events_pb2.JobChanged(
            job_id=str(doc["_id"]),
            owner_id=doc.get("owner_id", ""),
            state=int(doc.get("state", 0)),
            version=0 if progress else int(doc.get("version", 0)),
            progress=float((progress or doc).get("progress", 0.0)),
            eta_seconds=float((progress or {}).get("eta_seconds", 0.0)),
            removed=removed,
        )
        event.changed_at.GetCurrentTime()
        self.events(event)

    def apply(self, oid: ObjectId, rule: Callable[[Doc], dict[str, Any] | None]) -> tuple[Doc, bool]:
        doc, changed = self.guard.apply(oid, rule)
        if changed:
            self.changed(doc)
            if doc.get("state") in TERMINAL:
                self.reconcile_mp3s(doc)
                self.progress.delete_one({"_id": str(oid)})  # the record holds the last word
        return doc, changed

    # -- the lifecycle
    def claim(self, oid: ObjectId, worker_id: str, take_over: bool, lease: float) -> tuple[Doc, bool]:
        moment = now()
        progress = self.progress.find_one({"_id": str(oid)})

        def rule(doc: Doc) -> dict[str, Any]:
            live = lifecycle.lease_live(doc, progress, moment)
            return lifecycle.claim(
                doc,
                worker_id,
                take_over=take_over,
                live=live,
                moment=moment,
                lease=lease or self.lease.total_seconds(),
            )

        return self.apply(oid, rule)

    def report(
        self, oid: ObjectId, worker_id: str, progress: float, eta: float, lease: float
    ) -> tuple[bool, int]:
        """Record the holder's progress; (proceed, state)."""
        doc = self.find(oid)
        if doc is None:
            return False, 0
        if doc.get("state") != CONVERTING or doc.get("worker_id") != worker_id:
            return False, int(doc.get("state", 0))
        key = str(oid)
        previous = self.progress.find_one({"_id": key}) or {}
        value = max(float(previous.get("progress", 0.0)), min(max(progress, 0.0), 1.0))
        record = {
            "worker_id": worker_id,
            "progress": value,
            "eta_seconds": max(eta, 0.0),
            "lease_until": now() + (timedelta(seconds=lease) if lease else self.lease),
        }
        self.progress.replace_one({"_id": key}, record, upsert=True)
        self.changed(doc, progress=record)
        return True, CONVERTING

    def finish(self, oid: ObjectId, worker_id: str, mp3_id: str, duration: float) -> Doc:
        moment = now()
        doc, _ = self.apply(
            oid, lambda d: lifecycle.finish(d, worker_id, mp3_id, duration, moment, self.retention)
        )
        if not self.settings.keep_videos and doc.get("state") == SUCCEEDED:
            doc = self.remove_video(doc)
        return doc

    def fail(self, oid: ObjectId, worker_id: str, reason: str) -> Doc:
        moment = now()
        return self.apply(oid, lambda d: lifecycle.fail(d, worker_id, reason, moment))[0]

    def cancel(self, oid: ObjectId) -> tuple[Doc, bool]:
        moment = now()
        return self.apply(oid, lambda d: lifecycle.cancel(d, moment))

    def remove(self, doc: Doc) -> None:
        """Cancel (if running), then delete the job, its video and its MP3s."""
        oid = doc["_id"]
        doc, _ = self.cancel(oid)
        self._delete_video(doc)
        with contextlib.suppress(InvalidId):
            self.mongo.delete_file(storage_pb2.BUCKET_MP3S, ObjectId(doc.get("mp3_id", "")))
        self.reconcile_mp3s({**doc, "mp3_id": ""})
        self.jobs.delete_one({"_id": oid})
        self.progress.delete_one({"_id": str(oid)})
        self.guard.forget(oid)
        self.leases.forget(notify_lease(str(oid)))
        self.reconcile_mp3s({**doc, "mp3_id": ""})  # an MP3 that was committed meanwhile
        self.changed(doc, removed=True)
        log.info("job removed", extra={"job_id": str(oid)})

    def claim_notification(self, oid: ObjectId, notifier_id: str, lease: float) -> tuple[Doc, bool, bool]:
        """(job, claimed, held by another)."""
        doc = self.find(oid)
        if doc is None:
            raise JobMissing(str(oid))
        if doc.get("notified"):
            return doc, False, False
        name = notify_lease(str(oid))
        dead = self.leases.expired_unreleased(name)
        if dead is not None and dead.get("holder") != notifier_id:
            # Its holder died between taking the lease and marking: the email may be out.
            log.warning("email lease expired unmarked; not sending again", extra={"job_id": str(oid)})
            doc, _ = self.apply(oid, lambda d: None if d.get("notified") else {"notified": True})
            self.leases.forget(name)
            return doc, False, False
        if not self.leases.take(name, notifier_id, lease or 60.0):
            return doc, False, True
        doc = self.find(oid) or doc
        if doc.get("notified"):  # marked between our read and the lease
            self.leases.release(name, notifier_id)
            return doc, False, False
        return doc, True, False

    def mark_notified(self, oid: ObjectId, notifier_id: str) -> Doc:
        doc, _ = self.apply(oid, lifecycle.mark_notified)
        # Marked for good: the email's lease is of no more use (a claim that raced this one
        # finds the mark when it looks again after taking the lease).
        self.leases.forget(notify_lease(str(oid)))
        return doc

    # -- files
    def reconcile_mp3s(self, doc: Doc) -> None:
        """Remove the MP3s tagged with a finished job except the one the job names."""
        if doc.get("state") not in TERMINAL:
            return
        keep = doc.get("mp3_id", "")
        for extra in self.mongo.files(storage_pb2.BUCKET_MP3S).find(
            {"metadata.job_id": str(doc["_id"])}, {"_id": 1}
        ):
            if str(extra["_id"]) != keep and self.mongo.delete_file(storage_pb2.BUCKET_MP3S, extra["_id"]):
                log.info("removed an MP3", extra={"job_id": str(doc["_id"]), "file_id": str(extra["_id"])})

    def _delete_video(self, doc: Doc) -> None:
        try:
            self.mongo.delete_file(storage_pb2.BUCKET_VIDEOS, ObjectId(doc.get("video_id", "")))
        except InvalidId:
            pass

    def remove_video(self, doc: Doc) -> Doc:
        """Delete the job's video and record it (retention)."""
        self._delete_video(doc)
        return self.apply(doc["_id"], lifecycle.video_removed)[0]

    def expire(self, doc: Doc) -> bool:
        """Remove an MP3 past its expiry and mark the job expired."""
        moment = now()
        if lifecycle.expire(doc, moment) is None:
            return False
        try:
            self.mongo.delete_file(storage_pb2.BUCKET_MP3S, ObjectId(doc.get("mp3_id", "")))
        except InvalidId:
            pass
        return self.apply(doc["_id"], lambda d: lifecycle.expire(d, moment))[1]

    def is_expired_mp3(self, mp3_oid: ObjectId) -> bool:
        """Whether this MP3 belonged to a job whose MP3 expired."""
        doc = self.jobs.find_one(
            {"mp3_id": str(mp3_oid), "state": SUCCEEDED}, {"expired": 1, "expires_at": 1}
        )
        if doc is None:
            return False
        return bool(doc.get("expired")) or (doc.get("expires_at") is not None and doc["expires_at"] <= now())
