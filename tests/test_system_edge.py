"""Bad input at the edge: a corpus of malformed requests, each answered with the
documented 4xx as JSON, never a 500, and every service still healthy afterwards."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.infra import Infra, SmtpSink
from testing.media import MediaSpec, make_media
from tests.fixtures.system import System, grpc_serving, http_ok

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def edge(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, str]]:
    work = tmp_path_factory.mktemp("edge")
    sink = SmtpSink(work)
    sink.start()
    srv = System(infra=infra, sink=sink, log_dir=work, extra_env={"MAX_UPLOAD_BYTES": str(2 * 1024 * 1024)})
    try:
        srv.start_auth()
        srv.start_storage()
        srv.start_gateway()
        assert srv.register("edge@example.com", PASSWORD).status == 201
        yield srv, srv.login("edge@example.com", PASSWORD)
    finally:
        srv.stop_all()
        sink.stop()


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None
    expect: tuple[int, ...] = (400,)
    auth: bool = False  # add the valid Bearer token


def multipart(
    field: str, filename: str, content: bytes, boundary: str = "b0undary"
) -> tuple[bytes, dict[str, str]]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def corpus(video: bytes) -> list[Case]:
    json_h = {"Content-Type": "application/json"}
    good_mp, good_h = multipart("file", "clip.mp4", video)
    wrong_field, wf_h = multipart("video", "clip.mp4", video)
    empty, empty_h = multipart("file", "empty.mp4", b"")
    return [
        Case("register: not JSON", "POST", "/register", b"{not json", json_h),
        Case("register: JSON array", "POST", "/register", b"[1,2]", json_h),
        Case("register: missing password", "POST", "/register", b'{"email":"a@example.com"}', json_h),
        Case("register: numbers for strings", "POST", "/register", b'{"email":1,"password":2}', json_h),
        Case(
            "register: bad email",
            "POST",
            "/register",
            b'{"email":"nope","password":"long enough pw"}',
            json_h,
        ),
        Case(
            "register: short password",
            "POST",
            "/register",
            b'{"email":"s@example.com","password":"short"}',
            json_h,
        ),
        Case(
            "register: wrong content type",
            "POST",
            "/register",
            b"email=a&password=b",
            {"Content-Type": "application/x-www-form-urlencoded"},
            (400, 415),
        ),
        Case(
            "register: huge email",
            "POST",
            "/register",
            json.dumps({"email": "a" * 5000 + "@example.com", "password": PASSWORD}).encode(),
            json_h,
            (400, 413),
        ),
        Case("login: no credentials", "POST", "/login", expect=(400, 401)),
        Case(
            "login: basic not base64",
            "POST",
            "/login",
            headers={"Authorization": "Basic %%%%"},
            expect=(400, 401),
        ),
        Case(
            "login: basic without colon",
            "POST",
            "/login",
            headers={"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()},
            expect=(400, 401),
        ),
        Case(
            "login: wrong password",
            "POST",
            "/login",
            headers={
                "Authorization": "Basic " + base64.b64encode(b"edge@example.com:wrong-password").decode()
            },
            expect=(401,),
        ),
        Case("upload: no token", "POST", "/upload", good_mp, good_h, (401,)),
        Case(
            "upload: garbage token",
            "POST",
            "/upload",
            good_mp,
            {**good_h, "Authorization": "Bearer not.a.jwt"},
            (401,),
        ),
        Case(
            "upload: other scheme",
            "POST",
            "/upload",
            good_mp,
            {**good_h, "Authorization": "Token abc"},
            (401,),
        ),
        Case(
            "upload: several spaces",
            "POST",
            "/upload",
            good_mp,
            {**good_h, "Authorization": "Bearer   a b c"},
            (401,),
        ),
        Case(
            "upload: not multipart",
            "POST",
            "/upload",
            b"raw bytes",
            {"Content-Type": "video/mp4"},
            (400, 415),
            auth=True,
        ),
        Case("upload: JSON body", "POST", "/upload", b'{"file": "x"}', json_h, (400, 415), auth=True),
        Case("upload: wrong field name", "POST", "/upload", wrong_field, wf_h, (400,), auth=True),
        Case("upload: empty file", "POST", "/upload", empty, empty_h, (400,), auth=True),
        Case(
            "upload: multipart without boundary",
            "POST",
            "/upload",
            good_mp,
            {"Content-Type": "multipart/form-data"},
            (400,),
            auth=True,
        ),
        Case(
            "upload: over the size limit",
            "POST",
            "/upload",
            *multipart("file", "big.mp4", b"\0" * (3 * 1024 * 1024)),
            (413,),
            auth=True,
        ),
        Case("jobs: bad id", "GET", "/jobs/not-an-id", expect=(400, 404), auth=True),
        Case("jobs: path-like id", "GET", "/jobs/..%2F..%2Fetc%2Fpasswd", expect=(400, 404), auth=True),
        Case("jobs: unknown id", "GET", "/jobs/0123456789abcdef01234567", expect=(404,), auth=True),
        Case("download: no fid", "GET", "/download", expect=(400,), auth=True),
        Case("download: bad fid", "GET", "/download?fid=%00%ff", expect=(400, 404), auth=True),
        Case(
            "download: unknown fid", "GET", "/download?fid=0123456789abcdef01234567", expect=(404,), auth=True
        ),
        Case(
            "download: bad link token",
            "GET",
            "/download?fid=0123456789abcdef01234567&token=abc",
            expect=(401, 403),
        ),
        Case("download: no credentials", "GET", "/download?fid=0123456789abcdef01234567", expect=(401,)),
        Case("unknown path", "GET", "/no/such/thing", expect=(404,)),
        Case("wrong method", "DELETE", "/login", expect=(405,)),
        Case("huge header", "GET", "/jobs", headers={"X-Filler": "x" * 20000}, expect=(400, 431), auth=True),
    ]


def test_malformed_requests_get_documented_4xx(edge: tuple[System, str], tmp_path: Path) -> None:
    system, token = edge
    video = make_media(tmp_path / "clip.mp4", MediaSpec(duration=0.5)).read_bytes()
    cases = corpus(video)
    assert len(cases) >= 20
    failures = []
    for case in cases:
        headers = dict(case.headers or {})
        if case.auth:
            headers["Authorization"] = f"Bearer {token}"
        result = system.request(case.method, case.path, case.body, headers)
        ok = result.status in case.expect
        if ok and result.status != 431 and result.body:
            # JSON error bodies with a message a person can read; no stack traces.
            try:
                payload = result.json()
                ok = isinstance(payload, dict) and "error" in payload
            except ValueError:
                ok = False
            ok = ok and b"Traceback" not in result.body
        if not ok:
            failures.append(f"{case.name}: {result.status} {result.body[:200]!r}")
    assert not failures, "\n".join(failures)

    assert http_ok(f"{system.base_url}/readyz")
    assert grpc_serving(f"127.0.0.1:{system.auth_port}", system.infra.tls())
    assert grpc_serving(f"127.0.0.1:{system.storage_port}", system.infra.tls())
    assert all(proc.alive() for proc in system.processes.values())


def test_path_like_and_unicode_file_names_are_safe(edge: tuple[System, str], tmp_path: Path) -> None:
    system, token = edge
    clip = make_media(tmp_path / "clip.mp4", MediaSpec(duration=0.5))
    for name in ["../../etc/passwd.mp4", "C:\\Windows\\evil.mp4", "mañana ☃ 東京.mp4", "a\r\nBcc: x@y.z.mp4"]:
        result = system.upload(token, clip, filename=name)
        # Accepted (the name is only metadata) or refused with a 400: never a 500.
        assert result.status in (202, 400), (name, result.status, result.body)
        if result.status == 202:
            job = system.job(token, result.json()["job_id"])
            assert "/" not in job["filename"] and "\\" not in job["filename"] and "\n" not in job["filename"]
