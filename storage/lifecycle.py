"""The rules of a job's life, in one place (the only owner of the job lifecycle).

States: ``queued → converting → succeeded | failed | cancelled``, plus the ``notified``
and ``expired`` marks. Each function below is one transition: it looks at the job's
current record and returns the fields to set, returns None (nothing to do: the change is
already there), or raises ``Refused``. ``storage.guard.Guard.apply`` runs them so that
each is exact across storage processes; ``storage.jobstore`` is their only caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from video2mp3.storage.v1 import jobs_pb2

QUEUED = jobs_pb2.JOB_STATE_QUEUED
CONVERTING = jobs_pb2.JOB_STATE_CONVERTING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
FAILED = jobs_pb2.JOB_STATE_FAILED
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATES = frozenset({QUEUED, CONVERTING, SUCCEEDED, FAILED, CANCELLED})

Doc = dict[str, Any]
Changes = dict[str, Any]


class Refused(Exception):
    """The transition does not apply to the job as it is now."""


def state_name(state: int) -> str:
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]


def lease_live(doc: Doc, progress: Doc | None, moment: datetime) -> bool:
    """Whether the converter holding a converting job was heard of within its lease."""
    until = doc.get("lease_until")
    if progress is not None and progress.get("worker_id") == doc.get("worker_id"):
        reported = progress.get("lease_until")
        if reported is not None and (until is None or reported > until):
            until = reported
    return until is not None and until > moment


def claim(
    doc: Doc, worker_id: str, *, take_over: bool, live: bool, moment: datetime, lease: float
) -> Changes:
    """queued → converting, or a converting job taken over; attempts counts every claim."""
    state = doc.get("state")
    if state == CONVERTING and doc.get("worker_id") != worker_id and live and not take_over:
        raise Refused("another converter holds the job")
    if state not in (QUEUED, CONVERTING):
        raise Refused(f"job is {state_name(state or 0)}")
    return {
        "state": CONVERTING,
        "worker_id": worker_id,
        "attempts": int(doc.get("attempts", 0)) + 1,
        "started_at": moment,
        "lease_until": moment + timedelta(seconds=lease),
    }


def finish(
    doc: Doc, worker_id: str, mp3_id: str, duration: float, moment: datetime, retention: timedelta
) -> Changes | None:
    """converting → succeeded, by the converter that holds the job."""
    if doc.get("state") == SUCCEEDED and doc.get("mp3_id") == mp3_id:
        return None  # a retry of our own call whose answer was lost
    if doc.get("state") != CONVERTING:
        raise Refused(f"job is {state_name(doc.get('state') or 0)}, not converting")
    if worker_id and doc.get("worker_id") not in ("", None, worker_id):
        raise Refused("another converter holds the job")
    changes: Changes = {
        "state": SUCCEEDED,
        "mp3_id": mp3_id,
        "failure_reason": "",
        "progress": 1.0,
        "finished_at": moment,
        "expires_at": moment + retention,
    }
    if duration:
        changes["duration_seconds"] = duration
    return changes


def fail(doc: Doc, worker_id: str, reason: str, moment: datetime) -> Changes | None:
    """queued or converting → failed (with worker_id: only by the converter holding it)."""
    if doc.get("state") == FAILED:
        return None
    if doc.get("state") not in (QUEUED, CONVERTING):
        raise Refused(f"job is {state_name(doc.get('state') or 0)}")
    if worker_id and doc.get("state") == CONVERTING and doc.get("worker_id") not in ("", None, worker_id):
        raise Refused("another converter holds the job")
    return {"state": FAILED, "failure_reason": reason or "the conversion failed", "finished_at": moment}


def cancel(doc: Doc, moment: datetime) -> Changes | None:
    """queued or converting → cancelled; a finished job stays as it is."""
    if doc.get("state") not in (QUEUED, CONVERTING):
        return None
    return {"state": CANCELLED, "finished_at": moment, "failure_reason": ""}


def mark_notified(doc: Doc) -> Changes:
    if doc.get("notified"):
        raise Refused("job is already marked notified")
    return {"notified": True}


def requeue(doc: Doc, stale_before: datetime, live: bool) -> Changes | None:
    """A sweeper's claim on publishing a stuck job again (once per requeue period): a job
    queued since before ``stale_before``, or converting with an expired lease."""
    state = doc.get("state")
    stale = doc.get("updated_at") is None or doc["updated_at"] < stale_before
    if stale and (state == QUEUED or (state == CONVERTING and not live)):
        return {}  # the write itself (updated_at = now) is the claim
    return None


def expire(doc: Doc, moment: datetime) -> Changes | None:
    """The MP3 of a succeeded job reached its expiry: it is removed."""
    if doc.get("state") != SUCCEEDED or doc.get("expired"):
        return None
    if doc.get("expires_at") is None or doc["expires_at"] > moment:
        return None
    return {"expired": True}


def video_removed(doc: Doc) -> Changes | None:
    return None if doc.get("video_deleted") else {"video_deleted": True}


def legacy_transition(doc: Doc, expected: int, new: int, extra: Changes, moment: datetime) -> Changes:
    """The deprecated TransitionJob: a change from ``expected`` to ``new``."""
    if doc.get("state") != expected:
        raise Refused(f"job is {state_name(doc.get('state') or 0)}, not {state_name(expected)}")
    changes: Changes = {"state": new, **extra}
    if new in TERMINAL:
        changes["finished_at"] = moment
    if new == CONVERTING:
        changes["started_at"] = moment
    return changes
