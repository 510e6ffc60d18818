"""``POST /register``, ``POST /login`` and ``GET /me``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from video2mp3.auth.v1 import auth_pb2

from gateway import jsonio
from gateway.auth_guard import current_user, login_required, role_name
from gateway.clients import call_metadata, get_clients
from gateway.errors import ApiError

bp = Blueprint("identity", __name__)

# Credentials are small; anything bigger is refused before it is read.
MAX_BODY_BYTES = 16 * 1024
# Bounds checked here too (AuthService checks them again), so junk never travels further.
MAX_EMAIL_CHARS = 254
MAX_PASSWORD_CHARS = 1024


@bp.before_request
def limit_body() -> None:
    request.max_content_length = MAX_BODY_BYTES


def _user_json(user: auth_pb2.User) -> dict[str, str]:
    return {"id": user.id, "email": user.email, "role": role_name(user.role)}


def _json_credentials() -> tuple[str, str]:
    try:
        body: Any = jsonio.loads(request.get_data(cache=True))
    except ValueError as error:  # not JSON, not UTF-8, a lone surrogate, nested too deep
        message = str(error) if isinstance(error, jsonio.JSONBodyError) else "the body is not valid JSON"
        raise ApiError(400, "invalid_argument", message) from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_argument", 'the body must be a JSON object {"email": …, "password": …}')
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise ApiError(400, "invalid_argument", "email and password must be strings")
    return email, password


def _check_sizes(email: str, password: str) -> None:
    if len(email) > MAX_EMAIL_CHARS:
        raise ApiError(400, "invalid_argument", f"email must be at most {MAX_EMAIL_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ApiError(400, "invalid_argument", f"password must be at most {MAX_PASSWORD_CHARS} characters")


@bp.post("/register")
def register() -> tuple[Response, int]:
    email, password = _json_credentials()
    _check_sizes(email, password)
    response = get_clients().auth.Register(
        auth_pb2.RegisterRequest(email=email, password=password, client_address=request.remote_addr or ""),
        timeout=current_app.config["GRPC_TIMEOUT_SECONDS"],
        metadata=call_metadata(),
    )
    return jsonify(_user_json(response.user)), 201


def _login_credentials() -> tuple[str, str]:
    header = request.headers.get("Authorization")
    if header:
        auth = request.authorization
        if auth is None or auth.type != "basic" or auth.username is None or auth.password is None:
            raise ApiError(
                401,
                "unauthenticated",
                "invalid Authorization header (expected HTTP Basic email:password)",
                {"WWW-Authenticate": 'Basic realm="video2mp3", charset="UTF-8"'},
            )
        return auth.username, auth.password
    if request.content_length or request.is_json:
        return _json_credentials()
    raise ApiError(
        401,
        "unauthenticated",
        "credentials required: HTTP Basic (-u email:password) or JSON {email, password}",
        {"WWW-Authenticate": 'Basic realm="video2mp3", charset="UTF-8"'},
    )


@bp.post("/login")
def login() -> Response:
    email, password = _login_credentials()
    _check_sizes(email, password)
    response = get_clients().auth.Login(
        auth_pb2.LoginRequest(email=email, password=password, client_address=request.remote_addr or ""),
        timeout=current_app.config["GRPC_TIMEOUT_SECONDS"],
        metadata=call_metadata(),
    )
    result = jsonify(
        {
            "access_token": response.access_token,
            "token_type": response.token_type,
            "expires_in": response.expires_in,
        }
    )
    result.headers["Cache-Control"] = "no-store"
    return result


@bp.get("/me")
@login_required
def me() -> Response:
    return jsonify(_user_json(current_user()))
