"""dev/image_containers.py: the Deployments of manifests/ turned into `podman run` options.

`make image-test` runs the containers; these checks need no image: they render the real
manifests (kustomize, from `make k8s-tools`) and check that each container would run exactly
as its Deployment says, with only the settings that say where things are made local.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dev import image_containers as ic
from testing.processes import ROOT

SERVICES = ("gateway", "auth", "storage", "converter", "notifier")
HERE = {
    "GATEWAY_PORT": "18080",
    "AUTH_PORT": "15000",
    "STORAGE_PORT": "15001",
    "CONVERTER_HEALTH_PORT": "18081",
    "NOTIFIER_HEALTH_PORT": "18082",
    "AUTH_HEALTH_PORT": "15010",
    "STORAGE_HEALTH_PORT": "15011",
    "GRPC_TLS_DIR": "/var/tmp/video2mp3/certs",
    "AUTH_SVC_ADDRESS": "127.0.0.1:15000",
    "STORAGE_SVC_ADDRESS": "127.0.0.1:15001",
    "PUBLIC_BASE_URL": "http://127.0.0.1:18080",
    "MYSQL_HOST": "127.0.0.1",
    "MYSQL_PORT": "3306",
    "MYSQL_USER": "local-user",
    "MYSQL_PASSWORD": "local-password",
    "MYSQL_DB": "local_db",
    "MONGO_URI": "mongodb://127.0.0.1:27017/",
    "MONGO_DB": "local_db",
    "RABBITMQ_URL": "amqp://u:p@127.0.0.1:5672/%2F",
    "JWT_SECRET": "local-secret",
    "SMTP_HOST": "127.0.0.1",
    "SMTP_PORT": "1025",
    "SMTP_SECURITY": "none",
}


@pytest.fixture(scope="module")
def objects(k8s_tools_installed: None) -> list[ic.Obj]:
    return ic.render_manifests()


@pytest.fixture(scope="module")
def k8s_tools_installed() -> Iterator[None]:
    result = subprocess.run(
        ["bash", str(ROOT / "dev/k8s-tools.sh"), "install"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    yield


def deployment(objects: list[ic.Obj], name: str) -> ic.Obj:
    (found,) = [d for d in ic.project_deployments(objects) if d["metadata"]["name"] == name]
    return found


def test_every_service_deployment_becomes_a_container(objects: list[ic.Obj]) -> None:
    names = {d["metadata"]["name"] for d in ic.project_deployments(objects)}
    assert set(SERVICES) <= names
    # Only the project's image: RabbitMQ, MySQL and MongoDB are the local infrastructure here.
    assert not names & {"rabbitmq", "mysql", "mongodb"}
    assert ic.manifest_image(objects) == "video2mp3:0.1.0"


@pytest.mark.parametrize("service", SERVICES)
def test_container_runs_as_its_deployment_says(objects: list[ic.Obj], service: str) -> None:
    spec = deployment(objects, service)["spec"]["template"]["spec"]
    (manifest,) = spec["containers"]
    c = ic.container_for(objects, deployment(objects, service), HERE)
    assert c.entrypoint == manifest["command"] == ["python", "-m", service]
    assert "--user=10001:10001" in c.options and "--group-add=10001" in c.options
    assert "--read-only" in c.options and "--read-only-tmpfs=false" in c.options
    assert "--cap-drop=ALL" in c.options and "--security-opt=no-new-privileges" in c.options
    assert f"--stop-timeout={spec['terminationGracePeriodSeconds']}" in c.options
    tmpfs = [o for o in c.options if o.startswith("--tmpfs=")]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert sorted(o.split("=", 1)[1].split(":")[0] for o in tmpfs) == sorted(
        m["mountPath"] for m in manifest["volumeMounts"] if m["name"] in empty_dirs
    )
    # The certificates of internal gRPC: the same files, from the local GRPC_TLS_DIR, group-readable.
    (files, mode, group) = c.secrets["/etc/video2mp3/tls"]
    assert sorted(files) == sorted(["ca.crt", f"{service}.crt", f"{service}.key"])
    assert all(path.parent == Path(HERE["GRPC_TLS_DIR"]) for path in files.values())
    assert (mode, group) == (0o440, 10001)
    memory = manifest["resources"]["limits"]["memory"]
    assert f"--memory={ic.quantity(memory, 'memory')}" in c.options
    # The manifests' environment, but for where things are.
    env = ic.pod_env(objects, manifest)
    assert set(c.env) == set(env)
    for key, value in env.items():
        if key not in ic.LOCAL_SETTINGS and not key.endswith("_HEALTH_PORT"):
            assert c.env[key] == value, key
    assert c.env.get("BIND_HOST", "127.0.0.1") == "127.0.0.1"
    for key in ("AUTH_SVC_ADDRESS", "STORAGE_SVC_ADDRESS", "RABBITMQ_URL", "MONGO_URI", "MYSQL_PASSWORD"):
        if key in env:
            assert c.env[key] == HERE[key]
    health_port = f"{service.upper()}_HEALTH_PORT"
    if health_port in env:
        assert c.env[health_port] == HERE[health_port] != env[health_port]


def test_gateway_keeps_its_metrics_directory_in_memory_of_its_size(objects: list[ic.Obj]) -> None:
    c = ic.container_for(objects, deployment(objects, "gateway"), HERE)
    assert f"--tmpfs=/var/lib/prometheus-multiproc:rw,nosuid,nodev,mode=1777,size={16 * 2**20}" in c.options
    assert c.env["PROMETHEUS_MULTIPROC_DIR"] == "/var/lib/prometheus-multiproc"


def test_a_missing_local_value_is_named(objects: list[ic.Obj]) -> None:
    here = {k: v for k, v in HERE.items() if k != "RABBITMQ_URL"}
    with pytest.raises(SystemExit, match="RABBITMQ_URL needs a local value: set RABBITMQ_URL"):
        ic.container_for(objects, deployment(objects, "converter"), here)


def test_quantities() -> None:
    assert ic.quantity("16Mi", "memory") == str(16 * 2**20)
    assert ic.quantity("3Gi", "memory") == str(3 * 2**30)
    assert ic.quantity("500m", "cpu") == "0.5"
    assert ic.quantity("2", "cpu") == "2"
    with pytest.raises(SystemExit):
        ic.quantity("1.5Gi", "memory")


def test_image_script_rejects_an_unknown_command(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "dev/image.sh"), "bogus"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "dev/image.sh build" in result.stderr and "dev/image.sh test" in result.stderr
