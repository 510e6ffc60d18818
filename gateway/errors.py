"""Errors as JSON, in one place: gRPC status → HTTP status, Flask's own errors, and the
catch-all. A client never sees an HTML page or a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc
from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("gateway.errors")

# gRPC status → (HTTP status, error slug). Messages of 4xx answers come from our own
# services, written for clients; 5xx answers get a generic message.
GRPC_TO_HTTP: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_argument"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "out_of_range"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already_exists"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "failed_precondition"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "too_many_requests"),
    grpc.StatusCode.CANCELLED: (503, "unavailable"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "unavailable"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented"),
}
GENERIC_5XX = {503: "service temporarily unavailable; try again later", 501: "not implemented"}

AUTH_CHALLENGE = 'Bearer realm="video2mp3"'


class ApiError(Exception):
    """An error answer: raise it from a view (or map a gRPC error into one)."""

    def __init__(
        self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})


def from_rpc_error(error: grpc.RpcError) -> ApiError:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    status, slug = GRPC_TO_HTTP.get(code, (500, "internal"))
    if status >= 500:
        message = GENERIC_5XX.get(status, "internal error")
        log.warning("backend call failed", extra={"grpc_code": code.name, "http_status": status})
    else:
        details = error.details() if isinstance(error, grpc.Call) else None
        message = (details or slug.replace("_", " "))[:500]
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = AUTH_CHALLENGE
    if status in (429, 503):
        headers["Retry-After"] = _retry_after(error) or ("30" if status == 429 else "5")
    return ApiError(status, slug, message, headers)


def _retry_after(error: grpc.RpcError) -> str | None:
    """The backend's own ``retry-after`` (whole seconds) from the trailing metadata, if any."""
    if not isinstance(error, grpc.Call):
        return None
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after" and isinstance(value, str) and value.isdigit() and len(value) <= 6:
            return value
    return None


def json_error(status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    body: dict[str, object] = {"error": error, "message": message}
    request_id = g.get("request_id")
    if request_id:
        body["request_id"] = request_id
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return json_error(error.status, error.error, error.message, error.headers)

    @app.errorhandler(grpc.RpcError)
    def rpc_error(error: grpc.RpcError) -> Response:
        return api_error(from_rpc_error(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        slug = (error.name or "error").lower().replace(" ", "_")
        headers = {}
        if status == 405 and error.get_response().headers.get("Allow"):
            headers["Allow"] = error.get_response().headers["Allow"]
        message = error.description if status < 500 else "internal error"
        return json_error(status, slug, str(message), headers)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.error("unhandled error", exc_info=error)
        return json_error(500, "internal", "internal error")
