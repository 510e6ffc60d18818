"""`make up`'s system, driven with curl exactly as the README's walkthrough says."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.grpc_tls import GrpcTls
from testing.infra import Infra, SmtpSink
from testing.media import audio_duration
from testing.processes import ROOT, free_port, port_open

pytestmark = pytest.mark.timeout(600)


def walkthrough_script() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return block.strip().removeprefix("```sh").removesuffix("```")


@pytest.fixture(scope="module")
def upped(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`dev/up.sh up` (what `make up` runs) on free ports, in the tests' own databases."""
    work = tmp_path_factory.mktemp("up")
    sink = SmtpSink(work)
    sink.start()
    ports = {
        name: str(free_port())
        for name in (
            "GATEWAY_PORT",
            "AUTH_PORT",
            "STORAGE_PORT",
            "CONVERTER_HEALTH_PORT",
            "NOTIFIER_HEALTH_PORT",
        )
    }
    env = {
        **os.environ,
        **ports,
        "RUN_DIR": str(work / "run"),
        "MYSQL_DB": infra.mysql_db,
        "MONGO_DB": f"{infra.mongo_db}_up",  # its own: a sweeper re-publishes every stuck job it sees
        "RABBITMQ_VHOST": infra.vhost,
        "RABBITMQ_URL": infra.rabbitmq_url,
        "SMTP_PORT": str(sink.port),
        "SMTP_SINK_DIR": str(sink.mailbox.directory),
        "AUTH_SVC_ADDRESS": f"127.0.0.1:{ports['AUTH_PORT']}",
        "STORAGE_SVC_ADDRESS": f"127.0.0.1:{ports['STORAGE_PORT']}",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['GATEWAY_PORT']}",
        "JWT_SECRET": infra.service_env()["JWT_SECRET"],
        # This session's other tests sign up from loopback into the same database.
        "REGISTER_MAX_PER_ADDRESS": infra.service_env()["REGISTER_MAX_PER_ADDRESS"],
        "GRPC_TLS_DIR": str(infra.tls_dir),  # the session's certificates (dev/up.sh keeps them)
    }
    env.pop("PYTHONPATH", None)
    up = subprocess.run(
        ["bash", "dev/up.sh", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "video2mp3 is up" in up.stdout
        yield {**env, "WORK": str(work)}
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
        assert not port_open("127.0.0.1", int(ports["GATEWAY_PORT"]))
        assert not port_open("127.0.0.1", int(ports["AUTH_PORT"]))
        assert port_open(infra.env["MYSQL_HOST"], int(infra.env["MYSQL_PORT"]))


def test_readme_walkthrough_runs_literally(upped: dict[str, str]) -> None:
    work = Path(upped["WORK"]) / "walk"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "tests").symlink_to(ROOT / "tests")
    (work / "dev").symlink_to(ROOT / "dev")
    script = walkthrough_script().replace("127.0.0.1:8080", f"127.0.0.1:{upped['GATEWAY_PORT']}")
    # The job normally finishes within the walkthrough's pause; on a busy machine wait longer.
    script = script.replace(
        "sleep 5",
        "for i in $(seq 60); do curl -s http://127.0.0.1:"
        f"{upped['GATEWAY_PORT']}"
        '/jobs/$JOB -H "Authorization: Bearer $TOKEN" '
        "| grep -q '\"succeeded\"' && break; sleep 1; done; "
        ".venv/bin/python dev/mail.py --link --to alice@example.com >/dev/null || sleep 5",
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work,
        env={**upped, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"access_token"' in result.stdout
    assert re.search(r'"state":\s*"succeeded"', result.stdout), result.stdout
    for name in ("audio.mp3", "from-email.mp3"):
        mp3 = work / name
        assert mp3.stat().st_size > 1000
        assert abs(audio_duration(mp3) - 5.0) < 0.15
    assert (work / "audio.mp3").read_bytes() == (work / "from-email.mp3").read_bytes()


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
