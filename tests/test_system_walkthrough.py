"""`make up`'s system, driven with curl exactly as the README's walkthrough says."""

from __future__ import annotations

import subprocess
import urllib.parse
from collections.abc import Iterator

import pytest

from tests.fixtures.infra import Infra, SmtpSink
from tests.support import ROOT, port_open
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
    grpcurl = str(ROOT / ".venv/bin/grpcurl")
    auth = subprocess.run(
        [grpcurl, "-plaintext", upped["AUTH_SVC_ADDRESS"], "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    storage = subprocess.run(
        [grpcurl, "-plaintext", upped["STORAGE_SVC_ADDRESS"], "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "video2mp3.auth.v1.AuthService" in auth and "grpc.health.v1.Health" in auth
    assert "video2mp3.storage.v1.StorageService" in storage and "video2mp3.storage.v1.JobService" in storage
    health = subprocess.run(
        [grpcurl, "-plaintext", upped["AUTH_SVC_ADDRESS"], "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "SERVING" in health
    assert urllib.parse.urlparse(upped["PUBLIC_BASE_URL"]).port == int(upped["GATEWAY_PORT"])
