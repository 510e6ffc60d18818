"""The caller's conversion jobs: ``GET /jobs`` (paged), ``GET /jobs/<id>``,
``POST /jobs/<id>/cancel``, ``DELETE /jobs/<id>``. Another user's job is 404."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request
from video2mp3.storage.v1 import jobs_pb2

from gateway.auth_guard import current_user, login_required
from gateway.clients import call_metadata, get_clients
from gateway.errors import ApiError
from gateway.options import source_json, to_json
from gateway.views.shared import base_url, grpc_timeout, iso

bp = Blueprint("jobs", __name__)

DEFAULT_LIST = 50
MAX_LIST = 100
STATES = {
    jobs_pb2.JOB_STATE_QUEUED: "queued",
    jobs_pb2.JOB_STATE_CONVERTING: "converting",
    jobs_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    jobs_pb2.JOB_STATE_FAILED: "failed",
    jobs_pb2.JOB_STATE_CANCELLED: "cancelled",
}
FINAL = frozenset({"succeeded", "failed", "cancelled"})


def state_name(state: int) -> str:
    return STATES.get(state, "unknown")  # type: ignore[call-overload]


def job_json(job: jobs_pb2.Job) -> dict[str, Any]:
    state = state_name(job.state)
    body: dict[str, Any] = {
        "id": job.id,
        "state": state,
        "filename": job.filename,
        "video_id": job.video_id,
        "mp3_id": job.mp3_id or None,
        "failure_reason": job.failure_reason or None,
        "attempts": job.attempts,
        "progress": round(job.progress, 4),
        "eta_seconds": round(job.eta_seconds, 1) if state == "converting" and job.eta_seconds else None,
        "queue_position": job.queue_position or None,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "expires_at": iso(job.expires_at),
        "expired": job.expired,
        "status_url": f"{base_url()}/jobs/{job.id}",
        "events_url": f"{base_url()}/jobs/{job.id}/events",
    }
    body["options"] = to_json(job.options)
    if job.HasField("source") and job.source.container:
        body["source"] = source_json(job.source)
    if job.duration_seconds:
        body["duration_seconds"] = round(job.duration_seconds, 3)
    if state == "succeeded" and job.mp3_id and not job.expired:
        body["download_url"] = f"{base_url()}/download?fid={job.mp3_id}"
    return body


def read_job(job_id: str, owner_id: str) -> jobs_pb2.Job:
    return (
        get_clients()
        .jobs.GetJob(
            jobs_pb2.GetJobRequest(job_id=job_id, owner_id=owner_id),
            timeout=grpc_timeout(),
            metadata=call_metadata(),
        )
        .job
    )


@bp.get("/jobs")
@login_required
def list_jobs() -> Response:
    raw = request.args.get("limit", "")
    if raw and not raw.isdigit():
        raise ApiError(400, "invalid_argument", "limit must be a number from 1 to 100")
    limit = max(1, min(int(raw) if raw else DEFAULT_LIST, MAX_LIST))
    token = request.args.get("page_token", "")
    response = get_clients().jobs.ListJobs(
        jobs_pb2.ListJobsRequest(owner_id=current_user().id, limit=limit, page_token=token),
        timeout=grpc_timeout(),
        metadata=call_metadata(),
    )
    body: dict[str, Any] = {
        "jobs": [job_json(job) for job in response.jobs],
        "next_page_token": None,
        "next": None,
    }
    if response.next_page_token:
        body["next_page_token"] = response.next_page_token
        query = urlencode({"limit": limit, "page_token": response.next_page_token})
        body["next"] = f"{base_url()}/jobs?{query}"
    return jsonify(body)


@bp.get("/jobs/<job_id>")
@login_required
def get_job(job_id: str) -> Response:
    return jsonify(job_json(read_job(job_id, current_user().id)))


@bp.post("/jobs/<job_id>/cancel")
@login_required
def cancel_job(job_id: str) -> Response:
    response = get_clients().jobs.CancelJob(
        jobs_pb2.CancelJobRequest(job_id=job_id, owner_id=current_user().id),
        timeout=grpc_timeout(),
        metadata=call_metadata(),
    )
    if not response.cancelled:
        raise ApiError(409, "already_finished", f"the job already {state_name(response.job.state)}")
    return jsonify(job_json(response.job))


@bp.delete("/jobs/<job_id>")
@login_required
def delete_job(job_id: str) -> tuple[str, int]:
    get_clients().jobs.RemoveJob(
        jobs_pb2.RemoveJobRequest(job_id=job_id, owner_id=current_user().id),
        timeout=grpc_timeout(),
        metadata=call_metadata(),
    )
    return "", 204
