"""``POST /upload``.

The multipart body is read block by block and its file field streamed to
StorageService.Upload as it arrives; the conversion options (text fields) may come before
or after it. Options before the file are checked before anything is stored; options after
it once the file is stored (a bad one removes it again). Then the job is created and
ConversionRequested published with confirms. If any step fails, what was created is
removed again and the client gets the error (400 naming a bad option, 503 when a backend
is down): no orphan video, no job that never runs.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Iterator

import grpc
from flask import Blueprint, Response, current_app, jsonify, request
from video2mp3.auth.v1 import auth_pb2
from video2mp3.storage.v1 import jobs_pb2, options_pb2, storage_pb2
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from common.amqp import PublishError
from common.events import RK_REQUESTED, conversion_requested
from common.file_streams import UploadStream
from common.grpc_client import STREAM_TIMEOUT
from gateway import options as upload_options
from gateway.auth_guard import current_user, login_required
from gateway.clients import Clients, call_metadata, get_clients
from gateway.errors import ApiError, from_rpc_error
from gateway.multipart import BodyEndedEarly, MultipartFile
from gateway.views.shared import base_url, grpc_timeout

log = logging.getLogger("gateway.upload")

bp = Blueprint("upload", __name__)

UPLOAD_CHUNK = 256 * 1024
# Room for the multipart framing around the file when the body size is checked.
MULTIPART_OVERHEAD = 64 * 1024


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


def _store_video(
    clients: Clients, user: auth_pb2.User, limit: int
) -> tuple[storage_pb2.FileInfo, MultipartFile]:
    """The stored video, and the reader of the body (at the end of the file part)."""
    boundary = _boundary()
    request.max_content_length = limit + MULTIPART_OVERHEAD
    try:
        reader = MultipartFile(request.stream, boundary, allowed=upload_options.FIELDS)
        filename = reader.open()
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    upload_options.parse(reader.fields)  # a bad option before the file: nothing is stored
    source = _Source(reader, limit)
    header = storage_pb2.UploadHeader(
        bucket=storage_pb2.BUCKET_VIDEOS,
        filename=filename,
        content_type=_part_content_type(filename),
        owner_id=user.id,
    )
    try:
        response = clients.storage.Upload(
            UploadStream(header, source), timeout=STREAM_TIMEOUT, metadata=call_metadata()
        )
    except grpc.RpcError as error:
        if source.error is not None:
            raise _client_side(source.error, limit) from None
        code = error.code() if isinstance(error, grpc.Call) else None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise _too_large(limit) from None
        raise from_rpc_error(error) from None
    return response.file, reader


def _options(
    clients: Clients, user: auth_pb2.User, video: storage_pb2.FileInfo, reader: MultipartFile, limit: int
) -> options_pb2.ConversionOptions:
    """The options of the whole form (fields after the file read now); a bad one removes
    the stored video before the client gets its 400."""
    try:
        return upload_options.parse(reader.finish())
    except BaseException as error:
        _rollback(clients, user, video.id, None)
        if isinstance(error, ApiError | HTTPException | OSError):
            raise _client_side(error, limit) from None
        raise


def _client_side(error: BaseException, limit: int) -> BaseException:
    """What to answer when reading the client's body stopped the upload."""
    if isinstance(error, RequestEntityTooLarge):
        return _too_large(limit)
    if isinstance(error, BodyEndedEarly | ClientDisconnected | OSError):
        # The client went away mid-body (werkzeug: fewer bytes than Content-Length; gunicorn:
        # a chunked body cut short). Its business, not a fault here: one warning line.
        log.warning("upload aborted by the client", extra={"error": type(error).__name__})
        return error if isinstance(error, ApiError) else BodyEndedEarly()
    if isinstance(error, ApiError | HTTPException):
        return error
    log.warning("upload body could not be read", extra={"error": repr(error)})
    return ApiError(400, "invalid_argument", "the request body could not be read")


def _part_content_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def _rollback(clients: Clients, user: auth_pb2.User, video_id: str, job_id: str | None) -> None:
    """Remove what this upload created; best effort, every step tried."""
    if job_id:
        try:
            clients.jobs.DeleteJob(
                jobs_pb2.DeleteJobRequest(job_id=job_id), timeout=grpc_timeout(), metadata=call_metadata()
            )
        except grpc.RpcError as error:
            log.error(
                "could not remove a job after a failed upload", extra={"job_id": job_id, "error": repr(error)}
            )
    try:
        clients.storage.Delete(
            storage_pb2.DeleteRequest(bucket=storage_pb2.BUCKET_VIDEOS, file_id=video_id, owner_id=user.id),
            timeout=grpc_timeout(),
            metadata=call_metadata(),
        )
    except grpc.RpcError as error:
        log.error(
            "could not remove a video after a failed upload",
            extra={"video_id": video_id, "error": repr(error)},
        )


@bp.post("/upload")
@login_required
def upload() -> tuple[Response, int]:
    clients = get_clients()
    user = current_user()
    limit = current_app.extensions["video2mp3.settings"].max_upload_bytes
    video, reader = _store_video(clients, user, limit)
    options = _options(clients, user, video, reader, limit)
    job_id: str | None = None
    try:
        job = clients.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                owner_id=user.id,
                owner_email=user.email,
                video_id=video.id,
                filename=video.filename,
                options=options,
            ),
            timeout=grpc_timeout(),
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
        "options": upload_options.to_json(job.options),
        "status_url": f"{base_url()}/jobs/{job.id}",
    }
    response = jsonify(body)
    response.headers["Location"] = body["status_url"]
    return response, 202
