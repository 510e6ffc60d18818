"""The README's walkthrough, run with curl against a running system on free ports.

Shared by the tests of `make up`'s system (tests/test_system_walkthrough.py) and of the same
system in containers from the image (tests/test_image_system.py): both start the system with
``system_env(...)`` and check it with ``run_walkthrough(...)``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from testing.infra import Infra, SmtpSink
from testing.media import audio_duration
from testing.processes import ROOT, free_port

PORT_SETTINGS = (
    "GATEWAY_PORT",
    "AUTH_PORT",
    "STORAGE_PORT",
    "CONVERTER_HEALTH_PORT",
    "NOTIFIER_HEALTH_PORT",
    "SWEEPER_HEALTH_PORT",
    "AUTH_HEALTH_PORT",
    "STORAGE_HEALTH_PORT",
)


def walkthrough_script() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return block.strip().removeprefix("```sh").removesuffix("```")


def system_env(infra: Infra, sink: SmtpSink, work: Path) -> dict[str, str]:
    """The environment for a script that starts the whole system (dev/up.sh, dev/image.sh):
    free ports, this session's databases and vhost, its own SMTP sink and RUN_DIR."""
    ports = {name: str(free_port()) for name in PORT_SETTINGS}
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
        "GRPC_TLS_DIR": str(infra.tls_dir),  # the session's certificates
        "WORK": str(work),
    }
    env.pop("PYTHONPATH", None)
    return env


def run_walkthrough(system: dict[str, str]) -> None:
    """Runs the README's walkthrough literally (but for the gateway's port) and checks its MP3s."""
    work = Path(system["WORK"]) / "walk"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "tests").symlink_to(ROOT / "tests")
    (work / "dev").symlink_to(ROOT / "dev")
    port = system["GATEWAY_PORT"]
    script = walkthrough_script().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    # The job normally finishes within the walkthrough's pause; on a busy machine wait longer.
    script = script.replace(
        "sleep 5",
        f"for i in $(seq 60); do curl -s http://127.0.0.1:{port}"
        '/jobs/$JOB -H "Authorization: Bearer $TOKEN" '
        "| grep -q '\"succeeded\"' && break; sleep 1; done; "
        ".venv/bin/python dev/mail.py --link --to alice@example.com >/dev/null || sleep 5",
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work,
        env={**system, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"},
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
