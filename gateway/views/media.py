"""``POST /upload``, ``GET /jobs``, ``GET /jobs/<id>`` and ``GET /download``.

Upload: the multipart body is read block by block and its file field streamed to
StorageService.Upload as it arrives; then the job is created and ConversionRequested
published with confirms. If any step fails, what was created is removed again and the
client gets the error (503 when a backend is down): no orphan video, no job that never runs.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
from flask import Blueprint, Response, current_app, jsonify, request
from google.protobuf.timestamp_pb2 import Timestamp
from video2mp3.auth.v1 import auth_pb2
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, storage_pb2
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from common.amqp import RK_REQUESTED, PublishError
from common.grpc_client import STREAM_TIMEOUT
from gateway.clients import Clients, call_metadata, get_clients
from gateway.errors import ApiError, from_rpc_error
from gateway.identity import authenticate, current_user, login_required, unauthenticated
from gateway.multipart import MultipartFile
from storage.client import split_download, upload_requests

log = logging.getLogger("gateway.media")

bp = Blueprint("media", __name__)

UPLOAD_CHUNK = 256 * 1024
# Room for the multipart framing around the file when the body size is checked.
MULTIPART_OVERHEAD = 64 * 1024
MAX_LIST = 100
STATES = {
    jobs_pb2.JOB_STATE_QUEUED: "queued",
    jobs_pb2.JOB_STATE_CONVERTING: "converting",
    jobs_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    jobs_pb2.JOB_STATE_FAILED: "failed",
}


def _timeout() -> float:
    return float(current_app.config["GRPC_TIMEOUT_SECONDS"])


def _iso(ts: Timestamp) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _base_url() -> str:
    return str(current_app.config["PUBLIC_BASE_URL"])


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
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "status_url": f"{_base_url()}/jobs/{job.id}",
    }
    if job.duration_seconds:
        body["duration_seconds"] = round(job.duration_seconds, 3)
    if state == "succeeded" and job.mp3_id:
        body["download_url"] = f"{_base_url()}/download?fid={job.mp3_id}"
    return body


# ------------------------------------------------------------------------------------ upload


class _Source:
    """The file's chunks for the gRPC request stream (consumed on gRPC's own thread).
    Remembers why it stopped early, since gRPC only reports the call as cancelled."""

    def __init__(self, reader: MultipartFile, limit: int) -> None:
        self.reader = reader
        self.limit = limit
        self.size = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.reader.chunks(UPLOAD_CHUNK):
                self.size += len(chunk)
                if self.size > self.limit:
                    raise _too_large(self.limit)
                yield chunk
        except BaseException as error:
            self.error = error
            raise
        if self.size == 0:
            self.error = ApiError(400, "invalid_argument", "the file is empty")
            raise self.error


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the file is larger than the limit of {limit} bytes")


def _boundary() -> bytes:
    if request.mimetype != "multipart/form-data":
        raise ApiError(400, "invalid_argument", 'expected multipart/form-data (curl -F "file=@video.mp4")')
    boundary = request.mimetype_params.get("boundary", "")
    if not 0 < len(boundary) <= 200:
        raise ApiError(400, "invalid_argument", "multipart/form-data without a valid boundary")
    return boundary.encode("latin-1")


def _store_video(clients: Clients, user: auth_pb2.User, limit: int) -> storage_pb2.FileInfo:
    boundary = _boundary()
    request.max_content_length = limit + MULTIPART_OVERHEAD
    try:
        reader = MultipartFile(request.stream, boundary)
        filename = reader.open()
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    source = _Source(reader, limit)
    header = storage_pb2.UploadHeader(
        bucket=storage_pb2.BUCKET_VIDEOS,
        filename=filename,
        content_type=_part_content_type(filename),
        owner_id=user.id,
    )
    try:
        response = clients.storage.Upload(
            upload_requests(header, source), timeout=STREAM_TIMEOUT, metadata=call_metadata()
        )
    except grpc.RpcError as error:
        if source.error is not None:
            raise _client_side(source.error, limit) from None
        code = error.code() if isinstance(error, grpc.Call) else None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise _too_large(limit) from None
        raise from_rpc_error(error) from None
    return response.file


def _client_side(error: BaseException, limit: int) -> BaseException:
    """What to answer when reading the client's body stopped the upload."""
    if isinstance(error, RequestEntityTooLarge):
        return _too_large(limit)
    if isinstance(error, ApiError | HTTPException):
        return error
    log.warning("upload body could not be read", extra={"error": repr(error)})
    return ApiError(400, "invalid_argument", "the request body could not be read")


def _part_content_type(filename: str) -> str:
    import mimetypes

    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def _rollback(clients: Clients, user: auth_pb2.User, video_id: str, job_id: str | None) -> None:
    """Remove what this upload created; best effort, every step tried."""
    if job_id:
        try:
            clients.jobs.DeleteJob(
                jobs_pb2.DeleteJobRequest(job_id=job_id), timeout=_timeout(), metadata=call_metadata()
            )
        except grpc.RpcError as error:
            log.error(
                "could not remove a job after a failed upload", extra={"job_id": job_id, "error": repr(error)}
            )
    try:
        clients.storage.Delete(
            storage_pb2.DeleteRequest(bucket=storage_pb2.BUCKET_VIDEOS, file_id=video_id, owner_id=user.id),
            timeout=_timeout(),
            metadata=call_metadata(),
        )
    except grpc.RpcError as error:
        log.error(
            "could not remove a video after a failed upload",
            extra={"video_id": video_id, "error": repr(error)},
        )


def conversion_requested(job: jobs_pb2.Job) -> events_pb2.ConversionRequested:
    event = events_pb2.ConversionRequested(
        job_id=job.id,
        video_id=job.video_id,
        owner_id=job.owner_id,
        owner_email=job.owner_email,
        filename=job.filename,
    )
    event.requested_at.FromDatetime(datetime.now(UTC))
    return event


@bp.post("/upload")
@login_required
def upload() -> tuple[Response, int]:
    clients = get_clients()
    user = current_user()
    limit = current_app.extensions["video2mp3.settings"].max_upload_bytes
    video = _store_video(clients, user, limit)
    job_id: str | None = None
    try:
        job = clients.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                owner_id=user.id, owner_email=user.email, video_id=video.id, filename=video.filename
            ),
            timeout=_timeout(),
            metadata=call_metadata(),
        ).job
        job_id = job.id
        clients.publisher.publish(RK_REQUESTED, conversion_requested(job), correlation_id=job.id)
    except (grpc.RpcError, PublishError) as error:
        _rollback(clients, user, video.id, job_id)
        if isinstance(error, PublishError):
            log.warning(
                "could not publish ConversionRequested", extra={"job_id": job_id, "error": str(error)}
            )
            raise ApiError(
                503, "unavailable", "service temporarily unavailable; try again later", {"Retry-After": "5"}
            ) from None
        raise from_rpc_error(error) from None
    except BaseException:
        _rollback(clients, user, video.id, job_id)
        raise
    log.info("upload queued", extra={"job_id": job.id, "video_id": video.id, "size": video.size})
    body = {
        "job_id": job.id,
        "video_id": video.id,
        "state": "queued",
        "size": video.size,
        "sha256": video.sha256,
        "filename": video.filename,
        "status_url": f"{_base_url()}/jobs/{job.id}",
    }
    response = jsonify(body)
    response.headers["Location"] = body["status_url"]
    return response, 202


# -------------------------------------------------------------------------------------- jobs


@bp.get("/jobs")
@login_required
def list_jobs() -> Response:
    raw = request.args.get("limit", "")
    limit = int(raw) if raw.isdigit() else 50
    response = get_clients().jobs.ListJobs(
        jobs_pb2.ListJobsRequest(owner_id=current_user().id, limit=max(1, min(limit, MAX_LIST))),
        timeout=_timeout(),
        metadata=call_metadata(),
    )
    return jsonify({"jobs": [job_json(job) for job in response.jobs]})


@bp.get("/jobs/<job_id>")
@login_required
def get_job(job_id: str) -> Response:
    response = get_clients().jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=job_id, owner_id=current_user().id),
        timeout=_timeout(),
        metadata=call_metadata(),
    )
    return jsonify(job_json(response.job))


# ---------------------------------------------------------------------------------- download


def _download_user(file_id: str) -> auth_pb2.User:
    """The owner's Bearer token, or ``token=`` from the emailed link (for this file only)."""
    token = request.args.get("token")
    if token is None:
        return authenticate()
    if not token or len(token) > 4096:
        raise unauthenticated("invalid download link", token_presented=True)
    try:
        response = get_clients().auth.ValidateDownloadToken(
            auth_pb2.ValidateDownloadTokenRequest(download_token=token, file_id=file_id),
            timeout=current_app.config["AUTH_TIMEOUT_SECONDS"],
            metadata=call_metadata(),
        )
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise unauthenticated("the download link is invalid or expired", token_presented=True) from None
        raise from_rpc_error(error) from None
    if response.file_id and response.file_id != file_id:
        raise unauthenticated("the download link is for another file", token_presented=True)
    return response.user


def content_disposition(filename: str) -> str:
    """``attachment`` with the original name as .mp3 (RFC 6266: ASCII fallback + filename*)."""
    stem = filename.rsplit(".", 1)[0] if "." in filename.lstrip(".") else filename
    name = (stem or "audio") + ".mp3"
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;%' else "_" for ch in name)
    quoted = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"


def _byte_range(size: int, etag: str) -> tuple[int, int] | None:
    """(start, stop) of a satisfiable single Range, None for the whole file; 416 otherwise."""
    if request.headers.get("Range") is None:
        return None
    if_range = request.if_range
    if (if_range.etag is not None and if_range.etag != etag) or if_range.date is not None:
        return None
    ranges = request.range
    if ranges is None or ranges.units != "bytes" or len(ranges.ranges) != 1:
        return None  # malformed or several ranges: the whole file (RFC 9110 allows ignoring)
    found = ranges.range_for_length(size)
    if found is None:
        raise ApiError(
            416,
            "range_not_satisfiable",
            "the range is outside the file",
            {"Content-Range": f"bytes */{size}"},
        )
    return found


@bp.get("/download")
def download() -> Response:
    file_id = request.args.get("fid", "")
    if not file_id:
        raise ApiError(400, "invalid_argument", "the fid parameter is required")
    user = _download_user(file_id)
    clients = get_clients()
    stat = clients.storage.Stat(
        storage_pb2.StatRequest(bucket=storage_pb2.BUCKET_MP3S, file_id=file_id, owner_id=user.id),
        timeout=_timeout(),
        metadata=call_metadata(),
    ).file
    etag = stat.sha256 or stat.id
    byte_range = _byte_range(stat.size, etag)
    start, stop = byte_range if byte_range is not None else (0, stat.size)
    length = stop - start
    if length == 0:
        return _file_response(iter(()), stat, etag, byte_range, start, stop)
    responses = clients.storage.Download(
        storage_pb2.DownloadRequest(
            bucket=storage_pb2.BUCKET_MP3S, file_id=file_id, owner_id=user.id, offset=start, length=length
        ),
        timeout=STREAM_TIMEOUT,
        metadata=call_metadata(),
    )
    _, chunks = split_download(responses)  # raises the call's error before any byte is sent

    def body() -> Iterator[bytes]:
        try:
            yield from chunks
        except grpc.RpcError as error:
            # Headers are gone already: end the body early; the client sees a short read.
            log.warning("download stream broke", extra={"file_id": file_id, "error": repr(error)})

    response = _file_response(body(), stat, etag, byte_range, start, stop)
    # Also when the body is never read (HEAD, a client gone before the first byte).
    response.call_on_close(responses.cancel)
    return response


def _file_response(
    body: Iterator[bytes],
    stat: storage_pb2.FileInfo,
    etag: str,
    byte_range: tuple[int, int] | None,
    start: int,
    stop: int,
) -> Response:
    response = Response(body, status=206 if byte_range is not None else 200, mimetype="audio/mpeg")
    response.direct_passthrough = True
    response.headers["Content-Length"] = str(stop - start)
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Disposition"] = content_disposition(stat.filename)
    response.headers["Cache-Control"] = "private, no-store"
    response.set_etag(etag)
    if byte_range is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{stat.size}"
    return response
