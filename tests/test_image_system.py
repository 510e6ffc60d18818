"""The system in containers from the project's image, run as manifests/ runs them.

`make image-test` (dev/image.sh test) builds the image and runs this module with
VIDEO2MP3_IMAGE set; elsewhere (`make test`) it is skipped: building the image takes minutes.
dev/image.sh up starts one container per Deployment on free ports of the host's network, in
this session's slice of the infrastructure; the README's walkthrough then runs against it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from testing.infra import Infra, SmtpSink
from testing.processes import ROOT, port_open
from tests.walkthrough import run_walkthrough, system_env

IMAGE = os.environ.get("VIDEO2MP3_IMAGE", "")
SERVICES = ("gateway", "auth", "storage", "converter", "notifier")
pytestmark = [
    pytest.mark.skipif(not IMAGE, reason="needs the built image: make image-test"),
    pytest.mark.timeout(900),
]


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    """podman with the global options dev/image.sh chose (its storage driver)."""
    command = os.environ.get("IMAGE_PODMAN", "podman").split()
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def contained(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`dev/image.sh up` on free ports, in the tests' own databases; `down` afterwards."""
    work = tmp_path_factory.mktemp("image")
    sink = SmtpSink(work)
    sink.start()
    env = system_env(infra, sink, work)
    env["IMAGE_RUN_DIR"] = str(work / "run")
    env["IMAGE_RUN_NAME"] = f"v2m-test-{infra.run_id.replace('_', '-')}"
    up = subprocess.run(
        ["bash", "dev/image.sh", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        names = (work / "run/containers").read_text().split() if (work / "run/containers").exists() else []
        down = subprocess.run(
            ["bash", "dev/image.sh", "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        sink.stop()
        client = infra.mongo()
        client.drop_database(env["MONGO_DB"])
        client.close()
        assert down.returncode == 0, down.stderr
        # Every container it started is gone; the shared infrastructure is still up.
        for name in names:
            assert podman("container", "exists", name).returncode == 1, f"{name} is still there"
        assert not port_open("127.0.0.1", int(env["GATEWAY_PORT"]))
        assert port_open(infra.env["MYSQL_HOST"], int(infra.env["MYSQL_PORT"]))


def container(system: dict[str, str], service: str) -> str:
    return f"{system['IMAGE_RUN_NAME']}-{service}"


def test_readme_walkthrough_against_the_containers(contained: dict[str, str]) -> None:
    run_walkthrough(contained)
    # It was the containers that answered: the gateway's log has the requests.
    logs = podman("logs", container(contained, "gateway"))
    assert "/upload" in logs.stdout + logs.stderr


def test_each_service_runs_from_the_image_confined_as_in_the_manifests(contained: dict[str, str]) -> None:
    for service in SERVICES:
        name = container(contained, service)
        (info,) = json.loads(podman("inspect", name).stdout)
        assert info["State"]["Running"], f"{name}: {info['State']}"
        assert info["ImageName"] == IMAGE
        config, host = info["Config"], info["HostConfig"]
        assert config["User"] == "10001:10001"
        assert host["ReadonlyRootfs"] is True
        assert host["NetworkMode"] == "host"
        assert "/tmp" in host["Tmpfs"]
        entrypoint = config["Entrypoint"]  # a string in Podman 4, a list in Podman 5
        assert (entrypoint.split() if isinstance(entrypoint, str) else entrypoint) == [
            "python",
            "-m",
            service,
        ]
        # Inside: not root, no capabilities, no new privileges; / is read-only and /tmp is not.
        probe = podman(
            "exec",
            name,
            "sh",
            "-c",
            "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
            "touch /opt/venv/x 2>&1; touch /tmp/x && echo tmp-writable",
        )
        assert probe.returncode == 0, probe.stderr
        out = probe.stdout
        assert out.splitlines()[0] == "10001"
        assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
        assert "Read-only file system" in out and "tmp-writable" in out


def test_the_image_is_within_its_size_budget() -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    budget = int(os.environ.get("IMAGE_SIZE_BUDGET_MB", "300"))
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB")
    assert size < budget * 1_000_000, f"{IMAGE} is {size / 1e6:.0f} MB, over the budget of {budget} MB"
    # The runtime stage carries no compilers, no pip and no build secret.
    run_options = os.environ.get("IMAGE_RUN_OPTIONS", "").split()
    script = "command -v gcc cc pip; ls /opt/venv/bin; test -e /run/secrets/pip_ca && echo secret-left; true"
    probe = podman("run", "--rm", "--network=none", *run_options, "--entrypoint=sh", IMAGE, "-c", script)
    assert probe.returncode == 0 and "gunicorn" in probe.stdout.split(), probe.stderr
    assert "gcc" not in probe.stdout and "secret-left" not in probe.stdout
    assert "pip" not in probe.stdout, probe.stdout
