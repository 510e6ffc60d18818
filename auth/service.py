"""The AuthService servicer: request validation, errors as gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc

from auth.credentials import (
    MAX_EMAIL_CHARS,
    MAX_PASSWORD_CHARS,
    CredentialError,
    HashBusy,
    Passwords,
    email_key,
    normalize_email,
    normalize_password,
    validate_email,
    validate_new_password,
)
from auth.db import CONNECTION_ERRORS, Database
from auth.settings import Settings
from auth.throttle import LoginPolicy, LoginThrottle, RegistrationLimit, Throttled
from auth.tokens import MAX_TOKEN_CHARS, TokenError, Tokens
from auth.users import ROLE_ADMIN, DuplicateEmail, UserRow, Users

log = logging.getLogger("auth")

MAX_FILE_ID_CHARS = 128
MAX_ADDRESS_CHARS = 128
BAD_CREDENTIALS = "invalid email or password"
# Why a login may end before the password was checked: not the caller's failure.
NOT_CHECKED: tuple[type[BaseException], ...] = (HashBusy, *CONNECTION_ERRORS)
BAD_TOKEN = "invalid or expired token"  # noqa: S105 - a message, not a secret

R = TypeVar("R")


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort always raises


def _database_errors(method: Callable[..., R]) -> Callable[..., R]:
    """A database that cannot be reached is UNAVAILABLE (retryable), not INTERNAL; full
    hashing slots and throttling are RESOURCE_EXHAUSTED with a ``retry-after`` (seconds) in
    the trailing metadata."""

    @functools.wraps(method)
    def call(self: AuthServicer, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except CONNECTION_ERRORS as error:
            log.warning("user database unavailable", extra={"error": repr(error)})
            _abort(context, grpc.StatusCode.UNAVAILABLE, "user database unavailable")
        except HashBusy:
            log.warning("password hashing busy; request refused", extra={"method": method.__name__})
            _resource_exhausted(context, 1, "the service is busy; try again shortly")
        except Throttled as error:
            log.warning("throttled", extra={"method": method.__name__, "retry_after_s": error.retry_after})
            message = {
                "Register": "too many sign-ups from this address; try again later",
            }.get(method.__name__, "too many failed logins; try again later")
            _resource_exhausted(context, error.retry_after, message)

    return call


def _resource_exhausted(context: grpc.ServicerContext, retry_after: int, message: str) -> NoReturn:
    context.set_trailing_metadata((("retry-after", str(retry_after)),))
    _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def _role(role: str) -> auth_pb2.Role.ValueType:
    return auth_pb2.ROLE_ADMIN if role == ROLE_ADMIN else auth_pb2.ROLE_USER


def _user(row: UserRow) -> auth_pb2.User:
    return auth_pb2.User(id=str(row.id), email=row.email, role=_role(row.role))


def _parse_user_id(raw: str) -> int | None:
    if not raw or len(raw) > 20 or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if 0 < value < 2**63 else None


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.users = Users(db)
        self.passwords = Passwords(settings)
        self.tokens = Tokens(settings)
        self.throttle = LoginThrottle(
            db,
            LoginPolicy(
                window_seconds=settings.login_window_seconds,
                free_failures=settings.login_max_failures_per_email,
                backoff_seconds=settings.login_backoff_seconds,
                backoff_max_seconds=settings.login_backoff_max_seconds,
                max_failures_per_account=settings.login_max_failures_per_account,
                max_failures_per_address=settings.login_max_failures_per_address,
                slowdown_seconds=settings.login_slowdown_seconds,
            ),
        )
        self.registrations = RegistrationLimit(
            db, settings.register_max_per_address, settings.register_window_seconds
        )

    @_database_errors
    def Register(
        self, request: auth_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RegisterResponse:
        try:
            email = validate_email(request.email, allow_utf8_local=self.settings.mail_smtputf8)
            password = validate_new_password(request.password, email)
        except CredentialError as error:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if len(request.client_address) > MAX_ADDRESS_CHARS:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "client address too long")
        if request.client_address:
            self.registrations.admit(request.client_address)
        try:
            row = self.users.create(email, self.passwords.hash(password))
        except DuplicateEmail:
            _abort(context, grpc.StatusCode.ALREADY_EXISTS, "an account with this email already exists")
        log.info("user registered", extra={"user_id": row.id})
        return auth_pb2.RegisterResponse(user=_user(row))

    @_database_errors
    def Login(self, request: auth_pb2.LoginRequest, context: grpc.ServicerContext) -> auth_pb2.LoginResponse:
        if len(request.email) > MAX_EMAIL_CHARS * 4 or len(request.password) > MAX_PASSWORD_CHARS * 4:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "email or password too long")
        email = normalize_email(request.email)
        password = normalize_password(request.password)
        if len(email) > MAX_EMAIL_CHARS or len(password) > MAX_PASSWORD_CHARS:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "email or password too long")
        if len(request.client_address) > MAX_ADDRESS_CHARS:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "client address too long")
        if not email or not password:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS)
        address, account = request.client_address, email_key(email)
        # Counted as a failure from here on, atomically with the check; taken back below.
        self.throttle.admit(account, address)
        try:
            row = self.users.by_email(email)
            matched = self.passwords.verify(row.password_hash if row else None, password)
        except NOT_CHECKED:
            # Never checked: not a failure of the caller's (a busy server must not lock anyone out).
            self.throttle.release(account, address)
            raise
        # Unknown email and wrong password take the same path, time and message.
        if not matched or row is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS)
        self.throttle.succeeded(account, address)
        if self.passwords.needs_rehash(row.password_hash):
            try:
                self.users.update_hash(row.id, row.password_hash, self.passwords.hash(password))
                log.info("password rehashed with current parameters", extra={"user_id": row.id})
            except HashBusy:
                pass  # busy: rehashed at a later login
        token, _expires_at = self.tokens.issue_access(row.id, row.email, row.role)
        return auth_pb2.LoginResponse(
            access_token=token,
            token_type="Bearer",  # noqa: S106 - the token scheme, not a secret
            expires_in=self.settings.access_token_ttl,
            user=_user(row),
        )

    def ValidateToken(
        self, request: auth_pb2.ValidateTokenRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ValidateTokenResponse:
        try:
            claims = self.tokens.validate_access(request.access_token)
        except TokenError:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, BAD_TOKEN)
        user = auth_pb2.User(id=claims.user_id, email=claims.email, role=_role(claims.role))
        return auth_pb2.ValidateTokenResponse(user=user, expires_at=claims.expires_at)

    @_database_errors
    def IssueDownloadToken(
        self, request: auth_pb2.IssueDownloadTokenRequest, context: grpc.ServicerContext
    ) -> auth_pb2.IssueDownloadTokenResponse:
        user_id = _parse_user_id(request.user_id)
        if user_id is None:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "user_id must be a user id")
        if not request.file_id or len(request.file_id) > MAX_FILE_ID_CHARS:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "file_id is required (at most 128 characters)")
        if request.ttl_seconds < 0:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds must not be negative")
        if self.users.by_id(user_id) is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, "no such user")
        token, expires_at = self.tokens.issue_download(user_id, request.file_id, request.ttl_seconds)
        return auth_pb2.IssueDownloadTokenResponse(download_token=token, expires_at=expires_at)

    @_database_errors
    def ValidateDownloadToken(
        self, request: auth_pb2.ValidateDownloadTokenRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ValidateDownloadTokenResponse:
        if len(request.download_token) > MAX_TOKEN_CHARS or len(request.file_id) > MAX_FILE_ID_CHARS:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "download token or file id too long")
        try:
            claims = self.tokens.validate_download(request.download_token)
        except TokenError:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, BAD_TOKEN)
        if not request.file_id or claims.file_id != request.file_id:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, "this token does not grant this file")
        row = self.users.by_id(int(claims.user_id))
        if row is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, BAD_TOKEN)
        return auth_pb2.ValidateDownloadTokenResponse(user=_user(row), file_id=claims.file_id)
