"""``GET /jobs`` and ``GET /jobs/<id>``: the caller's conversion jobs as JSON."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from video2mp3.storage.v1 import jobs_pb2

from gateway.auth_guard import current_user, login_required
from gateway.clients import call_metadata, get_clients
from gateway.options import source_json, to_json
from gateway.views.shared import base_url, grpc_timeout, iso

bp = Blueprint("jobs", __name__)

MAX_LIST = 100
STATES = {
    jobs_pb2.JOB_STATE_QUEUED: "queued",
    jobs_pb2.JOB_STATE_CONVERTING: "converting",
    jobs_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    jobs_pb2.JOB_STATE_FAILED: "failed",
}


def job_json(job: jobs_pb2.Job) -> dict[str, Any]:
    state = STATES.get(job.state, "unknown")
    body: dict[str, Any] = {
        "id": job.id,
        "state": state,
        "filename": job.filename,
        "video_id": job.video_id,
        "mp3_id": job.mp3_id or None,
        "failure_reason": job.failure_reason or None,
        "attempts": job.attempts,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "status_url": f"{base_url()}/jobs/{job.id}",
    }
    body["options"] = to_json(job.options)
    if job.HasField("source") and job.source.container:
        body["source"] = source_json(job.source)
    if job.duration_seconds:
        body["duration_seconds"] = round(job.duration_seconds, 3)
    if state == "succeeded" and job.mp3_id:
        body["download_url"] = f"{base_url()}/download?fid={job.mp3_id}"
    return body


@bp.get("/jobs")
@login_required
def list_jobs() -> Response:
    raw = request.args.get("limit", "")
    limit = int(raw) if raw.isdigit() else 50
    response = get_clients().jobs.ListJobs(
        jobs_pb2.ListJobsRequest(owner_id=current_user().id, limit=max(1, min(limit, MAX_LIST))),
        timeout=grpc_timeout(),
        metadata=call_metadata(),
    )
    return jsonify({"jobs": [job_json(job) for job in response.jobs]})


@bp.get("/jobs/<job_id>")
@login_required
def get_job(job_id: str) -> Response:
    response = get_clients().jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=job_id, owner_id=current_user().id),
        timeout=grpc_timeout(),
        metadata=call_metadata(),
    )
    return jsonify(job_json(response.job))
