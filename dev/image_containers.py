"""The project's Deployments as Podman containers, run as manifests/ runs them (dev/image.sh up).

The manifests are rendered with kustomize (secrets made from the committed examples), and each
Deployment whose container runs the project's image becomes one ``podman run``: the same command,
environment (ConfigMap and Secret), user and groups, read-only root filesystem with the same
writable mounts (an emptyDir becomes a tmpfs of its sizeLimit), no capabilities, no privilege
escalation, and the same memory and CPU limits. On the host's network, so only the settings
that say *where* things are differ from the cluster's: ports, the addresses of the other
services and of the infrastructure, credentials, and the public URL (see LOCAL_SETTINGS).

    python dev/image_containers.py image                 the image the manifests name
    python dev/image_containers.py up --image IMG --prefix NAME --run-dir DIR [-- podman ... run ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE_NAME = "video2mp3"
Obj = dict[str, Any]

# Settings that say where things are, replaced by the local values; every other setting keeps the
# manifests' value. name -> the environment variable of `dev/image.sh up` that gives it (None: fixed).
LOCAL_SETTINGS: dict[str, str | None] = {
    "BIND_HOST": None,
    "GATEWAY_PORT": "GATEWAY_PORT",
    "AUTH_PORT": "AUTH_PORT",
    "STORAGE_PORT": "STORAGE_PORT",
    "AUTH_SVC_ADDRESS": "AUTH_SVC_ADDRESS",
    "STORAGE_SVC_ADDRESS": "STORAGE_SVC_ADDRESS",
    "PUBLIC_BASE_URL": "PUBLIC_BASE_URL",
    "MYSQL_HOST": "MYSQL_HOST",
    "MYSQL_PORT": "MYSQL_PORT",
    "MYSQL_USER": "MYSQL_USER",
    "MYSQL_PASSWORD": "MYSQL_PASSWORD",
    "MYSQL_DB": "MYSQL_DB",
    "MONGO_URI": "MONGO_URI",
    "MONGO_DB": "MONGO_DB",
    "RABBITMQ_URL": "RABBITMQ_URL",
    "JWT_SECRET": "JWT_SECRET",
    "SMTP_HOST": "SMTP_HOST",
    "SMTP_PORT": "SMTP_PORT",
    "SMTP_SECURITY": "SMTP_SECURITY",
    "SMTP_USERNAME": None,
    "SMTP_PASSWORD": None,
}
FIXED = {"BIND_HOST": "127.0.0.1", "SMTP_USERNAME": "", "SMTP_PASSWORD": ""}


@dataclass
class Container:
    name: str  # the Deployment's
    options: list[str]  # `podman run` options, before the image
    entrypoint: list[str]
    args: list[str]
    env: dict[str, str]
    # Secret volumes: mount path -> (file name -> the local file in its place), file mode, group.
    secrets: dict[str, tuple[dict[str, Path], int, int | None]] = field(default_factory=dict)


def operator_secrets(directory: str, names: list[str]) -> set[str]:
    """The operator's own secret env files (manifests/secrets/*.env): never read here."""
    return {n for n in names if n.endswith(".env")} if Path(directory).name == "secrets" else set()


def render_manifests() -> list[Obj]:
    """kustomize build of manifests/ with secrets made from the *.env.example files."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "manifests"
        shutil.copytree(ROOT / "manifests", copy, ignore=operator_secrets)
        subprocess.run(
            ["bash", str(copy / "secrets/generate.sh")],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "VIDEO2MP3_ROOT": str(ROOT)},  # its dev/certs.py
        )
        out = subprocess.run(
            ["bash", str(ROOT / "dev/k8s-tools.sh"), "render-json", str(copy)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    objects: list[Obj] = json.loads(out)
    return objects


def manifest_image(objects: list[Obj]) -> str:
    """The one image reference the project's Deployments run (e.g. video2mp3:0.1.0)."""
    images = {
        c["image"] for d in project_deployments(objects) for c in d["spec"]["template"]["spec"]["containers"]
    }
    if len(images) != 1:
        raise SystemExit(f"expected one image of the project in manifests/, found {sorted(images)}")
    return images.pop()


def project_deployments(objects: list[Obj]) -> list[Obj]:
    def runs_ours(obj: Obj) -> bool:
        containers = obj["spec"]["template"]["spec"]["containers"]
        return any(re.fullmatch(rf"(.*/)?{IMAGE_NAME}(:.*)?", c["image"]) for c in containers)

    return [o for o in objects if o["kind"] == "Deployment" and runs_ours(o)]


def pod_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The environment of a container from its envFrom ConfigMaps and Secrets and its env."""

    def data(kind: str, name: str) -> dict[str, str]:
        (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = ("ConfigMap", "configMapRef") if "configMapRef" in source else ("Secret", "secretRef")
        env.update(data(kind, source[ref]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]
            kind, key = (
                ("ConfigMap", "configMapKeyRef") if "configMapKeyRef" in ref else ("Secret", "secretKeyRef")
            )
            env[item["name"]] = data(kind, ref[key]["name"])[ref[key]["key"]]
    return env


def local_env(name: str, env: Mapping[str, str], here: Mapping[str, str]) -> dict[str, str]:
    """``env`` with every setting in LOCAL_SETTINGS replaced by its local value from ``here``."""
    out = dict(env)
    for key in env:
        if key.endswith("_HEALTH_PORT"):  # a worker's health endpoint: CONVERTER_HEALTH_PORT ...
            source: str | None = key
        elif key in LOCAL_SETTINGS:
            source = LOCAL_SETTINGS[key]
        else:
            continue
        if source is None:
            out[key] = FIXED[key]
        elif source in here:
            out[key] = here[source]
        else:
            raise SystemExit(f"{name}: {key} needs a local value: set {source}")
    return out


def quantity(value: str, unit: str) -> str:
    """A Kubernetes memory quantity for podman (bytes) or a CPU quantity (cores)."""
    if unit == "cpu":
        return str(int(value[:-1]) / 1000) if value.endswith("m") else value
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", value)
    if not match:
        raise SystemExit(f"unsupported quantity {value!r}")
    return str(int(match.group(1)) * suffixes.get(match.group(2) or "", 1))


def container_for(objects: list[Obj], deployment: Obj, here: Mapping[str, str]) -> Container:
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    if len(pod["containers"]) != 1 or pod.get("initContainers"):
        raise SystemExit(f"{name}: only pods of one container are supported")
    (container,) = pod["containers"]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    user = security.get("runAsUser")
    if security.get("runAsNonRoot") and not user:
        raise SystemExit(f"{name}: runAsNonRoot without a runAsUser")
    options = [f"--stop-timeout={pod.get('terminationGracePeriodSeconds', 30)}"]
    if user is not None:
        options.append(f"--user={user}:{security.get('runAsGroup', user)}")
    if "fsGroup" in pod.get("securityContext", {}):
        options.append(f"--group-add={pod['securityContext']['fsGroup']}")
    if security.get("readOnlyRootFilesystem"):
        # Podman would add writable /tmp, /run and /var/tmp; a pod gets only its volumes.
        options += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = security.get("capabilities", {})
    options += [f"--cap-drop={c}" for c in capabilities.get("drop", [])]
    options += [f"--cap-add={c}" for c in capabilities.get("add", [])]
    if security.get("allowPrivilegeEscalation") is False:
        options.append("--security-opt=no-new-privileges")
    if security.get("privileged"):
        raise SystemExit(f"{name}: privileged containers are not run here")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secrets: dict[str, tuple[dict[str, Path], int, int | None]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            secrets[mount["mountPath"]] = local_secret(objects, volume["secret"], here, pod)
            continue
        if "emptyDir" not in volume:
            raise SystemExit(f"{name}: volume {mount['name']} is not an emptyDir; not supported here")
        size = volume["emptyDir"].get("sizeLimit")
        size_option = f",size={quantity(size, 'memory')}" if size else ""
        options.append(f"--tmpfs={mount['mountPath']}:rw,nosuid,nodev,mode=1777{size_option}")
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        options.append(f"--memory={quantity(limits['memory'], 'memory')}")
    if "cpu" in limits:
        options.append(f"--cpus={quantity(limits['cpu'], 'cpu')}")
    env = local_env(name, pod_env(objects, container), here)
    command = container.get("command")
    if not command:
        raise SystemExit(f"{name}: the manifests give no command")
    return Container(name, options, list(command), list(container.get("args", [])), env, secrets)


def local_secret(
    objects: list[Obj], volume: Obj, here: Mapping[str, str], pod: Obj
) -> tuple[dict[str, Path], int, int | None]:
    """A Secret volume of internal gRPC's certificates (NAME-tls): the same file names, taken
    from the local certificates of GRPC_TLS_DIR (made for loopback by dev/certs.py)."""
    name = volume["secretName"]
    (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith(name)]
    if not re.search(r"-tls(-[a-z0-9]+)?$", name):
        raise SystemExit(f"secret volume {name}: only the certificates of internal gRPC are supported")
    if "GRPC_TLS_DIR" not in here:
        raise SystemExit(f"secret volume {name} needs a local value: set GRPC_TLS_DIR")
    files = {key: Path(here["GRPC_TLS_DIR"]) / key for key in secret.get("data", {})}
    group = pod.get("securityContext", {}).get("fsGroup")
    return files, int(volume.get("defaultMode", 0o644)), group


def up(containers: list[Container], image: str, prefix: str, run_dir: Path, podman_run: list[str]) -> None:
    """Starts each container (detached, host network) with ``podman_run`` (podman, its global options,
    `run` and the options this machine needs); the names go to run_dir/containers as started."""
    run_dir.mkdir(parents=True, exist_ok=True)
    names = run_dir / "containers"
    for c in containers:
        env_file = run_dir / f"{c.name}.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(c.env.items())))
        mounts = []
        for index, (path, (files, mode, group)) in enumerate(sorted(c.secrets.items())):
            directory = run_dir / f"{c.name}-secret-{index}"
            directory.mkdir(exist_ok=True)
            for file_name, source in files.items():
                target = directory / file_name
                shutil.copyfile(source, target)
                if group is not None:
                    os.chown(target, -1, group)
                target.chmod(mode)
            mounts.append(f"--volume={directory}:{path}:ro")
        full_name = f"{prefix}-{c.name}"
        argv = [
            *podman_run,
            "--detach",
            f"--name={full_name}",
            f"--label=video2mp3.run={prefix}",
            "--network=host",
            f"--env-file={env_file}",
            *c.options,
            *mounts,
            f"--entrypoint={json.dumps(c.entrypoint)}",
            image,
            *c.args,
        ]
        with names.open("a") as record:
            record.write(full_name + "\n")
        print(f"[image] starting {full_name}: {' '.join(c.entrypoint + c.args)}", file=sys.stderr)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("image", help="print the image the manifests name")
    run = sub.add_parser("up", help="start the Deployments as containers")
    run.add_argument("--image", required=True, help="the local image to run")
    run.add_argument("--prefix", required=True, help="container names are PREFIX-DEPLOYMENT")
    run.add_argument("--run-dir", required=True, type=Path, help="env files and the list of names")
    run.add_argument("podman_run", nargs="*", help="after --: podman, global options, run, run options")
    args = parser.parse_args()
    objects = render_manifests()
    if args.command == "image":
        print(manifest_image(objects))
        return 0
    containers = [container_for(objects, d, os.environ) for d in project_deployments(objects)]
    up(containers, args.image, args.prefix, args.run_dir, args.podman_run or ["podman", "run"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
