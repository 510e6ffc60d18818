"""The gateway under gunicorn (gevent workers, as production runs it) with 200 open event
streams: uploads, job reads and /healthz are still served, and one job change reaches
every stream (one JobChanged consumer per worker process fans it out)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import requests

from testing.processes import ServiceProcess, free_port, wait_for
from tests.fixtures.auth import unique_email
from tests.fixtures.storage import StorageHandle

PASSWORD = "correct horse battery staple"
STREAMS = 200


def _open_stream(port: int, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"GET /events HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def _read_until(sock: socket.socket, needle: bytes, seen: bytes = b"") -> bytes:
    data = seen
    while needle not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"stream closed before {needle!r}: {data[-300:]!r}")
        data += chunk
    return data


def test_200_event_streams_do_not_starve_uploads(
    infra: Any, auth_address: str, storage_service: StorageHandle, tmp_path: Path
) -> None:
    port = free_port()
    env = infra.service_env(
        AUTH_SVC_ADDRESS=auth_address,
        STORAGE_SVC_ADDRESS=storage_service.address,
        GATEWAY_PORT=str(port),
        BIND_HOST="127.0.0.1",
        GUNICORN_WORKERS="2",
    )
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    proc = ServiceProcess(
        "gateway-events",
        [gunicorn, "--config", "python:gateway.gunicorn_conf", "gateway.app:create_app()"],
        env,
        tmp_path,
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    streams: list[socket.socket] = []
    try:
        wait_for(lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 200, 30, what="gateway up")
        email = unique_email("sse")
        assert requests.post(f"{base}/register", json={"email": email, "password": PASSWORD}, timeout=10).ok
        token = requests.post(f"{base}/login", auth=(email, PASSWORD), timeout=10).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        for _ in range(STREAMS):
            streams.append(_open_stream(port, token))
        opened = [_read_until(sock, b"retry: 2000") for sock in streams]
        assert all(b"200 OK" in head and b"text/event-stream" in head for head in opened)

        # Everything else is still served, with all 200 streams open.
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        upload = requests.post(
            f"{base}/upload",
            headers=headers,
            files={"file": ("clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4000)},
            timeout=30,
        )
        assert upload.status_code == 202, upload.text
        job_id = upload.json()["job_id"]
        listed = requests.get(f"{base}/jobs", headers=headers, timeout=10)
        assert listed.status_code == 200 and listed.json()["jobs"][0]["id"] == job_id

        # The new job's event reached every open stream.
        for sock, head in zip(streams, opened, strict=True):
            _read_until(sock, job_id.encode(), head)
    finally:
        for sock in streams:
            sock.close()
        proc.stop()
