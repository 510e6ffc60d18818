"""A kustomize overlay of manifests/ for the local cluster of dev/cluster.sh (make cluster-test).

Everything of manifests/ is applied as it is, but for what cannot be had here: the images of
RabbitMQ, MySQL and MongoDB (Docker Hub is out of reach), so their StatefulSets and Services
give way to Services of the same names and ports whose endpoints are relays on the pods'
bridge to the host's infrastructure (`make infra`), in this test session's own databases and
vhost. The secrets hold the local credentials; the public URL is the port-forward's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dev.image_containers import operator_secrets
from testing.infra import Infra
from testing.processes import ROOT

BRIDGE_IP = "10.244.0.1"  # dev/cluster.sh BRIDGE_IP
HOST_SERVICES = {"mysql": ("mysql", 3306), "rabbitmq": ("amqp", 5672), "mongodb": ("mongodb", 27017)}


def relay_ports(infra: Infra) -> dict[str, int]:
    """Host port of each infrastructure server, which the relay on the bridge forwards to."""
    e = infra.env
    return {
        "mysql": int(e["MYSQL_PORT"]),
        "rabbitmq": int(e["RABBITMQ_PORT"]),
        "mongodb": int(e["MONGO_PORT"]),
    }


def make_overlay(work: Path, infra: Infra, smtp_port: int, public_url: str, jwt_secret: str) -> Path:
    copy = work / "manifests"
    shutil.copytree(ROOT / "manifests", copy, ignore=operator_secrets)
    made = subprocess.run(
        ["bash", str(copy / "secrets/generate.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "VIDEO2MP3_ROOT": str(ROOT)},
    )
    assert made.returncode == 0, made.stderr
    e = infra.env
    amqp = infra.rabbitmq_url.replace(f"@{e['RABBITMQ_HOST']}:{e['RABBITMQ_PORT']}/", "@rabbitmq:5672/")
    secrets = {
        "gateway": {"RABBITMQ_URL": amqp},
        "converter": {"RABBITMQ_URL": amqp},
        "auth": {"MYSQL_PASSWORD": e["MYSQL_PASSWORD"], "JWT_SECRET": jwt_secret},
        "storage": {"MONGO_URI": "mongodb://mongodb:27017/"},
        "notifier": {
            "RABBITMQ_URL": amqp,
            "SMTP_HOST": BRIDGE_IP,
            "SMTP_PORT": str(smtp_port),
            "SMTP_SECURITY": "none",
            "SMTP_USERNAME": "",
            "SMTP_PASSWORD": "",
        },
    }
    for name, values in secrets.items():
        (copy / "secrets" / f"{name}.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    overlay = work / "overlay"
    overlay.mkdir()
    # The Services stay (names, ports); without a selector, their endpoints are the relays.
    endpoints = [
        f"""apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, labels: {{app: {name}}}}}
subsets:
  - addresses: [{{ip: {BRIDGE_IP}}}]
    ports: [{{name: {port_name}, port: {relay_ports(infra)[name]}}}]
"""
        for name, (port_name, _port) in HOST_SERVICES.items()
    ]
    (overlay / "host-infrastructure.yaml").write_text("---\n".join(endpoints))
    patches = "".join(
        f"""  - patch: |-
      $patch: delete
      apiVersion: apps/v1
      kind: StatefulSet
      metadata: {{name: {name}}}
  - patch: |-
      apiVersion: v1
      kind: Service
      metadata: {{name: {name}}}
      spec: {{selector: null, clusterIP: null}}
"""
        for name in HOST_SERVICES
    )
    (overlay / "kustomization.yaml").write_text(
        f"""apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: video2mp3
resources: [../manifests, host-infrastructure.yaml]
patches:
{patches}configMapGenerator:
  - {{name: auth-config, behavior: merge, literals: [MYSQL_DB={infra.mysql_db}]}}
  - {{name: storage-config, behavior: merge, literals: [MONGO_DB={infra.mongo_db}_cluster]}}
  - {{name: gateway-config, behavior: merge, literals: [PUBLIC_BASE_URL={public_url}]}}
  - {{name: notifier-config, behavior: merge, literals: [PUBLIC_BASE_URL={public_url}]}}
"""
    )
    return overlay
