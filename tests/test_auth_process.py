"""``python -m auth`` as a real process: grpcurl sees it (with the operator's certificate),
health says SERVING, SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc
from video2mp3.auth.v1 import auth_pb2 as pb
from video2mp3.auth.v1 import auth_pb2_grpc

from testing.processes import ROOT, ServiceProcess, free_port, python_module, wait_for
from tests.fixtures.auth import auth_env, unique_email

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args: str) -> str:
    result = subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def serving(infra: Any, port: int) -> bool:
    with infra.channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1
        )
        return response.status == health_pb2.HealthCheckResponse.SERVING


def test_auth_process_grpcurl_health_and_graceful_stop(infra: Any, tmp_path: Path) -> None:
    port = free_port()
    # Production argon2 parameters: a login then takes long enough to be "in flight" below.
    env = auth_env(infra, AUTH_PORT=str(port), ARGON2_TIME_COST="3", ARGON2_MEMORY_KIB="65536")
    proc = ServiceProcess("auth", python_module("auth"), env, tmp_path)
    proc.start()
    try:
        wait_for(lambda: serving(infra, port), timeout=30, what="auth SERVING")
        services = grpcurl(*infra.grpcurl_tls(), f"127.0.0.1:{port}", "list").split()
        assert "video2mp3.auth.v1.AuthService" in services
        assert "grpc.health.v1.Health" in services
        for service in ("", "video2mp3.auth.v1.AuthService"):
            out = grpcurl(
                *infra.grpcurl_tls(),
                "-d",
                json.dumps({"service": service}),
                f"127.0.0.1:{port}",
                "grpc.health.v1.Health/Check",
            )
            assert json.loads(out)["status"] == "SERVING"
        methods = grpcurl(
            *infra.grpcurl_tls(), f"127.0.0.1:{port}", "describe", "video2mp3.auth.v1.AuthService"
        )
        for rpc in ("Register", "Login", "ValidateToken", "IssueDownloadToken", "ValidateDownloadToken"):
            assert f"rpc {rpc}" in methods

        # A call through grpcurl reaches MySQL and answers with a real status.
        email = unique_email()
        body = json.dumps({"email": email, "password": "a perfectly fine passphrase"})
        out = grpcurl(
            *infra.grpcurl_tls(), "-d", body, f"127.0.0.1:{port}", "video2mp3.auth.v1.AuthService/Register"
        )
        assert json.loads(out)["user"]["email"] == email

        # SIGTERM during a call: the call finishes, the process exits 0.
        with infra.channel(f"127.0.0.1:{port}", "gateway") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            request = pb.LoginRequest(email=email, password="a perfectly fine passphrase")
            stub.Login(request, timeout=10)  # connected, and the timing is known
            began = time.monotonic()
            stub.Login(request, timeout=10)
            login_seconds = time.monotonic() - began
            future = stub.Login.future(request, timeout=10)
            time.sleep(min(0.05, login_seconds / 4))
            proc.signal(signal.SIGTERM)
            assert future.result().user.email == email
        started = time.monotonic()
        assert proc.proc is not None
        assert proc.proc.wait(20) == 0, proc.logs()
        assert time.monotonic() - started < 15
        logs = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
        messages = [entry["message"] for entry in logs]
        assert "serving" in messages and "stopped" in messages
        assert all(entry["service"] == "auth" and "severity" in entry for entry in logs)
    finally:
        proc.stop()


def test_auth_process_without_jwt_secret_stops_with_a_clear_message(infra: Any) -> None:
    env = auth_env(infra)
    del env["JWT_SECRET"]
    result = subprocess.run(
        python_module("auth"),
        env={
            **{k: v for k, v in os.environ.items() if k != "JWT_SECRET"},
            **env,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_auth_process_without_mysql_retries_then_exits_cleanly(infra: Any) -> None:
    env = auth_env(infra, MYSQL_PORT=str(free_port()), MYSQL_STARTUP_TIMEOUT_SECONDS="2")
    started = time.monotonic()
    result = subprocess.run(
        python_module("auth"),
        env={**os.environ, **env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert time.monotonic() - started >= 1.5  # it retried for a while
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines() if line.startswith("{")]
    assert "MySQL unreachable; retrying" in messages
    assert "cannot reach MySQL at start-up; exiting" in messages
    assert "Traceback" not in result.stderr
