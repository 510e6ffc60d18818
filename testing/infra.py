"""Real infrastructure for a test session or a benchmark run.

The servers are shared (started once by ``dev/infra.sh up``); each test session gets
its own MySQL database, MongoDB database, RabbitMQ virtual host and SMTP sink, so
several test runs and a ``make up`` system can use the same servers side by side.
Each session also makes its own project CA and certificates (dev/certs.py): every gRPC
server and client of the tests speaks mutual TLS, as in production.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import secrets
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import grpc
import pika
import pymongo
import pymysql

from common.grpc_client import secure_channel
from common.grpc_tls import GrpcTls
from dev.certs import ensure_certificates
from testing.processes import ROOT, ServiceProcess, free_port, port_open, python_module, wait_for


def _infra_env() -> dict[str, str]:
    """The defaults of dev/defaults.env as the shell computes them (one source of truth)."""
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT}/dev/defaults.env && env -0"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "dev/infra.sh"), "rabbitmqctl", *args], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


@dataclass
class Infra:
    """Addresses and credentials for this test session's slice of the infrastructure."""

    env: dict[str, str]
    run_id: str
    mysql_db: str
    mongo_db: str
    vhost: str
    work_dir: Path
    tls_dir: Path
    _extra: dict[str, str] = field(default_factory=dict)

    def tls(self, identity: str = "operator") -> GrpcTls:
        """The session's certificate of ``identity`` (gateway, converter, … operator)."""
        return GrpcTls.load(self.tls_dir, identity)

    def channel(self, address: str, identity: str = "operator") -> grpc.Channel:
        """A mutual-TLS channel as ``identity``; the operator may call every method."""
        return secure_channel(address, self.tls(identity))

    def grpcurl_tls(self, identity: str = "operator") -> list[str]:
        """grpcurl's arguments for mutual TLS as ``identity`` (as the README shows)."""
        d = self.tls_dir
        return [
            "-cacert",
            str(d / "ca.crt"),
            "-cert",
            str(d / f"{identity}.crt"),
            "-key",
            str(d / f"{identity}.key"),
        ]

    @property
    def rabbitmq_url(self) -> str:
        e = self.env
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{e['RABBITMQ_USER']}:{e['RABBITMQ_PASSWORD']}@{e['RABBITMQ_HOST']}:{e['RABBITMQ_PORT']}/{vhost}"

    @property
    def mongo_uri(self) -> str:
        return self.env["MONGO_URI"]

    def service_env(self, **overrides: str) -> dict[str, str]:
        """Environment for a service started by the tests (every setting explicit)."""
        e = self.env
        base = {
            "MYSQL_HOST": e["MYSQL_HOST"],
            "MYSQL_PORT": e["MYSQL_PORT"],
            "MYSQL_USER": e["MYSQL_USER"],
            "MYSQL_PASSWORD": e["MYSQL_PASSWORD"],
            "MYSQL_DB": self.mysql_db,
            "MONGO_URI": self.mongo_uri,
            "MONGO_DB": self.mongo_db,
            "RABBITMQ_URL": self.rabbitmq_url,
            "JWT_SECRET": self._extra.setdefault("JWT_SECRET", secrets.token_urlsafe(48)),
            "LOG_LEVEL": "INFO",
            # Tests sign up many users from loopback; the limit is tested with its own value.
            "REGISTER_MAX_PER_ADDRESS": "1000000",
            "GRPC_TLS_DIR": str(self.tls_dir),
        }
        base.update(overrides)
        return base

    def mysql(self) -> pymysql.connections.Connection:
        e = self.env
        return pymysql.connect(
            host=e["MYSQL_HOST"],
            port=int(e["MYSQL_PORT"]),
            user=e["MYSQL_USER"],
            password=e["MYSQL_PASSWORD"],
            database=self.mysql_db,
            autocommit=True,
        )

    def mongo(self) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.mongo_uri, serverSelectionTimeoutMS=5000)

    def amqp(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.rabbitmq_url))

    def queue_depth(self, queue: str) -> int:
        connection = self.amqp()
        try:
            return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            connection.close()


@contextlib.contextmanager
def infra_slice(work_dir: Path, kind: str = "test") -> Iterator[Infra]:
    """Start the shared servers if needed and take a slice of them: an own MySQL database,
    MongoDB database and RabbitMQ virtual host, removed afterwards."""
    subprocess.run(["bash", str(ROOT / "dev/infra.sh"), "up"], check=True, timeout=1500)
    env = _infra_env()
    run_id = f"{os.getpid()}_{secrets.token_hex(3)}"
    result = Infra(
        env=env,
        run_id=run_id,
        mysql_db=f"video2mp3_{kind}_{run_id}",
        mongo_db=f"video2mp3_{kind}_{run_id}",
        vhost=f"video2mp3-{kind}-{run_id}",
        work_dir=work_dir,
        tls_dir=work_dir / "certs",
    )
    ensure_certificates(result.tls_dir)
    admin = pymysql.connect(
        host=env["MYSQL_HOST"],
        port=int(env["MYSQL_PORT"]),
        user=env["MYSQL_USER"],
        password=env["MYSQL_PASSWORD"],
        autocommit=True,
    )
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{result.mysql_db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    rabbitmqctl("add_vhost", result.vhost)
    rabbitmqctl("set_permissions", "-p", result.vhost, env["RABBITMQ_USER"], ".*", ".*", ".*")
    try:
        yield result
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{result.mysql_db}`")
        admin.close()
        client = result.mongo()
        client.drop_database(result.mongo_db)
        client.close()
        rabbitmqctl("delete_vhost", result.vhost)


class Mailbox:
    """Messages received by an SMTP sink that the tests started."""

    def __init__(self, directory: Path, host: str, port: int) -> None:
        self.directory = directory
        self.host = host
        self.port = port

    def messages(self) -> list[EmailMessage]:
        found = []
        for path in sorted(self.directory.glob("*.eml"), key=lambda p: p.stat().st_mtime):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            found.append(msg)
        return found

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages() if address.lower() in str(m.get("X-Sink-Rcpt-To", "")).lower()]

    def wait_for(self, address: str, count: int = 1, timeout: float = 60.0) -> list[EmailMessage]:
        return wait_for(
            lambda: (lambda got: got if len(got) >= count else None)(self.to(address)),
            timeout=timeout,
            what=f"{count} email(s) to {address}",
        )

    def clear(self) -> None:
        for path in self.directory.glob("*.eml"):
            path.unlink()


class SmtpSink:
    """An SMTP sink process of the tests' own, so a test can stop and restart it."""

    def __init__(self, work_dir: Path, smtputf8: bool = False) -> None:
        self.port = free_port()
        self.mailbox = Mailbox(work_dir / "mail", "127.0.0.1", self.port)
        self.process = ServiceProcess(
            f"smtp-sink-{self.port}",
            [
                *python_module("dev.smtp_sink")[:1],
                str(ROOT / "dev/smtp_sink.py"),
                "--port",
                str(self.port),
                "--maildir",
                str(self.mailbox.directory),
                *(["--smtputf8"] if smtputf8 else []),
            ],
            {},
            work_dir,
        )

    def start(self) -> None:
        self.process.start()
        wait_for(lambda: port_open("127.0.0.1", self.port), timeout=20, what="SMTP sink")

    def stop(self) -> None:
        self.process.stop()

    def env(self) -> dict[str, str]:
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "SMTP_SECURITY": "none"}
