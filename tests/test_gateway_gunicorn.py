"""The gateway as production runs it: gunicorn with gevent workers, as a real process."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import requests

from testing.processes import ServiceProcess, free_port, wait_for
from tests.fixtures.auth import unique_email

PASSWORD = "correct horse battery staple"


def test_gateway_under_gunicorn(infra: Any, auth_address: str, tmp_path: Path) -> None:
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = infra.service_env(
        AUTH_SVC_ADDRESS=auth_address,
        GATEWAY_PORT=str(port),
        BIND_HOST="127.0.0.1",
        GUNICORN_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    proc = ServiceProcess(
        "gateway-gunicorn",
        [gunicorn, "--config", "python:gateway.gunicorn_conf", "gateway.app:create_app()"],
        env,
        tmp_path,
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for(
            lambda: (lambda r: r if r.status_code == 200 else None)(
                requests.get(f"{base}/healthz", timeout=2)
            ),
            timeout=30,
            what="gateway /healthz under gunicorn",
        )
        assert health.json() == {"status": "ok"}
        assert requests.get(f"{base}/readyz", timeout=5).json()["checks"] == {"auth": "ok"}

        email = unique_email()
        created = requests.post(f"{base}/register", json={"email": email, "password": PASSWORD}, timeout=10)
        assert created.status_code == 201, created.text
        # As in `curl -X POST http://HOST/login -u email:password`.
        login = requests.post(f"{base}/login", auth=(email, PASSWORD), timeout=10)
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        assert login.json()["token_type"] == "Bearer"
        for _ in range(6):  # spread over the workers
            me = requests.get(f"{base}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert me.status_code == 200 and me.json()["email"] == email
        bad = requests.post(f"{base}/login", auth=(email, "wrong passphrase"), timeout=10)
        assert bad.status_code == 401 and bad.headers["Content-Type"] == "application/json"
        missing = requests.get(f"{base}/nope", timeout=5)
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"

        # Metrics from every worker, added up (multiprocess mode).
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert 'gateway_http_requests_total{method="GET",route="/me",status="200"} 6.0' in metrics

        # Logs are JSON lines (gunicorn's own and the app's).
        proc.signal(signal.SIGTERM)
        assert proc.proc is not None and proc.proc.wait(30) == 0
        lines = [line for line in proc.logs().splitlines() if line.strip()]
        entries = [json.loads(line) for line in lines]
        assert any(e["message"] == "http" and e.get("path") == "/login" for e in entries)
        assert all(e["service"] == "gateway" for e in entries)
        # Each worker closed its gRPC channels and AMQP connection on the way out.
        closed = {e["pid"] for e in entries if e["message"] == "worker closed its clients"}
        assert len(closed) == 2
    finally:
        proc.stop()
