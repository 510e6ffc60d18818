"""``GET /download``: an MP3, to its owner (Bearer token) or to the holder of the signed
link from the email, streamed from storage with single-range support."""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterator

import grpc
from flask import Blueprint, Response, current_app, request
from video2mp3.auth.v1 import auth_pb2
from video2mp3.storage.v1 import storage_pb2

from common.file_streams import split_download
from common.grpc_client import STREAM_TIMEOUT
from gateway.auth_guard import authenticate, unauthenticated
from gateway.clients import call_metadata, get_clients
from gateway.errors import ApiError, from_rpc_error
from gateway.views.shared import grpc_timeout

log = logging.getLogger("gateway.download")

bp = Blueprint("download", __name__)

_ZERO_SUFFIX = re.compile(r"\s*bytes\s*=\s*-\s*0+\s*", re.IGNORECASE)


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
    unsatisfiable = ApiError(
        416, "range_not_satisfiable", "the range is outside the file", {"Content-Range": f"bytes */{size}"}
    )
    if _ZERO_SUFFIX.fullmatch(request.headers["Range"]):
        # "bytes=-0": the last zero bytes — valid syntax, never satisfiable (RFC 9110 §14.1.1);
        # werkzeug reads it as malformed, which would send the whole file.
        raise unsatisfiable
    ranges = request.range
    if ranges is None or ranges.units != "bytes" or len(ranges.ranges) != 1:
        return None  # malformed or several ranges: the whole file (RFC 9110 allows ignoring)
    found = ranges.range_for_length(size)
    if found is None:
        raise unsatisfiable
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
        timeout=grpc_timeout(),
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
