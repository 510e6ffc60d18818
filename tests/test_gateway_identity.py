"""The gateway's identity endpoints and error handling, with real gRPC to the real auth server."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from testing.processes import free_port
from tests.fixtures.auth import unique_email

PASSWORD = "correct horse battery staple"


def basic(email: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def addr() -> dict[str, str]:
    # Each test logs in from its own client address, so throttling never leaks across tests.
    return {"REMOTE_ADDR": f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}


def assert_json_error(response: Any, status: int, error: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str)
    assert "Traceback" not in response.get_data(as_text=True)
    assert "<html" not in response.get_data(as_text=True).lower()
    if error is not None:
        assert body["error"] == error
    return body


def register(http: Any, email: str, password: str = PASSWORD) -> Any:
    return http.post("/register", json={"email": email, "password": password})


def token_for(http: Any, email: str) -> str:
    response = http.post("/login", headers=basic(email, PASSWORD), environ_base=addr())
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["access_token"])


# --------------------------------------------------------------------------- register and login


def test_register_then_login_with_basic_and_json(auth_http: Any, auth_settings: Any) -> None:
    email = unique_email()
    created = register(auth_http, email)
    assert created.status_code == 201
    body = created.get_json()
    assert body["email"] == email and body["role"] == "user" and body["id"].isdigit()
    assert "password" not in json.dumps(body)

    by_basic = auth_http.post("/login", headers=basic(email, PASSWORD), environ_base=addr())
    assert by_basic.status_code == 200
    tokens = by_basic.get_json()
    assert set(tokens) == {"access_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == auth_settings.access_token_ttl
    assert by_basic.headers["Cache-Control"] == "no-store"

    by_json = auth_http.post("/login", json={"email": email, "password": PASSWORD}, environ_base=addr())
    assert by_json.status_code == 200 and by_json.get_json()["token_type"] == "Bearer"

    me = auth_http.get("/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200 and me.get_json() == body
    assert me.headers["X-Request-Id"]


def test_password_with_colon_and_unicode_by_basic(auth_http: Any) -> None:
    email = unique_email("uni", domain="bücher.example")
    password = "pass:with:colons — ünïcødé"
    assert register(auth_http, email, password).status_code == 201
    response = auth_http.post("/login", headers=basic(email, password), environ_base=addr())
    assert response.status_code == 200


def test_duplicate_email_any_case_is_409(auth_http: Any) -> None:
    email = unique_email("Dup")
    assert register(auth_http, email).status_code == 201
    for variant in (email, email.upper(), email.lower()):
        assert_json_error(register(auth_http, variant, "some other passphrase"), 409, "already_exists")


def test_wrong_password_and_unknown_user_are_the_same_401(auth_http: Any) -> None:
    email = unique_email()
    register(auth_http, email)
    wrong = auth_http.post("/login", headers=basic(email, "wrong passphrase"), environ_base=addr())
    unknown = auth_http.post("/login", headers=basic(unique_email(), PASSWORD), environ_base=addr())
    a, b = assert_json_error(wrong, 401), assert_json_error(unknown, 401)
    assert (a["error"], a["message"]) == (b["error"], b["message"])
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]


def test_login_is_throttled_per_client_address(auth_http: Any, auth_settings: Any) -> None:
    client = addr()
    for _ in range(auth_settings.login_max_failures_per_address):
        response = auth_http.post(
            "/login", headers=basic(unique_email(), "wrong passphrase"), environ_base=client
        )
        assert response.status_code == 401
    email = unique_email()
    register(auth_http, email)
    throttled = auth_http.post("/login", headers=basic(email, PASSWORD), environ_base=client)
    assert_json_error(throttled, 429, "too_many_requests")
    assert throttled.headers["Retry-After"]
    assert auth_http.post("/login", headers=basic(email, PASSWORD), environ_base=addr()).status_code == 200


def test_login_is_throttled_per_email_and_address(auth_http: Any, auth_settings: Any) -> None:
    email, client = unique_email(), addr()
    register(auth_http, email)
    for _ in range(auth_settings.login_max_failures_per_email):
        auth_http.post("/login", headers=basic(email, "wrong passphrase"), environ_base=client)
    throttled = auth_http.post("/login", headers=basic(email, PASSWORD), environ_base=client)
    assert_json_error(throttled, 429)
    # The back-off the auth service asked for (its first step), not a fixed guess.
    assert throttled.headers["Retry-After"] == str(auth_settings.login_backoff_seconds)
    assert auth_http.post("/login", headers=basic(email, PASSWORD), environ_base=addr()).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "not json", "content_type": "application/json"}, 400),
        ({"json": ["a", "list"]}, 400),
        ({"json": {"email": "a@example.com"}}, 400),
        ({"json": {"email": 5, "password": "x" * 10}}, 400),
        ({"json": {"email": "not-an-email", "password": PASSWORD}}, 400),
        ({"json": {"email": unique_email(), "password": "short"}}, 400),
        ({"json": {"email": "x" * 255 + "@example.com", "password": PASSWORD}}, 400),
        ({"json": {"email": unique_email(), "password": "p" * 1025}}, 400),
        ({"json": {"email": unique_email(), "password": "p" * 20_000}}, 413),
        ({"data": "{" * 100_000, "content_type": "application/json"}, 413),
    ],
)
def test_register_rejects_bad_input(auth_http: Any, kwargs: dict[str, Any], status: int) -> None:
    assert_json_error(auth_http.post("/register", **kwargs), status)


def test_register_handles_sql_metacharacters_and_unicode(auth_http: Any) -> None:
    for email in (f"o'brien+{uuid.uuid4().hex[:6]}@example.com", f"user{uuid.uuid4().hex[:6]}@例子.广告"):
        assert register(auth_http, email).status_code == 201
        assert token_for(auth_http, email)
    assert_json_error(register(auth_http, "x'); DROP TABLE users; --@example.com"), 400, "invalid_argument")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Basic dXNlcjpwYXNz"},  # a base64 that is not valid for this user
        {"Authorization": "Basic !!!not-base64!!!"},
        {"Authorization": "Basic"},
        {"Authorization": "Bearer abc"},  # Bearer at /login is not Basic
    ],
)
def test_login_without_usable_credentials_is_401(auth_http: Any, headers: dict[str, str]) -> None:
    response = auth_http.post("/login", headers=headers, environ_base=addr())
    assert_json_error(response, 401, "unauthenticated")
    assert "WWW-Authenticate" in response.headers


def test_oversized_login_inputs_are_400(auth_http: Any) -> None:
    long_email = "x" * 300 + "@example.com"
    assert_json_error(auth_http.post("/login", headers=basic(long_email, PASSWORD), environ_base=addr()), 400)
    assert_json_error(
        auth_http.post("/login", headers=basic(unique_email(), "p" * 2000), environ_base=addr()), 400
    )


# ------------------------------------------------------------------------------- bearer tokens


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer  ",
        "Bearer  TOKEN",  # two spaces
        "Bearer TOKEN extra",
        "Bearer\tTOKEN",
        "Basic TOKEN",
        "Token TOKEN",
        "TOKEN",
        "Bearer garbage",
        "Bearer not.a.jwt",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
        "Bearer ☃☃☃",
        "Bearer " + "A" * 10_000,
        "Bearer TOKEN,Bearer TOKEN",
    ],
)
def test_every_malformed_authorization_header_is_401(auth_http: Any, value: str | None) -> None:
    email = unique_email()
    register(auth_http, email)
    token = token_for(auth_http, email)
    headers = {} if value is None else {"Authorization": value.replace("TOKEN", token)}
    response = auth_http.get("/me", headers=headers)
    assert_json_error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="video2mp3"')


def test_bearer_scheme_is_case_insensitive(auth_http: Any) -> None:
    email = unique_email()
    register(auth_http, email)
    token = token_for(auth_http, email)
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert auth_http.get("/me", headers={"Authorization": f"{scheme} {token}"}).status_code == 200


def test_tampered_and_foreign_tokens_are_401(auth_http: Any, auth_settings: Any) -> None:
    import jwt

    email = unique_email()
    register(auth_http, email)
    token = token_for(auth_http, email)
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "role": "admin"}, "an attacker's secret of 32+ bytes!!", algorithm="HS256")
    other_aud = jwt.encode({**claims, "aud": "elsewhere"}, auth_settings.jwt_secret, algorithm="HS256")
    for bad in (forged, other_aud, token[:-3] + ("abc" if not token.endswith("abc") else "xyz")):
        assert_json_error(auth_http.get("/me", headers={"Authorization": f"Bearer {bad}"}), 401)


def test_auth_down_is_503_not_500(auth_gateway_factory: Any) -> None:
    app = auth_gateway_factory(AUTH_SVC_ADDRESS=f"127.0.0.1:{free_port()}", AUTH_TIMEOUT_SECONDS="1")
    http = app.test_client()
    response = http.get("/me", headers={"Authorization": "Bearer abc.def.ghi"})
    body = assert_json_error(response, 503, "unavailable")
    assert "127.0.0.1" not in body["message"]
    assert_json_error(http.post("/login", headers=basic(unique_email(), PASSWORD)), 503)
    assert_json_error(http.post("/register", json={"email": unique_email(), "password": PASSWORD}), 503)
    ready = http.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["auth"] == "unavailable"


# ---------------------------------------------------------------------------- errors and probes


def test_flask_errors_are_json(auth_http: Any) -> None:
    assert_json_error(auth_http.get("/no/such/page"), 404, "not_found")
    not_allowed = auth_http.get("/login")
    assert_json_error(not_allowed, 405, "method_not_allowed")
    assert "POST" in not_allowed.headers["Allow"]
    assert_json_error(auth_http.post("/register", data=b"x" * 100_000, content_type="application/json"), 413)


def test_unexpected_exception_is_a_json_500_without_trace(auth_gateway_factory: Any) -> None:
    app = auth_gateway_factory()

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals: /etc/passwd")

    response = app.test_client().get("/boom")
    body = assert_json_error(response, 500, "internal")
    assert "secret" not in response.get_data(as_text=True) and body["message"] == "internal error"


def test_request_id_is_echoed_and_generated(auth_http: Any) -> None:
    assert auth_http.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    generated = auth_http.get("/healthz", headers={"X-Request-Id": "bad id; !"}).headers["X-Request-Id"]
    assert generated and generated != "bad id; !"


def test_healthz_readyz_metrics(auth_http: Any) -> None:
    assert auth_http.get("/healthz").get_json() == {"status": "ok"}
    ready = auth_http.get("/readyz")
    assert ready.status_code == 200 and ready.get_json() == {"status": "ready", "checks": {"auth": "ok"}}
    auth_http.get("/no/such/page")
    metrics = auth_http.get("/metrics")
    assert metrics.status_code == 200 and metrics.mimetype == "text/plain"
    text = metrics.get_data(as_text=True)
    assert 'gateway_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'route="<unmatched>",status="404"' in text and "/no/such/page" not in text
    assert "gateway_http_request_duration_seconds_bucket" in text


def test_gateway_settings_defaults() -> None:
    from gateway.settings import Settings

    settings = Settings.from_env({})
    assert (settings.bind_host, settings.port) == ("127.0.0.1", 8080)
    assert settings.auth_address == "127.0.0.1:5000" and settings.storage_address == "127.0.0.1:5001"
    assert settings.rabbitmq_url.startswith("amqp://")
    assert Settings.from_env({"RABBITMQ_HOST": "mq"}).rabbitmq_url.startswith("amqp://guest:guest@mq:5672/")


def test_token_check_has_a_deadline(auth_gateway_factory: Any) -> None:
    """An auth server that accepts connections but never answers: the request still ends
    (503) within the configured deadline instead of hanging a worker thread."""
    import socket
    import time

    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        port = blackhole.getsockname()[1]
        app = auth_gateway_factory(AUTH_SVC_ADDRESS=f"127.0.0.1:{port}", AUTH_TIMEOUT_SECONDS="1")
        started = time.monotonic()
        response = app.test_client().get("/me", headers={"Authorization": "Bearer abc.def.ghi"})
        elapsed = time.monotonic() - started
    assert_json_error(response, 503, "unavailable")
    assert 0.8 <= elapsed < 5


def test_clients_are_lazy_and_per_process(auth_gateway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from gateway.clients import EXTENSION

    app = auth_gateway_factory()
    clients = app.extensions[EXTENSION]
    assert clients._channels == {} and clients._publisher is None  # nothing opened at creation
    assert app.test_client().get("/readyz").status_code == 200
    first = clients.channel("auth")
    assert clients.channel("auth") is first  # reused within a process
    # In a forked worker (another pid) nothing inherited is reused.
    parent_pid = os.getpid()
    monkeypatch.setattr("gateway.clients.os.getpid", lambda: parent_pid + 1)
    assert clients.channel("auth") is not first
    assert app.test_client().get("/readyz").status_code == 200
    monkeypatch.undo()
    first.close()
