"""Who is calling: the one place that reads ``Authorization: Bearer …`` and asks AuthService.

Use ``@login_required`` on a view (the user is then ``current_user()``), or call
``authenticate()`` directly. Every malformed header is a 401, never a 500.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import grpc
from flask import current_app, g, request
from video2mp3.auth.v1 import auth_pb2

from gateway.clients import call_metadata, get_clients
from gateway.errors import AUTH_CHALLENGE, ApiError, from_rpc_error

MAX_AUTHORIZATION_CHARS = 4096
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token; the scheme is case-insensitive.
# We accept exactly one space and nothing after the token.
_BEARER = re.compile(r"(?i:bearer) ([A-Za-z0-9\-._~+/]+=*)")

P = ParamSpec("P")
R = TypeVar("R")


def unauthenticated(message: str, token_presented: bool = False) -> ApiError:
    challenge = AUTH_CHALLENGE + (', error="invalid_token"' if token_presented else "")
    return ApiError(401, "unauthenticated", message, {"WWW-Authenticate": challenge})


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization`` header value, or ApiError(401)."""
    if not header:
        raise unauthenticated("missing Authorization header (expected: Bearer <token>)")
    if len(header) > MAX_AUTHORIZATION_CHARS:
        raise unauthenticated("invalid Authorization header", token_presented=True)
    match = _BEARER.fullmatch(header)
    if match is None:
        raise unauthenticated("invalid Authorization header (expected: Bearer <token>)", token_presented=True)
    return match.group(1)


def authenticate() -> auth_pb2.User:
    """Validate the request's bearer token through AuthService (with a deadline)."""
    cached = g.get("user")
    if cached is not None:
        return cached
    token = bearer_token(request.headers.get("Authorization"))
    try:
        response = get_clients().auth.ValidateToken(
            auth_pb2.ValidateTokenRequest(access_token=token),
            timeout=current_app.config["AUTH_TIMEOUT_SECONDS"],
            metadata=call_metadata(),
        )
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise unauthenticated("invalid or expired token", token_presented=True) from None
        raise from_rpc_error(error) from None
    g.user = response.user
    return response.user


def current_user() -> auth_pb2.User:
    user = g.get("user")
    if user is None:
        raise RuntimeError("current_user() outside a @login_required view")
    return user


def login_required(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        authenticate()
        return view(*args, **kwargs)

    return wrapped


def role_name(role: auth_pb2.Role.ValueType) -> str:
    return "admin" if role == auth_pb2.ROLE_ADMIN else "user"
