"""The whole system for sections 2 and 3: its own slice of the shared servers (MySQL
database, Mongo database, RabbitMQ virtual host, SMTP sink), the five services started as
processes with the shared helpers of testing/, and an HTTP client of the documented API.

    with System.started(work_dir, converters=2) as system:
        client = system.client()
        ...
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dev.wait_healthy import grpc_serving, http_ok
from testing.infra import Infra, SmtpSink, rabbitmqctl
from testing.infra import infra_slice as shared_infra_slice
from testing.processes import ROOT, ServiceProcess, free_port, python_module, wait_for

GIB = 1024**3
SERVICES = {  # what must exist on this branch for the whole system to run
    "auth": "auth/__main__.py",
    "storage": "storage/__main__.py",
    "gateway": "gateway/app.py",
    "converter": "converter/__main__.py",
    "notifier": "notifier/__main__.py",
}


@contextlib.contextmanager
def work_dir(cache: Path, prefix: str) -> Iterator[Path]:
    """A scratch directory for one section (service logs, outputs): removed when the section
    succeeds, kept (and named on stderr) when it fails, for the services' logs."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=cache))
    try:
        yield path
    except BaseException:
        print(f"[bench] kept {path} (service logs: {path}/*.log)", file=sys.stderr)
        raise
    shutil.rmtree(path, ignore_errors=True)


class SystemUnavailable(Exception):
    """The system cannot be benchmarked on this branch (services or endpoints missing)."""


def missing_services() -> list[str]:
    return [name for name, path in SERVICES.items() if not (ROOT / path).exists()]


def infra_slice(work_dir: Path) -> contextlib.AbstractContextManager[Infra]:
    """Like the tests' ``infra`` fixture: own MySQL db, Mongo db and vhost on the shared servers."""
    return shared_infra_slice(work_dir, kind="bench")


@dataclass
class System:
    infra: Infra
    sink: SmtpSink
    work_dir: Path
    max_upload_bytes: int = 2 * GIB
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def started(
        cls,
        work_dir: Path,
        converters: int = 1,
        with_converters: bool = True,
        gateway_env: dict[str, str] | None = None,
    ) -> Iterator[System]:
        missing = missing_services()
        if missing:
            raise SystemUnavailable(f"not on this branch yet: {', '.join(missing)}")
        with infra_slice(work_dir) as infra:
            sink = SmtpSink(work_dir)
            sink.start()
            system = cls(infra, sink, work_dir)
            try:
                system._start_core(gateway_env or {})
                if with_converters:
                    system.start_converters(converters)
                yield system
            finally:
                system.stop_all()
                sink.stop()

    # -- processes
    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def _env(self, **extra: str) -> dict[str, str]:
        return self.infra.service_env(
            BIND_HOST="127.0.0.1",
            AUTH_SVC_ADDRESS=f"127.0.0.1:{self.ports['auth']}",
            STORAGE_SVC_ADDRESS=f"127.0.0.1:{self.ports['storage']}",
            PUBLIC_BASE_URL=f"http://127.0.0.1:{self.ports['gateway']}",
            MAIL_FROM="video2mp3 bench <noreply@video2mp3.local>",
            MAX_UPLOAD_BYTES=str(self.max_upload_bytes),
            LOG_LEVEL="WARNING",
            **self.sink.env(),
            **extra,
        )

    def _start(self, name: str, args: list[str], ready: Any, **env: str) -> ServiceProcess:
        process = ServiceProcess(name, args, self._env(**env), self.work_dir).start()
        self.processes[name] = process

        def check() -> bool:
            if not process.alive():
                raise SystemUnavailable(f"{name} exited at start:\n{process.logs()[-3000:]}")
            return bool(ready())

        try:
            wait_for(check, timeout=90, interval=0.2, what=f"{name} ready")
        except AssertionError as error:
            raise SystemUnavailable(
                f"{name} did not become ready: {error}\n{process.logs()[-3000:]}"
            ) from None
        return process

    def _start_core(self, gateway_env: dict[str, str]) -> None:
        for name in ("auth", "storage", "gateway"):
            self.ports[name] = free_port()
        self._start(
            "storage",
            python_module("storage"),
            lambda: grpc_serving(f"127.0.0.1:{self.ports['storage']}", self.infra.tls()),
            STORAGE_PORT=str(self.ports["storage"]),
        )
        self._start(
            "auth",
            python_module("auth"),
            lambda: grpc_serving(f"127.0.0.1:{self.ports['auth']}", self.infra.tls()),
            AUTH_PORT=str(self.ports["auth"]),
        )
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        self._start(
            "gateway",
            [gunicorn, "--config", "python:gateway.gunicorn_conf", "gateway.app:create_app()"],
            lambda: http_ok(f"{self.gateway_url}/readyz"),
            GATEWAY_PORT=str(self.ports["gateway"]),
            **gateway_env,
        )
        notifier_port = free_port()
        self._start(
            "notifier",
            python_module("notifier"),
            lambda: http_ok(f"http://127.0.0.1:{notifier_port}/healthz"),
            NOTIFIER_HEALTH_PORT=str(notifier_port),
        )

    def start_converters(self, count: int) -> list[ServiceProcess]:
        started = []
        for index in range(count):
            port = free_port()
            name = f"converter-{len([n for n in self.processes if n.startswith('converter')]) + 1}"
            started.append(
                self._start(
                    name,
                    python_module("converter"),
                    lambda port=port: http_ok(f"http://127.0.0.1:{port}/readyz"),
                    CONVERTER_HEALTH_PORT=str(port),
                    CONVERTER_WORKERS="1",
                    CONVERTER_PREFETCH="1",
                )
            )
            del index
        return started

    def stop_converters(self) -> None:
        for name in [n for n in self.processes if n.startswith("converter")]:
            self.processes.pop(name).stop(timeout=30)

    def stop_all(self) -> None:
        for name in [
            "gateway",
            *[n for n in self.processes if n.startswith("converter")],
            "notifier",
            "auth",
            "storage",
        ]:
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop(timeout=30)

    def pids(self, *names: str) -> dict[str, int]:
        return {name: self.processes[name].pid for name in names}

    def all_pids(self) -> dict[str, int]:
        """Every service process, and the local MongoDB-compatible server when infra runs one."""
        found = {name: process.pid for name, process in self.processes.items()}
        pid_file = Path(self.infra.env["INFRA_DIR"]) / "ferretdb.pid"  # dev/defaults.env always sets it
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            found["ferretdb"] = pid
        return found

    def purge(self, queue: str = "video") -> None:
        """Drop queued messages (uploads made only to measure streaming are never converted)."""
        with contextlib.suppress(RuntimeError):
            rabbitmqctl("purge_queue", "-p", self.infra.vhost, queue)

    def emails(self) -> int:
        directory = self.sink.mailbox.directory
        return len(list(directory.glob("*.eml"))) if directory.exists() else 0

    def client(self) -> Client:
        return Client("127.0.0.1", self.ports["gateway"])


class ApiError(Exception):
    def __init__(self, what: str, status: int, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {' '.join(body.split())[:500]}")
        self.status = status


class Client:
    """The documented HTTP API, over http.client: uploads stream from disk in 1 MiB pieces."""

    CHUNK = 1024 * 1024

    def __init__(self, host: str, port: int, timeout: float = 1800) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.token = ""

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _json(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        conn = self._conn()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw or b"null")
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def register_and_login(self, email: str, password: str) -> None:
        status, body = self._json(
            "POST",
            "/register",
            json.dumps({"email": email, "password": password}).encode(),
            {"Content-Type": "application/json"},
        )
        if status not in (200, 201, 409):
            raise ApiError("POST /register", status, str(body))
        basic = base64.b64encode(f"{email}:{password}".encode()).decode()
        status, body = self._json("POST", "/login", b"", {"Authorization": f"Basic {basic}"})
        if status != 200 or not isinstance(body, dict):
            raise ApiError("POST /login", status, str(body))
        self.token = str(body.get("access_token") or body.get("token") or "")

    def upload(self, path: Path, content_type: str = "video/mp4") -> dict[str, Any]:
        """POST /upload as multipart/form-data, streamed; the 202 body (job_id, video_id, status_url)."""
        boundary = secrets.token_hex(16)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = path.stat().st_size
        conn = self._conn()
        try:
            conn.putrequest("POST", "/upload")
            conn.putheader("Authorization", f"Bearer {self.token}")
            conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("Content-Length", str(len(head) + size + len(tail)))
            conn.endheaders()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # an early answer (413)
                conn.send(head)
                with path.open("rb") as handle:
                    while chunk := handle.read(self.CHUNK):
                        conn.send(chunk)
                conn.send(tail)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        if response.status == 404:
            raise SystemUnavailable("the gateway has no POST /upload yet")
        if response.status != 202:
            raise ApiError("POST /upload", response.status, raw.decode(errors="replace"))
        body = json.loads(raw)
        assert isinstance(body, dict)
        return body

    def me(self) -> dict[str, Any]:
        status, body = self._json("GET", "/me", headers=self._auth())
        if status != 200 or not isinstance(body, dict):
            raise ApiError("GET /me", status, str(body))
        return body

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = self._json("GET", f"/jobs/{job_id}", headers=self._auth())
        if status != 200 or not isinstance(body, dict):
            raise ApiError(f"GET /jobs/{job_id}", status, str(body))
        return body.get("job", body) if isinstance(body.get("job"), dict) else body

    @staticmethod
    def state(job: dict[str, Any]) -> str:
        return str(job.get("state") or job.get("status") or "").lower()

    def download(self, fid: str) -> int:
        """GET /download?fid=…, read to the end in 1 MiB pieces and dropped; the byte count."""
        conn = self._conn()
        try:
            conn.request("GET", f"/download?fid={fid}", headers=self._auth())
            response = conn.getresponse()
            if response.status != 200:
                raise ApiError("GET /download", response.status, response.read().decode(errors="replace"))
            total = 0
            while chunk := response.read(self.CHUNK):
                total += len(chunk)
            return total
        finally:
            conn.close()

    def wait_finished(self, job_id: str, timeout: float, interval: float = 0.25) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if self.state(job) in ("succeeded", "failed"):
                return job
            time.sleep(interval)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s")
