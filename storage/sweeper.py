"""``python -m storage.sweeper``: recovery and retention of jobs, in a process of its own.

Every ``SWEEP_INTERVAL_SECONDS`` (with jitter) the process takes the ``sweeper`` lease
(storage/guard.py: one holder among any number of replicas; a dead holder's lease runs out
after three intervals) and, while holding it, runs one pass:

* jobs ``queued`` for longer than ``REQUEUE_AFTER_SECONDS``, and jobs ``converting``
  whose converter's lease ran out that long ago, are published again (ConversionRequested):
  a crashed gateway or a lost message leaves nothing stuck. Each re-publication is claimed
  through the job's version (storage/lifecycle.requeue), so even two passes racing
  publish a job once; the converter's ClaimJob takes the job over from a dead converter.
* MP3s past their ``expires_at`` (``MP3_RETENTION_DAYS`` after success) are removed and
  their jobs marked ``expired``; a download then answers 410 Gone.
* chunks of uploads that a storage process killed mid-upload left behind (their marker in
  the uploads collection untouched for ``ORPHAN_UPLOAD_GRACE_SECONDS``) are removed;
* videos of succeeded jobs are removed (unless ``KEEP_VIDEOS``: storage removes them when
  the MP3 is stored; this catches a crash in between), videos of failed and cancelled jobs
  ``VIDEO_RETENTION_HOURS`` after they finished.

It talks to MongoDB through storage's own code (the lifecycle has one owner) and to
RabbitMQ to publish.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pymongo
import pymongo.errors

from common.amqp import Publisher, PublishError
from common.events import RK_REQUESTED, conversion_requested
from common.service import Service, run_service
from storage import lifecycle
from storage.jobstore import JobStore, to_job
from storage.lifecycle import CANCELLED, CONVERTING, FAILED, QUEUED, SUCCEEDED
from storage.mongo import Mongo, now
from storage.settings import SweeperSettings

log = logging.getLogger("storage.sweeper")

LEASE = "sweeper"
BATCH = 200


@dataclass
class Pass:
    requeued: int = 0
    expired: int = 0
    videos: int = 0
    orphans: int = 0


class Sweeper:
    def __init__(self, store: JobStore, publisher: Any, settings: SweeperSettings, holder: str = "") -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop = threading.Event()
        self.healthy = threading.Event()

    def sweep_once(self) -> Pass | None:
        """One pass if this process holds the lease (None otherwise)."""
        if not self.store.leases.take(LEASE, self.holder, self.settings.sweep_interval_seconds * 3):
            return None
        done = Pass()
        done.requeued = self._requeue()
        done.expired = self._expire()
        done.videos = self._videos()
        done.orphans = self._orphans()
        if done.requeued or done.expired or done.videos or done.orphans:
            log.info(
                "sweep",
                extra={
                    "requeued": done.requeued,
                    "expired": done.expired,
                    "videos": done.videos,
                    "orphan_uploads": done.orphans,
                },
            )
        return done

    def _requeue(self) -> int:
        moment = now()
        cutoff = moment - timedelta(seconds=self.settings.requeue_after_seconds)
        published = 0
        stale = self.store.jobs.find({"state": {"$in": [QUEUED, CONVERTING]}, "updated_at": {"$lt": cutoff}})
        for doc in stale.sort("updated_at", pymongo.ASCENDING).limit(BATCH):
            progress = self.store.progress.find_one({"_id": str(doc["_id"])})
            live = lifecycle.lease_live(doc, progress, moment)
            rule = functools.partial(lifecycle.requeue, stale_before=cutoff, live=live)
            claimed, changed = self.store.apply(doc["_id"], rule)
            if not changed:
                continue  # started, finished or published by another pass meanwhile
            try:
                self.publisher.publish(
                    RK_REQUESTED, conversion_requested(to_job(claimed)), correlation_id=str(doc["_id"])
                )
            except PublishError as error:
                # Claimed but not sent: it becomes stale again and a later pass retries it.
                log.warning(
                    "broker unavailable; will retry", extra={"job_id": str(doc["_id"]), "error": str(error)}
                )
                break
            published += 1
            log.info(
                "job published again",
                extra={"job_id": str(doc["_id"]), "state": lifecycle.state_name(doc["state"])},
            )
        return published

    def _expire(self) -> int:
        due = self.store.jobs.find(
            {"state": SUCCEEDED, "expired": {"$ne": True}, "expires_at": {"$lt": now()}}
        )
        return sum(1 for doc in list(due.limit(BATCH)) if self.store.expire(doc))

    def _videos(self) -> int:
        removed = 0
        finished = now() - timedelta(hours=self.settings.video_retention_hours)
        queries: list[dict[str, Any]] = [
            {
                "state": {"$in": [FAILED, CANCELLED]},
                "video_deleted": {"$ne": True},
                "finished_at": {"$lt": finished},
            }
        ]
        if not self.settings.keep_videos:
            queries.append({"state": SUCCEEDED, "video_deleted": {"$ne": True}})
        for query in queries:
            for doc in list(self.store.jobs.find(query).limit(BATCH)):
                self.store.remove_video(doc)
                removed += 1
        return removed

    def _orphans(self) -> int:
        """Remove the chunks of uploads whose writer is gone (see storage/gridwriter.py)."""
        uploads = self.store.mongo.uploads
        cutoff = now() - timedelta(seconds=self.settings.orphan_upload_grace_seconds)
        removed = 0
        for doc in list(uploads.find({"touched_at": {"$lt": cutoff}}).limit(BATCH)):
            # Deleting the marker decides: its writer can no longer commit the file.
            if uploads.delete_one({"_id": doc["_id"], "touched_at": doc["touched_at"]}).deleted_count != 1:
                continue
            chunks = self.store.mongo.db[doc["chunks"]].delete_many({"files_id": doc["_id"]}).deleted_count
            removed += 1
            log.info("removed an abandoned upload", extra={"file_id": str(doc["_id"]), "chunks": chunks})
        return removed

    def run(self) -> None:
        interval = self.settings.sweep_interval_seconds
        delay = random.uniform(0, interval * 0.2)  # noqa: S311 - jitter only
        while not self.stop.wait(delay):
            try:
                self.sweep_once()
                self.healthy.set()
            except (pymongo.errors.PyMongoError, PublishError) as error:
                self.healthy.clear()
                log.warning("sweep failed; will retry", extra={"error": repr(error)})
            except Exception:
                log.exception("sweep failed unexpectedly")
            delay = interval * random.uniform(0.8, 1.2)  # noqa: S311 - jitter only
        with contextlib.suppress(pymongo.errors.PyMongoError):
            self.store.leases.release(LEASE, self.holder)  # the next replica need not wait


def main(service: Service) -> int:
    settings = service.settings(SweeperSettings.from_env)
    store_settings = settings.storage()
    mongo = Mongo(store_settings)
    service.closing(mongo.close, "MongoDB client")
    mongo.ensure_indexes()
    publisher = Publisher(settings.rabbitmq_url)
    service.closing(publisher.close, "RabbitMQ publisher")
    sweeper = Sweeper(JobStore(mongo, store_settings), publisher, settings)
    service.on_stop(sweeper.stop.set)
    service.health(settings.health_port, sweeper.healthy.is_set)
    log.info(
        "sweeper starting", extra={"interval_s": settings.sweep_interval_seconds, "holder": sweeper.holder}
    )
    service.run_threads([("sweeper", sweeper.run)])
    return 0


if __name__ == "__main__":
    run_service("sweeper", main)
