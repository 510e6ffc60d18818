"""Exact compare-and-set of job records, and named leases — across storage processes.

Why not a conditional ``find_one_and_update``: on the local FerretDB it runs as a query
followed by a separate write, so several processes racing on one document can all "win"
(measured: 8 processes, 200 rounds, 51 rounds with several winners). What is exact on
FerretDB and on MongoDB alike is a unique-key ``insert_one`` (the loser gets
DuplicateKeyError). Both tools here are built on that alone:

* ``Guard.apply``: every job document carries a ``version``. To change version ``v``, a
  writer first inserts the claim ``"<job_id>:<v>"`` into the claims collection; only the
  one that inserted it writes the document (as version ``v + 1``). A loser reads the job
  again and re-checks its rule against the new state. The claim of ``v - 1`` is removed
  once ``v + 1`` is written (a stale writer that re-inserts it then matches no document).
  A claim whose writer died before writing is cleared after ``ABANDONED_CLAIM_SECONDS``.
* ``Leases``: a lease is a series of generations, ``"<name>#<n>"``; the holder is the one
  that inserted the newest generation, until its ``expires_at``. Taking, renewing,
  taking over an expired one and releasing are all inserts of the next generation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pymongo.errors
from pymongo.collection import Collection

from storage.mongo import now

log = logging.getLogger("storage.guard")

ABANDONED_CLAIM_SECONDS = 30.0
ATTEMPTS = 20


class JobMissing(Exception):
    """The job does not exist (or no longer)."""


class Busy(Exception):
    """Too many concurrent writers on one job: try again later."""


Changes = dict[str, Any]
Rule = Callable[[dict[str, Any]], Changes | None]


class Guard:
    def __init__(self, jobs: Collection, claims: Collection) -> None:
        self.jobs = jobs
        self.claims = claims

    def apply(self, job_id: Any, rule: Rule) -> tuple[dict[str, Any], bool]:
        """Apply ``rule`` to the job as one exact step: ``rule(doc)`` returns the fields to
        set (or None: nothing to change; or raises to refuse). Returns the job after it and
        whether this call changed it."""
        for attempt in range(ATTEMPTS):
            doc = self.jobs.find_one({"_id": job_id})
            if doc is None:
                raise JobMissing(str(job_id))
            changes = rule(doc)
            if changes is None:
                return doc, False
            version = int(doc.get("version", 0))
            claim = f"{job_id}:{version}"
            try:
                self.claims.insert_one({"_id": claim, "job_id": str(job_id), "at": now()})
            except pymongo.errors.DuplicateKeyError:
                self._clear_if_abandoned(claim)
                time.sleep(random.uniform(0.001, 0.005) * (attempt + 1))  # noqa: S311 - jitter
                continue
            changes = {**changes, "version": version + 1, "updated_at": changes.get("updated_at", now())}
            at_version = {"version": version} if "version" in doc else {"version": {"$exists": False}}
            result = self.jobs.update_one({"_id": job_id, **at_version}, {"$set": changes})
            if result.matched_count == 0:
                # Only possible for a claim re-inserted after it was cleared: a stale writer.
                self.claims.delete_one({"_id": claim, "job_id": str(job_id)})
                continue
            self.claims.delete_one({"_id": f"{job_id}:{version - 1}"})
            return {**doc, **changes}, True
        raise Busy(str(job_id))

    def _clear_if_abandoned(self, claim: str) -> None:
        found = self.claims.find_one({"_id": claim})
        if found is None:
            return
        at = found.get("at")
        if isinstance(at, datetime) and now() - at > timedelta(seconds=ABANDONED_CLAIM_SECONDS):
            if self.claims.delete_one({"_id": claim, "at": at}).deleted_count:
                log.warning("cleared a claim whose writer died", extra={"claim": claim})

    def forget(self, job_id: Any) -> None:
        """Remove the claims of a deleted job."""
        self.claims.delete_many({"job_id": str(job_id)})


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Leases:
    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def current(self, name: str) -> dict[str, Any] | None:
        return self.collection.find_one({"name": name}, sort=[("gen", pymongo.DESCENDING)])

    def held_by(self, name: str) -> str:
        """The holder of an unexpired lease, or ''."""
        doc = self.current(name)
        if doc is None or not doc.get("holder") or _aware(doc["expires_at"]) <= now():
            return ""
        return str(doc["holder"])

    def take(self, name: str, holder: str, seconds: float) -> bool:
        """Take, renew or take over (when expired) the lease. False when another holds it."""
        current = self.current(name)
        moment = now()
        if (
            current is not None
            and current.get("holder") not in ("", holder)
            and _aware(current["expires_at"]) > moment
        ):
            return False
        gen = int(current["gen"]) + 1 if current is not None else 1
        if not self._insert(name, gen, holder, moment + timedelta(seconds=seconds)):
            return False
        latest = self.current(name)
        if latest is None or int(latest["gen"]) != gen:
            return False  # a stale generation: someone holds a newer one
        self.collection.delete_many({"name": name, "gen": {"$lt": gen - 1}})
        return True

    def release(self, name: str, holder: str) -> None:
        current = self.current(name)
        if current is not None and current.get("holder") == holder:
            self._insert(name, int(current["gen"]) + 1, "", now())

    def expired_unreleased(self, name: str) -> dict[str, Any] | None:
        """The newest generation when it expired while still held (its holder died)."""
        doc = self.current(name)
        if doc is not None and doc.get("holder") and _aware(doc["expires_at"]) <= now():
            return doc
        return None

    def forget(self, name: str) -> None:
        self.collection.delete_many({"name": name})

    def _insert(self, name: str, gen: int, holder: str, expires_at: datetime) -> bool:
        try:
            self.collection.insert_one(
                {"_id": f"{name}#{gen}", "name": name, "gen": gen, "holder": holder, "expires_at": expires_at}
            )
        except pymongo.errors.DuplicateKeyError:
            return False
        return True
