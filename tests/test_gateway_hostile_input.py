"""Inputs that once broke the gateway (issue 19): each must be a 4xx as JSON, never a 500,
and must not grow the metrics without bound."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.test_gateway_identity import assert_json_error

# JSON escapes that decode to a lone UTF-16 surrogate: valid JSON text, not encodable as UTF-8.
LONE_SURROGATE_EMAIL = '"a\\ud800@b.cc"'


def _surrogate_body() -> str:
    return '{"email": ' + LONE_SURROGATE_EMAIL + ', "password": "correct horse battery staple"}'


@pytest.mark.parametrize("path", ["/register", "/login"])
def test_lone_surrogate_in_json_is_400(auth_http: Any, path: str) -> None:
    response = auth_http.post(
        path,
        data=_surrogate_body(),
        content_type="application/json",
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert_json_error(response, 400, "invalid_argument")


def test_lone_surrogate_in_the_password_is_400(auth_http: Any) -> None:
    body = '{"email": "x@example.com", "password": "abcdefgh\\udfff"}'
    response = auth_http.post("/register", data=body, content_type="application/json")
    assert_json_error(response, 400, "invalid_argument")


@pytest.mark.parametrize("path", ["/register", "/login"])
@pytest.mark.parametrize("opening", ["[", '{"":'])
def test_deeply_nested_json_is_400(auth_http: Any, path: str, opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    body = opening * 3000 + "1" + closing * 3000
    response = auth_http.post(
        path, data=body, content_type="application/json", environ_base={"REMOTE_ADDR": "192.0.2.8"}
    )
    assert_json_error(response, 400, "invalid_argument")


def _series(http: Any) -> int:
    """How many time series /metrics holds (sample lines)."""
    text = http.get("/metrics").get_data(as_text=True)
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _label_values(http: Any, label: str) -> set[str]:
    text = http.get("/metrics").get_data(as_text=True)
    return set(re.findall(rf'gateway_http_requests_total\{{[^}}]*{label}="([^"]*)"', text))


def _made_up_requests(http: Any, count: int) -> None:
    for _ in range(count):
        token = uuid.uuid4().hex[:10].upper()
        http.open(f"/x/{token}", method=f"M{token}")
        http.open("/healthz", method=f"Q{token}")
        http.open("/jobs/" + token, method="GET")


def test_made_up_methods_and_paths_do_not_grow_the_metrics(auth_http: Any) -> None:
    _made_up_requests(auth_http, 5)  # the fixed label combinations such requests may use …
    _series(auth_http)  # … and those of GET /metrics itself
    before = _series(auth_http)
    _made_up_requests(auth_http, 300)
    after = _series(auth_http)
    assert after == before, f"/metrics gained {after - before} series from 900 made-up requests"
    methods = _label_values(auth_http, "method")
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert "other" in methods
    statuses = _label_values(auth_http, "status")
    assert all(re.fullmatch(r"[1-5]\d\d", s) for s in statuses), statuses
