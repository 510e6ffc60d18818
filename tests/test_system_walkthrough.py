"""`make up`'s system, driven with curl exactly as the README's walkthrough says."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.grpc_tls import GrpcTls
from testing.infra import Infra, SmtpSink
from testing.processes import ROOT, port_open
from tests.walkthrough import run_walkthrough, system_env

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def upped(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`dev/up.sh up` (what `make up` runs) on free ports, in the tests' own databases."""
    work = tmp_path_factory.mktemp("up")
    sink = SmtpSink(work)
    sink.start()
    env = system_env(infra, sink, work)
    up = subprocess.run(
        ["bash", "dev/up.sh", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "video2mp3 is up" in up.stdout
        yield env
    finally:
        down = subprocess.run(
            ["bash", "dev/up.sh", "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        sink.stop()
        client = infra.mongo()
        client.drop_database(env["MONGO_DB"])
        client.close()
        assert down.returncode == 0, down.stderr
        # Exactly what it started is gone; the shared infrastructure is still up.
        assert not port_open("127.0.0.1", int(env["GATEWAY_PORT"]))
        assert not port_open("127.0.0.1", int(env["AUTH_PORT"]))
        assert port_open(infra.env["MYSQL_HOST"], int(infra.env["MYSQL_PORT"]))


def test_readme_walkthrough_runs_literally(upped: dict[str, str]) -> None:
    run_walkthrough(upped)


def test_grpcurl_lists_auth_and_storage(upped: dict[str, str]) -> None:
    """As the README shows: grpcurl with the operator's certificate of $GRPC_TLS_DIR."""
    grpcurl = str(ROOT / ".venv/bin/grpcurl")
    tls = Path(upped["GRPC_TLS_DIR"])
    operator = [
        "-cacert",
        str(tls / "ca.crt"),
        "-cert",
        str(tls / "operator.crt"),
        "-key",
        str(tls / "operator.key"),
    ]
    auth = subprocess.run(
        [grpcurl, *operator, upped["AUTH_SVC_ADDRESS"], "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    storage = subprocess.run(
        [grpcurl, *operator, upped["STORAGE_SVC_ADDRESS"], "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "video2mp3.auth.v1.AuthService" in auth and "grpc.health.v1.Health" in auth
    assert "video2mp3.storage.v1.StorageService" in storage and "video2mp3.storage.v1.JobService" in storage
    health = subprocess.run(
        [grpcurl, *operator, upped["AUTH_SVC_ADDRESS"], "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "SERVING" in health
    assert urllib.parse.urlparse(upped["PUBLIC_BASE_URL"]).port == int(upped["GATEWAY_PORT"])


def _service_pids(module: str, port_variable: str, port: str) -> list[int]:
    """Pids of `python -m <module>` processes started with ``<port_variable>=<port>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        service = any(a == b"-m" and b == module.encode() for a, b in itertools.pairwise(cmdline))
        supervisor = any(arg.endswith(b"keep_running.py") for arg in cmdline)
        if service and not supervisor and f"{port_variable}={port}".encode() in environ:
            found.append(int(entry.name))
    return found


def test_a_crashed_service_is_restarted(upped: dict[str, str]) -> None:
    """kill -9 of auth: it comes back on its own (issue 19 item 9; honcho alone stopped
    everything), and the other services keep running meanwhile."""
    from dev.wait_healthy import grpc_serving, http_ok
    from testing.processes import wait_for

    auth_address, gateway = upped["AUTH_SVC_ADDRESS"], upped["PUBLIC_BASE_URL"]
    operator = GrpcTls.load(upped["GRPC_TLS_DIR"], "operator")
    (before,) = _service_pids("auth", "AUTH_PORT", upped["AUTH_PORT"])
    storage_pids = _service_pids("storage", "STORAGE_PORT", upped["STORAGE_PORT"])
    assert storage_pids and grpc_serving(auth_address, operator)
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: not grpc_serving(auth_address, operator), timeout=30, what="auth down")
    wait_for(lambda: grpc_serving(auth_address, operator), timeout=90, what="auth serving again")
    (after,) = _service_pids("auth", "AUTH_PORT", upped["AUTH_PORT"])
    assert after != before
    assert _service_pids("storage", "STORAGE_PORT", upped["STORAGE_PORT"]) == storage_pids
    assert http_ok(f"{gateway}/healthz")
    log = (Path(upped["RUN_DIR"]) / "services.log").read_text(errors="replace")
    assert "auth: exited with code -9; restarting" in log
