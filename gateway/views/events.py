"""Live job updates as Server-Sent Events: ``GET /jobs/<id>/events`` (one job; ends when
the job ends) and ``GET /events`` (every job of the caller; open until the client leaves).

Events (``event:`` name, JSON ``data:``):

* ``job`` — the whole job as ``GET /jobs/<id>`` shows it: when a stream opens, whenever a
  job reaches a final state, and after a gap (a missed change);
* ``state`` — ``{id, state, version, progress}`` for each change of state, in order;
* ``progress`` — ``{id, progress, eta_seconds}`` while converting (at least every 2 s);
* ``removed`` — ``{id}``: the job was deleted.

A comment line every ``SSE_HEARTBEAT_SECONDS`` (15) keeps proxies from closing quiet
streams. Changes come from the process's one JobChanged consumer (gateway/events.py), not
from the database: a per-job stream reads its job only when it opens, when a final state
or a gap shows up, and on each heartbeat (so even a lost event cannot hide a final state).
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Iterator
from typing import Any

import grpc
from flask import Blueprint, Response, current_app, stream_with_context
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2

from common.grpc_client import describe, status_code
from gateway.auth_guard import current_user, login_required
from gateway.clients import call_metadata, get_clients
from gateway.events import RESYNC, EventHub, Subscription
from gateway.views.jobs import FINAL, job_json, read_job, state_name
from gateway.views.shared import grpc_timeout

log = logging.getLogger("gateway.events")
bp = Blueprint("events", __name__)

HUB = "video2mp3.events"
CONVERTING = jobs_pb2.JOB_STATE_CONVERTING


def get_hub() -> EventHub:
    hub: EventHub = current_app.extensions[HUB]
    return hub


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(body: Iterator[str]) -> Response:
    response = Response(stream_with_context(body), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx-style proxies: do not buffer
    return response


def _next(subscription: Subscription, heartbeat: float) -> events_pb2.JobChanged | None:
    """The next event, or None after a quiet heartbeat period."""
    try:
        return subscription.events.get(timeout=heartbeat)
    except queue.Empty:
        return None


class _Later(Exception):
    """Reading the job failed for now; the stream carries on and reads it again later."""


def _read(job_id: str, owner: str) -> jobs_pb2.Job | None:
    """The job now; None when it is gone. A backend hiccup raises _Later (try next time)."""
    try:
        return read_job(job_id, owner)
    except grpc.RpcError as error:
        if status_code(error) == grpc.StatusCode.NOT_FOUND:
            return None
        log.warning("event stream could not read its job", extra={"job_id": job_id, "error": describe(error)})
        raise _Later from error


def _final(job_id: str, owner: str) -> str:
    """The ``job`` event of a job that ended (``removed`` when it is gone; nothing more when
    it cannot be read now — its ``state`` event was sent)."""
    try:
        job = _read(job_id, owner)
    except _Later:
        return ""
    return sse("job", job_json(job)) if job is not None else sse("removed", {"id": job_id})


def _progress(event: events_pb2.JobChanged) -> dict[str, Any]:
    return {
        "id": event.job_id,
        "progress": round(event.progress, 4),
        "eta_seconds": round(event.eta_seconds, 1) or None,
    }


@bp.get("/jobs/<job_id>/events")
@login_required
def job_events(job_id: str) -> Response:
    owner = current_user().id
    job = read_job(job_id, owner)  # 404 (or 400) before the stream starts
    hub = get_hub()
    heartbeat = current_app.extensions["video2mp3.settings"].sse_heartbeat_seconds
    subscription = hub.subscribe(owner, job_id)

    def generate() -> Iterator[str]:
        nonlocal job
        try:
            yield "retry: 2000\n\n"
            yield sse("job", job_json(job))
            version, state = job.version, state_name(job.state)
            while state not in FINAL:
                event = _next(subscription, heartbeat)
                if event is None:
                    yield ": heartbeat\n\n"
                if event is None or event is RESYNC or (event.version and event.version > version + 1):
                    try:
                        current = _read(job_id, owner)
                    except _Later:
                        continue
                    if current is None:
                        yield sse("removed", {"id": job_id})
                        return
                    if current.version > version:
                        version, state = current.version, state_name(current.state)
                        yield sse("job", job_json(current))
                    continue
                if event.removed:
                    yield sse("removed", {"id": job_id})
                    return
                if not event.version:
                    if event.state == CONVERTING and state == "converting":
                        yield sse("progress", _progress(event))
                    continue
                if event.version <= version:
                    continue  # older than what was sent
                version = event.version
                if state_name(event.state) != state:
                    state = state_name(event.state)
                    yield sse(
                        "state",
                        {"id": job_id, "state": state, "version": version, "progress": event.progress},
                    )
                if state in FINAL:
                    yield _final(job_id, owner)
        finally:
            hub.unsubscribe(subscription)

    return _stream(generate())


@bp.get("/events")
@login_required
def all_events() -> Response:
    owner = current_user().id
    hub = get_hub()
    heartbeat = current_app.extensions["video2mp3.settings"].sse_heartbeat_seconds
    subscription = hub.subscribe(owner)

    def recent() -> list[jobs_pb2.Job]:
        try:
            return list(
                get_clients()
                .jobs.ListJobs(
                    jobs_pb2.ListJobsRequest(owner_id=owner, limit=50),
                    timeout=grpc_timeout(),
                    metadata=call_metadata(),
                )
                .jobs
            )
        except grpc.RpcError as error:
            log.warning("event stream could not list jobs", extra={"error": describe(error)})
            return []

    def generate() -> Iterator[str]:
        known: dict[str, tuple[int, str]] = {}  # job id → (version, state) last sent
        try:
            yield "retry: 2000\n\n"
            while True:
                event = _next(subscription, heartbeat)
                if event is None:
                    yield ": heartbeat\n\n"
                    continue
                if event is RESYNC:
                    for job in recent():
                        if job.version > known.get(job.id, (-1, ""))[0]:
                            known[job.id] = (job.version, state_name(job.state))
                            yield sse("job", job_json(job))
                    continue
                if event.removed:
                    known.pop(event.job_id, None)
                    yield sse("removed", {"id": event.job_id})
                    continue
                if not event.version:
                    if event.state == CONVERTING:
                        yield sse("progress", _progress(event))
                    continue
                version, state = known.get(event.job_id, (-1, ""))
                if event.version <= version:
                    continue
                new_state = state_name(event.state)
                known[event.job_id] = (event.version, new_state)
                if new_state != state:
                    data = {
                        "id": event.job_id,
                        "state": new_state,
                        "version": event.version,
                        "progress": event.progress,
                    }
                    yield sse("state", data)
                    if new_state in FINAL:
                        yield _final(event.job_id, owner)
        finally:
            hub.unsubscribe(subscription)

    return _stream(generate())
