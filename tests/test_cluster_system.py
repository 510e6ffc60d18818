"""The system on a real single-node Kubernetes assembled here (dev/cluster.sh; make cluster-test).

`make cluster-test` brings the cluster up, runs this module with VIDEO2MP3_CLUSTER=1 and takes
the cluster down; elsewhere it is skipped. The manifests are applied with `kubectl apply -k`
through tests/cluster_overlay.py (only the unobtainable infrastructure images give way to the
host's servers); every Deployment must become Ready with its probes passing, the README
walkthrough runs through a port-forward, a converter killed mid-job loses nothing, and the
converters scale.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from testing.infra import Infra, SmtpSink
from testing.media import MediaSpec, audio_duration, make_media
from testing.processes import ROOT, ServiceProcess, free_port, port_open, wait_for
from tests.cluster_overlay import BRIDGE_IP, make_overlay, relay_ports
from tests.walkthrough import run_walkthrough

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("VIDEO2MP3_CLUSTER"), reason="needs the cluster: make cluster-test"
    ),
    pytest.mark.timeout(1800),
]
NAMESPACE = "video2mp3"
SERVICES = ("gateway", "auth", "storage", "converter", "notifier")


def kubectl(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "dev/cluster.sh"), "kubectl", "-n", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def relay(name: str, port: int, work: Path) -> ServiceProcess:
    args = ["socat", f"TCP-LISTEN:{port},bind={BRIDGE_IP},reuseaddr,fork", f"TCP:127.0.0.1:{port}"]
    return ServiceProcess(f"relay-{name}", args, {}, work).start()


@pytest.fixture(scope="module")
def deployed(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    work = tmp_path_factory.mktemp("cluster")
    sink = SmtpSink(work)
    sink.start()
    relays = [relay(name, port, work) for name, port in relay_ports(infra).items()]
    relays.append(relay("smtp", sink.port, work))
    local_port = free_port()
    public_url = f"http://127.0.0.1:{local_port}"
    overlay = make_overlay(work, infra, sink.port, public_url, infra.service_env()["JWT_SECRET"])
    forward = None
    try:
        kubectl("apply", "-k", str(overlay), timeout=300)
        subprocess.run(["bash", str(ROOT / "dev/cluster.sh"), "dns"], check=True, timeout=60)
        for service in SERVICES:
            kubectl("rollout", "status", f"deployment/{service}", "--timeout=600s", timeout=660)
        forward = ServiceProcess(
            "port-forward",
            ["bash", str(ROOT / "dev/cluster.sh"), "kubectl", "-n", NAMESPACE, "port-forward",
             "--address", "127.0.0.1", "service/gateway", f"{local_port}:8080"],
            {},
            work,
        ).start()  # fmt: skip
        wait_for(lambda: port_open("127.0.0.1", local_port), timeout=60, what="the port-forward")
        yield {
            **os.environ,
            "GATEWAY_PORT": str(local_port),
            "PUBLIC_BASE_URL": public_url,
            "SMTP_SINK_DIR": str(sink.mailbox.directory),
            "WORK": str(work),
        }
    finally:
        if forward:
            forward.stop()
        kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=600s", timeout=660, check=False)
        for process in relays:
            process.stop()
        sink.stop()
        client = infra.mongo()
        client.drop_database(f"{infra.mongo_db}_cluster")
        client.close()


def pods(app: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = json.loads(kubectl("get", "pods", "-l", f"app={app}", "-o", "json"))[
        "items"
    ]
    return items


def test_every_deployment_is_ready_with_its_probes(deployed: dict[str, str]) -> None:
    def all_ready(service: str) -> Callable[[], bool]:
        return lambda: ready_replicas(service)

    def ready_replicas(service: str) -> bool:
        status = json.loads(kubectl("get", f"deployment/{service}", "-o", "json"))["status"]
        return bool(status.get("readyReplicas", 0) == status.get("replicas", -1) >= 1)

    for service in SERVICES:
        # The gateway's HorizontalPodAutoscaler raises it to its minimum of 2 after the rollout.
        wait_for(all_ready(service), timeout=180, interval=1, what=f"every {service} pod ready")
        for pod in pods(service):
            status = pod["status"]
            assert isinstance(status, dict)
            (container,) = status["containerStatuses"]
            assert container["ready"] and container["started"], f"{service}: {container}"


def test_readme_walkthrough_through_a_port_forward(deployed: dict[str, str]) -> None:
    run_walkthrough(deployed)


def test_a_converter_killed_mid_job_loses_nothing(deployed: dict[str, str], tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{deployed['GATEWAY_PORT']}"
    user = ("kill@example.com", "a long passphrase for the kill")
    requests.post(f"{base}/register", json={"email": user[0], "password": user[1]}, timeout=30)
    token = requests.post(f"{base}/login", auth=user, timeout=30).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    video = make_media(tmp_path / "long.mp4", MediaSpec(duration=900.0))
    with video.open("rb") as f:
        job = requests.post(f"{base}/upload", headers=auth, files={"file": f}, timeout=120).json()["job_id"]

    def state() -> str:
        return str(requests.get(f"{base}/jobs/{job}", headers=auth, timeout=30).json()["state"])

    wait_for(lambda: state() == "converting", timeout=120, interval=0.2, what="the job converting")
    victims = [str(p["metadata"]["name"]) for p in pods("converter")]  # type: ignore[index]
    assert state() == "converting"  # still mid-job: the kill below hits the conversion
    kubectl("delete", "pod", *victims, "--grace-period=0", "--force", timeout=120)
    assert state() != "succeeded", "the job finished before the kill: no kill mid-job was tested"
    wait_for(
        lambda: state() == "succeeded", timeout=600, interval=1, what="the job to succeed after the kill"
    )
    fid = requests.get(f"{base}/jobs/{job}", headers=auth, timeout=30).json()["mp3_id"]
    mp3 = tmp_path / "out.mp3"
    mp3.write_bytes(requests.get(f"{base}/download", params={"fid": fid}, headers=auth, timeout=120).content)
    assert abs(audio_duration(mp3) - 900.0) < 0.5
    mailbox = Path(deployed["SMTP_SINK_DIR"])
    time.sleep(5)  # a second email, if one were sent, would come within the notifier's retries
    mails = [p for p in mailbox.glob("*.eml") if user[0] in p.read_text(errors="replace")]
    assert len(mails) == 1, [p.name for p in mails]


def test_converters_scale(deployed: dict[str, str]) -> None:
    kubectl("scale", "deployment/converter", "--replicas=3")
    kubectl("rollout", "status", "deployment/converter", "--timeout=300s", timeout=330)
    assert json.loads(kubectl("get", "deployment/converter", "-o", "json"))["status"]["readyReplicas"] == 3
