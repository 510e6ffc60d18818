"""The Kubernetes manifests render, validate strictly, and agree with the code.

- ``kustomize build manifests/`` renders (with secret env files made from the committed examples by
  ``manifests/secrets/generate.sh``), and the result passes ``kubernetes-validate --strict`` for
  Kubernetes 1.30; so does the overlay with the optional KEDA component, whose KEDA objects (custom
  resources, outside the validator's schemas) are checked field by field here.
- For each service, ``Settings.from_env`` is called with a recording mapping built from the
  service's ConfigMap and Secret: every name it reads is provided (except the few listed in
  ``LEFT_TO_DEFAULT``), every provided name is read, and the required ones are there (it starts).
- Ports, the addresses services are given (``AUTH_SVC_ADDRESS`` ...), shared credentials, the
  upload limit and the host name agree across files; NetworkPolicies let exactly those calls through.
- The Dockerfile is hadolint clean and has the properties we promise.

The tools come from ``dev/k8s-tools.sh`` (``make k8s-tools``); these tests need no servers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.processes import ROOT

TOOLS = ROOT / "dev" / "k8s-tools.sh"
MANIFESTS = ROOT / "manifests"
NAMESPACE = "video2mp3"
SERVICES = ("gateway", "auth", "storage", "converter", "notifier", "sweeper")
# The services that speak internal gRPC, each with its certificate (storage.sweeper calls no
# gRPC method: it works on storage's database with storage's code, and gets no certificate).
TLS_SERVICES = ("gateway", "auth", "storage", "converter", "notifier")
GRPC_SERVICES = {"auth": "video2mp3.auth.v1.AuthService", "storage": "video2mp3.storage.v1.StorageService"}
# The plaintext health-only port of each gRPC service, for the kubelet's probes.
HEALTH_PORT_SETTING = {"auth": "AUTH_HEALTH_PORT", "storage": "STORAGE_HEALTH_PORT"}
TLS_DIR = "/etc/video2mp3/tls"
WORKERS = ("converter", "notifier", "sweeper")
# Where a service's code lives when not in a package of its name: the module ``python -m``
# runs, and the package and Settings constructor whose reads the manifests must match.
MODULE = {"sweeper": "storage.sweeper"}
SETTINGS_OF = {"sweeper": ("storage.settings", "SweeperSettings")}
# The port each service listens on, by the name of the setting that sets it.
PORT_SETTING = {
    "gateway": "GATEWAY_PORT",
    "auth": "AUTH_PORT",
    "storage": "STORAGE_PORT",
    "converter": "CONVERTER_HEALTH_PORT",
    "notifier": "NOTIFIER_HEALTH_PORT",
    "sweeper": "SWEEPER_HEALTH_PORT",
}
# Names a service reads that the manifests deliberately leave to the code's default, and why.
LEFT_TO_DEFAULT: dict[str, dict[str, str]] = {}

Obj = dict[str, Any]


def run_tool(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(TOOLS), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def render(directory: Path) -> tuple[str, list[Obj]]:
    result = run_tool("render", str(directory))
    assert result.returncode == 0, f"kustomize build {directory} failed:\n{result.stderr}"
    as_json = run_tool("render-json", str(directory))
    assert as_json.returncode == 0, as_json.stderr
    return result.stdout, json.loads(as_json.stdout)


class Rendered:
    def __init__(self, yaml_text: str, objects: list[Obj]) -> None:
        self.yaml = yaml_text
        self.objects = objects

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
        return found[0]

    def data(self, kind: str, name: str) -> dict[str, str]:
        obj = self.get(kind, name)
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def workload(self, name: str) -> Obj:
        found = [
            o
            for o in self.objects
            if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == name
        ]
        assert len(found) == 1, f"no Deployment or StatefulSet named {name}"
        return found[0]

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def container(self, name: str) -> Obj:
        containers = self.workload(name)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return dict(containers[0])

    def pod_env(self, name: str) -> dict[str, str]:
        """The environment a workload's container gets from its ConfigMaps, Secrets and env."""
        container = self.container(name)
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.data("ConfigMap", source["configMapRef"]["name"]))
            elif "secretRef" in source:
                env.update(self.data("Secret", source["secretRef"]["name"]))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]
                kind, key = (
                    ("ConfigMap", "configMapKeyRef")
                    if "configMapKeyRef" in ref
                    else ("Secret", "secretKeyRef")
                )
                env[item["name"]] = self.data(kind, ref[key]["name"])[ref[key]["key"]]
        return env

    def service_for(self, host: str, port: int) -> tuple[Obj, Obj]:
        """The Service ``host`` and its port ``port``."""
        service = self.get("Service", host)
        ports = [p for p in service["spec"]["ports"] if p["port"] == port]
        assert ports, f"Service {host} has no port {port}"
        return service, ports[0]


def copy_manifests(dest: Path) -> Path:
    """manifests/ without the operator's secret .env files, with fresh ones made from the examples."""
    target = dest / "manifests"

    def operator_files(directory: str, names: list[str]) -> set[str]:
        if Path(directory).name != "secrets":
            return set()
        return {n for n in names if n.endswith(".env") or n == "tls"}

    shutil.copytree(MANIFESTS, target, ignore=operator_files)
    made = subprocess.run(
        ["bash", str(target / "secrets" / "generate.sh")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "VIDEO2MP3_ROOT": str(ROOT)},  # where dev/certs.py is
    )
    assert made.returncode == 0, made.stderr
    return target


@pytest.fixture(scope="session")
def k8s_tools() -> None:
    result = run_tool("install", timeout=900)
    assert result.returncode == 0, f"dev/k8s-tools.sh install failed:\n{result.stderr}"


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory, k8s_tools: None) -> Path:
    return copy_manifests(tmp_path_factory.mktemp("manifests"))


@pytest.fixture(scope="session")
def base(work: Path) -> Rendered:
    return Rendered(*render(work))


KEDA_OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../manifests]
components: [../manifests/components/keda-converter]
"""


@pytest.fixture(scope="session")
def with_keda(work: Path) -> Rendered:
    """The base with the KEDA component, through an overlay as docs/kubernetes.md writes it."""
    overlay = work.parent / "with-keda"
    overlay.mkdir(exist_ok=True)
    (overlay / "kustomization.yaml").write_text(KEDA_OVERLAY)
    docs = ROOT / "docs" / "kubernetes.md"
    if docs.exists():
        assert KEDA_OVERLAY in docs.read_text(), "docs/kubernetes.md shows this overlay"
    return Rendered(*render(overlay))


def validate(yaml_text: str, tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml_text)
    result = run_tool("validate", "--quiet", str(path))
    assert result.returncode == 0, f"kubernetes-validate --strict failed:\n{result.stdout}\n{result.stderr}"


def core_only(rendered: Rendered) -> str:
    """The rendered objects without KEDA's custom resources, as YAML (via the tools' venv)."""
    kept = [o for o in rendered.objects if not o["apiVersion"].startswith("keda.sh/")]
    return "\n".join("---\n" + json.dumps(o) for o in kept)  # JSON is YAML


# ---------------------------------------------------------------- render and validate


def test_base_renders_and_passes_strict_validation(base: Rendered, tmp_path: Path) -> None:
    kinds = {o["kind"] for o in base.objects}
    assert {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "NetworkPolicy",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds
    assert not [o for o in base.objects if o["apiVersion"].startswith("keda.sh/")], "KEDA is optional"
    for obj in base.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
    validate(base.yaml, tmp_path)


def test_validation_is_strict(base: Rendered, tmp_path: Path) -> None:
    """The validator does reject a misspelt field (so a pass above means something)."""
    broken = json.loads(json.dumps(base.get("Deployment", "auth")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["sevice"] = "x"
    path = tmp_path / "broken.yaml"
    path.write_text(json.dumps(broken))
    assert run_tool("validate", "--quiet", str(path)).returncode != 0


def test_keda_component_renders_and_agrees(with_keda: Rendered, base: Rendered, tmp_path: Path) -> None:
    validate(core_only(with_keda), tmp_path)
    scaled = with_keda.get("ScaledObject", "converter")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == (
        "apps/v1",
        "Deployment",
    )
    with_keda.get("Deployment", target["name"])
    assert "replicas" not in with_keda.get("Deployment", "converter")["spec"], "KEDA owns the count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert not [
        h
        for h in with_keda.of_kind("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == "converter"
    ], "KEDA makes the converter's HPA"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    meta = trigger["metadata"]
    assert meta["mode"] == "QueueLength" and int(meta["value"]) >= 1
    assert meta["protocol"] == "amqp"
    assert meta["queueName"] == base.pod_env("converter")["VIDEO_QUEUE"]
    auth = with_keda.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    secret = with_keda.data("Secret", ref["name"])  # the generated name, hash included
    assert secret[ref["key"]] == base.pod_env("converter")["RABBITMQ_URL"]
    policy = with_keda.get("NetworkPolicy", "rabbitmq-from-keda")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app": "rabbitmq"}


# ---------------------------------------------------------------- settings: manifests vs code

PROBE = r"""
import importlib, json, os, sys

service, module, class_name = sys.argv[1:4]
envs = json.load(sys.stdin)


class Recording(dict):
    def __init__(self, data):
        super().__init__(data)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


settings = getattr(importlib.import_module(module), class_name)
results = []
for env in envs:
    recording = Recording(env)
    # Names read straight from the process environment at start-up (LOG_LEVEL in common.logs).
    real, os.environ = os.environ, recording
    try:
        from common.logs import setup_logging

        setup_logging(service)
    finally:
        os.environ = real
    error = None
    try:
        settings.from_env(recording)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    results.append({"read": sorted(recording.read), "error": error})
print(json.dumps(results))
"""


def settings_reads(service: str, *envs: dict[str, str]) -> list[tuple[set[str], str | None]]:
    """For each environment: the names ``Settings.from_env`` (and the logging set-up) read, and
    the error that would stop the service, in a fresh interpreter."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            service,
            *SETTINGS_OF.get(service, (f"{service}.settings", "Settings")),
        ],
        input=json.dumps(envs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return [(set(item["read"]), item["error"]) for item in out]


@pytest.mark.parametrize("service", SERVICES)
def test_settings_read_exactly_what_the_manifests_provide(base: Rendered, service: str) -> None:
    env = base.pod_env(service)
    ((read, error),) = settings_reads(service, env)
    assert error is None, f"{service} would not start with its ConfigMap and Secret: {error}"
    left = LEFT_TO_DEFAULT.get(service, {})
    assert not (set(left) & set(env)), "a name left to its default is provided after all"
    assert set(env) - read == set(), f"{service}: provided but never read"
    assert read - set(env) - set(left) == set(), f"{service}: read but not provided"


@pytest.mark.parametrize("service", SERVICES)
def test_required_settings_are_provided(base: Rendered, service: str) -> None:
    """Each name without which a service refuses to start is in its ConfigMap or Secret, non-empty."""
    env = base.pod_env(service)
    names = sorted(env)
    results = settings_reads(service, *({k: v for k, v in env.items() if k != name} for name in names))
    required = [name for name, (_, error) in zip(names, results, strict=True) if error is not None]
    for name in required:
        assert env[name] != "", f"{service}: required {name} is empty"
    if service == "auth":  # the check finds what it should
        assert "JWT_SECRET" in required


@pytest.mark.parametrize("service", SERVICES)
def test_command_runs_a_module_that_exists(base: Rendered, service: str) -> None:
    command = base.container(service)["command"]
    module = MODULE.get(service, service)
    assert command[:2] == ["python", "-m"] and command[2] == module
    path = ROOT / module.replace(".", "/")
    assert (path / "__main__.py").exists() or path.with_suffix(".py").exists(), (
        f"python -m {module}: no such module"
    )


# ---------------------------------------------------------------- ports and addresses


def container_port(rendered: Rendered, workload: str, target: int | str) -> int:
    ports = rendered.container(workload)["ports"]
    for port in ports:
        if target in (port["containerPort"], port.get("name")):
            return int(port["containerPort"])
    raise AssertionError(f"{workload} has no container port {target}")


def workload_behind(rendered: Rendered, service: Obj) -> str:
    selector = service["spec"]["selector"]
    matches = [
        w["metadata"]["name"]
        for w in rendered.workloads()
        if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(matches) == 1, f"Service {service['metadata']['name']} selects {matches}"
    return matches[0]


@pytest.mark.parametrize("service", SERVICES)
def test_service_ports_match_container_ports_and_settings(base: Rendered, service: str) -> None:
    svc = base.get("Service", service)
    assert workload_behind(base, svc) == service
    (port,) = svc["spec"]["ports"]
    assert port["name"] == ("grpc" if service in GRPC_SERVICES else "http")
    assert container_port(base, service, port["targetPort"]) == port["port"]
    assert int(base.pod_env(service)[PORT_SETTING[service]]) == port["port"]
    container_ports = base.container(service)["ports"]
    assert container_ports[0]["name"] == port["name"]
    if service in GRPC_SERVICES:  # and the health-only port, which no Service exposes
        assert [p["name"] for p in container_ports] == ["grpc", "grpc-health"]
    else:
        assert len(container_ports) == 1
    if service not in WORKERS:  # the workers' health servers listen on every address
        assert base.pod_env(service)["BIND_HOST"] == "0.0.0.0", "reachable from outside the pod"


def addresses(base: Rendered) -> Iterator[tuple[str, str, str, int]]:
    """(caller, setting, host, port) for every address a workload is given."""
    for workload in (w["metadata"]["name"] for w in base.of_kind("Deployment")):
        env = base.pod_env(workload)
        for name, value in env.items():
            if name.endswith("_SVC_ADDRESS"):
                host, _, port = value.rpartition(":")
                yield workload, name, host, int(port)
        if "RABBITMQ_URL" in env:
            url = urllib.parse.urlsplit(env["RABBITMQ_URL"])
            yield workload, "RABBITMQ_URL", str(url.hostname), url.port or 5672
        if "MONGO_URI" in env:
            url = urllib.parse.urlsplit(env["MONGO_URI"])
            yield workload, "MONGO_URI", str(url.hostname), url.port or 27017
        if "MYSQL_HOST" in env:
            yield workload, "MYSQL_HOST", env["MYSQL_HOST"], int(env["MYSQL_PORT"])


def policy_for(base: Rendered, app: str) -> Obj:
    found = [
        p
        for p in base.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels") == {"app": app}
    ]
    assert len(found) == 1, f"expected one NetworkPolicy for {app}"
    return found[0]


def rule_allows(rules: list[Obj], peer_key: str, app: str, port: int) -> bool:
    for rule in rules:
        peers = rule.get(peer_key, [])
        ports = [p["port"] for p in rule.get("ports", [])]
        if port in ports and any(
            p.get("podSelector", {}).get("matchLabels") == {"app": app} and "namespaceSelector" not in p
            for p in peers
        ):
            return True
    return False


def test_every_address_reaches_a_service_and_is_allowed(base: Rendered) -> None:
    seen = set()
    for caller, setting, host, port in addresses(base):
        seen.add(setting)
        service, service_port = base.service_for(host, port)
        callee = workload_behind(base, service)
        target = container_port(base, callee, service_port["targetPort"])
        assert target == port, f"{caller} {setting}: {host}:{port} reaches container port {target}"
        if callee in PORT_SETTING:
            assert int(base.pod_env(callee)[PORT_SETTING[callee]]) == target
        egress = policy_for(base, caller)["spec"].get("egress", [])
        ingress = policy_for(base, callee)["spec"].get("ingress", [])
        assert rule_allows(egress, "to", callee, target), f"{caller} may not call {callee}:{target}"
        assert rule_allows(ingress, "from", caller, target), f"{callee} does not admit {caller} on {target}"
    assert {"AUTH_SVC_ADDRESS", "STORAGE_SVC_ADDRESS", "RABBITMQ_URL", "MONGO_URI", "MYSQL_HOST"} <= seen


def test_network_policies_admit_only_the_callers(base: Rendered) -> None:
    deny = base.get("NetworkPolicy", "deny-all")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    callers: dict[tuple[str, int], set[str]] = {}
    for caller, _, host, port in addresses(base):
        callers.setdefault((workload_behind(base, base.get("Service", host)), port), set()).add(caller)
    for workload in base.workloads():
        app = workload["metadata"]["name"]
        policy = policy_for(base, app)
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        for rule in policy["spec"].get("ingress", []):
            for port in (p["port"] for p in rule["ports"]):
                for peer in rule["from"]:
                    if "namespaceSelector" in peer:
                        # From outside the namespace: the ingress controller, to the gateway only.
                        assert app == "gateway", f"{app} is reachable from another namespace"
                        assert peer["namespaceSelector"]["matchLabels"] == {
                            "kubernetes.io/metadata.name": "ingress-nginx"
                        }
                        continue
                    peer_app = peer["podSelector"]["matchLabels"]["app"]
                    assert peer_app in callers.get((app, port), set()), f"{app}:{port} admits {peer_app}"
    # Only the notifier leaves the cluster (its SMTP relay), on SMTP ports.
    for policy in base.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            if any("ipBlock" in peer for peer in rule["to"]):
                assert policy["metadata"]["name"] == "notifier"
                assert {p["port"] for p in rule["ports"]} <= {25, 465, 587}


# ---------------------------------------------------------------- values shared across files


def test_shared_values_agree(base: Rendered) -> None:
    gateway, auth, storage = base.pod_env("gateway"), base.pod_env("auth"), base.pod_env("storage")
    converter, notifier = base.pod_env("converter"), base.pod_env("notifier")
    sweeper = base.pod_env("sweeper")
    mysql, mongodb, rabbitmq = base.pod_env("mysql"), base.pod_env("mongodb"), base.pod_env("rabbitmq")
    # MySQL: the database, user and password auth uses are the ones MySQL creates.
    assert (auth["MYSQL_DB"], auth["MYSQL_USER"], auth["MYSQL_PASSWORD"]) == (
        mysql["MYSQL_DATABASE"],
        mysql["MYSQL_USER"],
        mysql["MYSQL_PASSWORD"],
    )
    assert mysql["MYSQL_ROOT_PASSWORD"] != mysql["MYSQL_PASSWORD"]
    # MongoDB: storage's URI names the application user the init script creates.
    uri = urllib.parse.urlsplit(storage["MONGO_URI"])
    assert (uri.username, uri.password) == (mongodb["MONGO_APP_USER"], mongodb["MONGO_APP_PASSWORD"])
    assert uri.path.strip("/") == storage["MONGO_DB"] == mongodb["MONGO_APP_DB"]
    # The sweeper works on storage's database with storage's own code: the same names.
    for name in ("MONGO_URI", "MONGO_DB", "VIDEO_BUCKET", "MP3_BUCKET", "JOBS_COLLECTION", "KEEP_VIDEOS"):
        assert sweeper[name] == storage[name], name
    assert urllib.parse.parse_qs(uri.query)["authSource"] == [mongodb["MONGO_APP_DB"]]
    # RabbitMQ: every URL carries the broker's user and password.
    for env in (gateway, converter, notifier, storage, sweeper):
        url = urllib.parse.urlsplit(env["RABBITMQ_URL"])
        assert (url.username, url.password) == (
            rabbitmq["RABBITMQ_DEFAULT_USER"],
            rabbitmq["RABBITMQ_DEFAULT_PASS"],
        )
    # Queues: the same names for publishers and consumers.
    for name in ("VIDEO_QUEUE", "MP3_QUEUE"):
        assert len({env[name] for env in (converter, notifier, gateway) if name in env}) == 1
    # Upload limit: gateway and storage agree; the ingress lets such a body through, and little more.
    limit = int(gateway["MAX_UPLOAD_BYTES"])
    assert int(storage["MAX_UPLOAD_BYTES"]) == limit
    body = base.get("Ingress", "gateway")["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/proxy-body-size"
    ]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", body.lower()).groups()  # type: ignore[union-attr]
    body_bytes = int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    assert limit <= body_bytes <= limit + 2 * 1024**2
    # The public host: links in emails point at the ingress host.
    (rule,) = base.get("Ingress", "gateway")["spec"]["rules"]
    for env in (gateway, notifier):
        assert urllib.parse.urlsplit(env["PUBLIC_BASE_URL"]).hostname == rule["host"]
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "gateway"
    # Download links live no longer than auth allows.
    assert int(notifier["DOWNLOAD_LINK_TTL_SECONDS"]) <= int(auth["DOWNLOAD_TOKEN_MAX_TTL_SECONDS"])
    # auth waits for MySQL at start: its startup probe waits longer.
    probe = base.container("auth")["startupProbe"]
    startup = float(auth.get("MYSQL_STARTUP_TIMEOUT_SECONDS", 0))
    assert probe["periodSeconds"] * probe["failureThreshold"] > startup
    # SIGTERM: the grace a service gives itself fits in the pod's.
    for workload, setting in (
        ("converter", "CONVERTER_STOP_GRACE_SECONDS"),
        ("auth", "AUTH_STOP_GRACE_SECONDS"),
    ):
        grace = base.workload(workload)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > float(base.pod_env(workload)[setting]), workload
    # The notifier's SMTP port is one its NetworkPolicy lets out.
    assert int(notifier["SMTP_PORT"]) in {25, 465, 587}
    # The converter's spool fits in its temporary volume.
    spec = base.workload("converter")["spec"]["template"]["spec"]
    mount = next(
        m for m in base.container("converter")["volumeMounts"] if m["mountPath"] == converter["TMP_DIR"]
    )
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    size = volume["emptyDir"]["sizeLimit"]
    assert size.endswith("Gi")
    need = int(converter["CONVERTER_SPOOL_MAX_BYTES"]) + int(converter["CONVERTER_SPOOL_RESERVE_BYTES"])
    limit = int(size[:-2]) * 1024**3
    # Matching the spool's bound: room for it, not much more (a runaway spool is evicted).
    assert need < limit <= need + 1024**3
    ephemeral = base.container("converter")["resources"]["limits"]["ephemeral-storage"]
    assert ephemeral.endswith("Gi") and limit <= int(ephemeral[:-2]) * 1024**3


def test_generated_secrets_hold_no_placeholder_and_examples_no_credential(base: Rendered) -> None:
    for secret in base.of_kind("Secret"):
        for key, value in base.data("Secret", secret["metadata"]["name"]).items():
            assert "change-me" not in value, f"{secret['metadata']['name']} {key}"
    for example in sorted((MANIFESTS / "secrets").glob("*.env.example")):
        for line in example.read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            secret_part = value
            if "://" in value:
                secret_part = urllib.parse.urlsplit(value).password or ""
            if set(key.split("_")) & {"PASSWORD", "PASS", "SECRET", "URI", "URL"}:
                assert secret_part == "" or secret_part.startswith("change-me-"), f"{example.name}: {key}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "manifests/secrets/auth.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "manifests/secrets/*.env must be ignored by git"
    for secret in base.of_kind("Secret"):
        assert re.fullmatch(r"[a-z]+-(secrets|tls)-[a-z0-9]{10}", secret["metadata"]["name"])


# ---------------------------------------------------------------- pods: probes and security


@pytest.mark.parametrize("service", SERVICES)
def test_probes(base: Rendered, service: str) -> None:
    container = base.container(service)
    live, ready = container["livenessProbe"], container["readinessProbe"]
    port = container["ports"][0]["containerPort"]
    if service in GRPC_SERVICES:
        # The kubelet cannot present a client certificate: the probes ask the plaintext
        # health-only port (common/grpc_server.py), never the mutual-TLS one.
        health_port = container_port(base, service, "grpc-health")
        assert int(base.pod_env(service)[HEALTH_PORT_SETTING[service]]) == health_port != port
        assert live["grpc"]["port"] == ready["grpc"]["port"] == container["startupProbe"]["grpc"]["port"]
        assert live["grpc"]["port"] == health_port
        assert live["grpc"].get("service", "") == "", "liveness asks the server, not a dependency"
        assert ready["grpc"]["service"] == GRPC_SERVICES[service]
    else:
        assert live["httpGet"]["path"] == "/healthz" and ready["httpGet"]["path"] == "/readyz"
        assert live["httpGet"]["port"] in ("http", port)


def test_every_pod_is_locked_down(base: Rendered) -> None:
    accounts = {a["metadata"]["name"]: a for a in base.of_kind("ServiceAccount")}
    for workload in base.workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name and name in accounts
        assert pod["automountServiceAccountToken"] is False
        assert accounts[name]["automountServiceAccountToken"] is False
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name} {bound}"
            image = container["image"]
            assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", image), f"{name}: unpinned image {image}"
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: a writable /tmp (the root filesystem is read-only)"
        for volume in pod.get("volumes", []):
            assert set(volume) & {"emptyDir", "configMap", "secret"}, f"{name}: volume {volume['name']}"


def test_statefulsets_have_volumes_and_headless_services(base: Rendered) -> None:
    for name in ("rabbitmq", "mysql", "mongodb"):
        sts = base.get("StatefulSet", name)
        service = base.get("Service", sts["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
        assert workload_behind(base, service) == name
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        mounts = {m["name"] for m in base.container(name)["volumeMounts"]}
        assert claim["metadata"]["name"] in mounts


def test_scaling_and_disruption_budgets(base: Rendered) -> None:
    hpa = base.get("HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in base.get("Deployment", "gateway")["spec"], "the HPA owns the count"
    for service in SERVICES:
        pdb = base.get("PodDisruptionBudget", service)
        labels = base.workload(service)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# ---------------------------------------------------------------- image


def test_dockerfile_is_hadolint_clean_and_as_promised(k8s_tools: None) -> None:
    result = run_tool("hadolint", str(ROOT / "Dockerfile"))
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
    text = (ROOT / "Dockerfile").read_text()
    base_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base_image and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base_image.group(1))
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3, "multi-stage"
    assert "grpc_tools.protoc" in text and "COPY protos/" in text, "stubs generated from protos/ in the build"
    # pip install . leaves the stubs out (gen/ is on PYTHONPATH in development): the image adds them.
    assert "COPY --from=stubs /out/ /opt/video2mp3-stubs/" in text
    assert re.search(r"^\s+PYTHONPATH=/opt/video2mp3-stubs", text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M), "non-root user"
    assert "PYTHONUNBUFFERED=1" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists() or source.rstrip("/") in SERVICES, f"COPY {source}"
    for service in SERVICES:
        assert f"COPY {MODULE.get(service, service).split('.')[0]}/" in text, f"{service} is in the image"
        assert f"!{source}" in (ROOT / ".dockerignore").read_text(), f".dockerignore keeps out {source}"
    for service in SERVICES:
        pod = base_pod_user(service)
        assert pod == 10001


def base_pod_user(service: str) -> int:
    text = (MANIFESTS / service / "deployment.yaml").read_text()
    match = re.search(r"runAsUser: (\d+)", text)
    assert match
    return int(match.group(1))


# ---------------------------------------------------------------- mutual TLS of internal gRPC


@pytest.mark.parametrize("service", TLS_SERVICES)
def test_each_service_gets_its_own_certificate_and_nothing_more(base: Rendered, service: str) -> None:
    """The Secret NAME-tls holds the CA certificate and the service's own certificate and key
    (never the CA's key, never another identity's), mounted read-only where GRPC_TLS_DIR says."""
    from cryptography import x509

    container = base.container(service)
    assert base.pod_env(service)["GRPC_TLS_DIR"] == TLS_DIR
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR]
    assert mount.get("readOnly") is True
    pod = base.workload(service)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = base.get("Secret", volume["secret"]["secretName"])
    assert secret["metadata"]["name"].startswith(f"{service}-tls-")
    assert volume["secret"]["defaultMode"] == 0o440
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(files) == {"ca.crt", f"{service}.crt", f"{service}.key"}
    ca = x509.load_pem_x509_certificate(files["ca.crt"])
    cert = x509.load_pem_x509_certificate(files[f"{service}.crt"])
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == service
    if service in GRPC_SERVICES:  # valid for the address its callers are given
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = set(names.get_values_for_type(x509.DNSName))
        assert {service, f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.svc.cluster.local"} <= dns
        for caller, setting, host, _ in addresses(base):
            if host == service:
                assert host in dns, f"{caller} {setting}: {host} is not in {service}'s certificate"


def test_certificates_are_generated_never_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "manifests/secrets"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [p for p in tracked if p.endswith((".key", ".crt", ".pem"))]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "manifests/secrets/tls/ca.key"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "manifests/secrets/tls/ must be ignored by git"
