"""``python -m notifier`` as a process: events published to the real RabbitMQ (a virtual
host of these tests' own), the real AuthService, the real storage JobService (jobs with
real uploaded files), and the tests' SMTP sink."""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from common.amqp import Publisher, dead_queue
from common.events import RK_FAILED, RK_SUCCEEDED
from testing.infra import Infra, SmtpSink, rabbitmqctl
from testing.processes import ServiceProcess, free_port, python_module, wait_for
from tests.fixtures.auth import unique_email
from tests.fixtures.storage import StorageHandle

T = 10
WORKER = "test-converter"
BASE = "http://127.0.0.1:18080"
QUEUE = "mp3"
MP3_BYTES = b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40
ODD_NAME = "Sommer \u2013 Urlaub \U0001f3b5.mp4"


@dataclass
class RealStore:
    """Jobs in the real storage service, made the way gateway and converter make them."""

    storage: StorageHandle

    @property
    def address(self) -> str:
        return self.storage.address

    def _job(self, user: auth_pb2.User, filename: str) -> str:
        video = self.storage.upload(b"not really a video " * 100, owner_id=user.id, filename=filename)
        job = self.storage.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                owner_id=user.id, owner_email=user.email, video_id=video.id, filename=filename
            ),
            timeout=T,
        ).job
        claim = jobs_pb2.ClaimJobRequest(job_id=job.id, worker_id=WORKER)
        assert self.storage.jobs.ClaimJob(claim, timeout=T).claimed
        return job.id

    def succeeded(self, user: auth_pb2.User, filename: str) -> tuple[str, str]:
        job_id = self._job(user, filename)
        mp3 = self.storage.upload(
            MP3_BYTES,
            owner_id=user.id,
            bucket=storage_pb2.BUCKET_MP3S,
            filename=filename.rsplit(".", 1)[0] + ".mp3",
            content_type="audio/mpeg",
            job_id=job_id,
        )
        finish = jobs_pb2.FinishJobRequest(job_id=job_id, worker_id=WORKER, mp3_id=mp3.id)
        self.storage.jobs.FinishJob(finish, timeout=T)
        return job_id, mp3.id

    def failed(self, user: auth_pb2.User, filename: str, reason: str) -> str:
        job_id = self._job(user, filename)
        fail = jobs_pb2.FailJobRequest(job_id=job_id, worker_id=WORKER, reason=reason)
        self.storage.jobs.FailJob(fail, timeout=T)
        return job_id

    def notified(self, job_id: str) -> bool:
        return bool(self.storage.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=T).job.notified)


@pytest.fixture
def store(storage_service: StorageHandle) -> RealStore:
    return RealStore(storage_service)


@pytest.fixture(scope="module")
def vhost_url(infra: Infra) -> Iterator[str]:
    """A virtual host for these tests alone: other areas' events never reach this notifier."""
    vhost = f"{infra.vhost}-notifier"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, infra.env["RABBITMQ_USER"], ".*", ".*", ".*")
    e = infra.env
    try:
        yield (
            f"amqp://{e['RABBITMQ_USER']}:{e['RABBITMQ_PASSWORD']}@{e['RABBITMQ_HOST']}:{e['RABBITMQ_PORT']}/"
            + urllib.parse.quote(vhost, safe="")
        )
    finally:
        rabbitmqctl("delete_vhost", vhost)


@dataclass
class Running:
    process: ServiceProcess
    health_port: int
    publisher: Publisher

    def publish(self, event: Any) -> None:
        key = RK_SUCCEEDED if isinstance(event, events_pb2.ConversionSucceeded) else RK_FAILED
        self.publisher.publish(key, event, correlation_id=event.job_id)

    def log_count(self, text: str, job_id: str) -> int:
        count = 0
        for line in self.process.logs().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == text and entry.get("job_id") == job_id:
                count += 1
        return count


def _env(
    infra: Infra, vhost_url: str, smtp_sink: SmtpSink, auth_address: str, store: RealStore, health_port: int
) -> dict[str, str]:
    return {
        **smtp_sink.env(),
        "MAIL_FROM": "video2mp3 <noreply@video2mp3.test>",
        "PUBLIC_BASE_URL": BASE,
        "AUTH_SVC_ADDRESS": auth_address,
        "STORAGE_SVC_ADDRESS": store.address,
        "RABBITMQ_URL": vhost_url,
        "MP3_QUEUE": QUEUE,
        "NOTIFIER_RETRY_BASE_SECONDS": "0.5",
        "NOTIFIER_RETRY_MAX_SECONDS": "2",
        "NOTIFIER_MAX_ATTEMPTS": "40",
        "SMTP_TIMEOUT_SECONDS": "3",
        "NOTIFIER_HEALTH_PORT": str(health_port),
        "LOG_LEVEL": "INFO",
        "GRPC_TLS_DIR": str(infra.tls_dir),
    }


@pytest.fixture
def notifier_process(
    infra: Infra, vhost_url: str, smtp_sink: SmtpSink, auth_address: str, store: RealStore, tmp_path: Any
) -> Iterator[Running]:
    health_port = free_port()
    env = _env(infra, vhost_url, smtp_sink, auth_address, store, health_port)
    process = ServiceProcess(f"notifier-{health_port}", python_module("notifier"), env, tmp_path)
    process.start()
    publisher = Publisher(vhost_url)
    running = Running(process, health_port, publisher)
    try:
        wait_for(lambda: _ready(health_port), timeout=30, what="notifier ready")
        yield running
    finally:
        publisher.close()
        code = process.stop()
        assert code == 0, process.logs()[-3000:]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _register(auth: auth_pb2_grpc.AuthServiceStub, prefix: str) -> auth_pb2.User:
    request = auth_pb2.RegisterRequest(email=unique_email(prefix), password="a long password 123")
    return auth.Register(request, timeout=T).user


def _link(msg: Any) -> tuple[str, str, str]:
    body = msg.get_body(("plain",))
    assert body is not None
    [url] = [line for line in body.get_content().splitlines() if line.startswith(BASE)]
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", query["fid"][0], query["token"][0]


def _success_event(store: RealStore, user: auth_pb2.User, filename: str) -> events_pb2.ConversionSucceeded:
    job_id, mp3_id = store.succeeded(user, filename)
    return events_pb2.ConversionSucceeded(
        job_id=job_id, mp3_id=mp3_id, owner_id=user.id, owner_email=user.email, filename=filename
    )


def test_success_event_sends_one_mail_with_a_working_link(
    notifier_process: Running,
    store: RealStore,
    smtp_sink: SmtpSink,
    auth_stub: auth_pb2_grpc.AuthServiceStub,
) -> None:
    user = _register(auth_stub, "proc-ok")
    event = _success_event(store, user, ODD_NAME)
    notifier_process.publish(event)
    [msg] = smtp_sink.mailbox.wait_for(user.email, timeout=30)
    assert str(msg["X-Sink-Rcpt-To"]) == user.email and str(msg["To"]) == user.email
    assert msg["Subject"] == f"Your MP3 is ready: {ODD_NAME}"
    url, fid, token = _link(msg)
    assert url == f"{BASE}/download" and fid == event.mp3_id
    ok = auth_stub.ValidateDownloadToken(
        auth_pb2.ValidateDownloadTokenRequest(download_token=token, file_id=fid), timeout=T
    )
    assert ok.user.id == user.id
    # What the gateway's /download does with it (not built yet): the validated user and
    # file id fetch exactly the stored MP3.
    info, data, _ = store.storage.download(ok.file_id, owner_id=ok.user.id, bucket=storage_pb2.BUCKET_MP3S)
    assert data == MP3_BYTES and info.content_type == "audio/mpeg"
    with pytest.raises(grpc.RpcError) as caught:
        auth_stub.ValidateDownloadToken(
            auth_pb2.ValidateDownloadTokenRequest(download_token=token, file_id=fid[::-1]), timeout=T
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    wait_for(lambda: store.notified(event.job_id), timeout=10, what="notified mark")

    # The same event again (a duplicate, or a redelivery): nothing more is sent.
    notifier_process.publish(event)
    notifier_process.publish(event)
    wait_for(
        lambda: notifier_process.log_count("already notified; nothing sent", event.job_id) >= 2,
        timeout=30,
        what="duplicates handled",
    )
    assert len(smtp_sink.mailbox.to(user.email)) == 1


def test_failure_event_says_why(
    notifier_process: Running, store: RealStore, smtp_sink: SmtpSink, auth_stub: auth_pb2_grpc.AuthServiceStub
) -> None:
    user = _register(auth_stub, "proc-failed")
    reason = "the file has no sound track"
    job_id = store.failed(user, "mute.mov", reason)
    notifier_process.publish(
        events_pb2.ConversionFailed(
            job_id=job_id, owner_id=user.id, owner_email=user.email, filename="mute.mov", reason=reason
        )
    )
    [msg] = smtp_sink.mailbox.wait_for(user.email, timeout=30)
    assert msg["Subject"] == "We could not convert mute.mov"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert f"Why: {reason}" in text.get_content() and reason in html.get_content()


def test_sink_down_for_a_while_then_the_mail_arrives_once(
    notifier_process: Running, store: RealStore, smtp_sink: SmtpSink, auth_stub: auth_pb2_grpc.AuthServiceStub
) -> None:
    user = _register(auth_stub, "proc-down")
    event = _success_event(store, user, "late.mp4")
    smtp_sink.stop()
    try:
        notifier_process.publish(event)
        wait_for(
            lambda: notifier_process.log_count("transient failure", event.job_id) >= 2,
            timeout=30,
            what="retries while the sink is down",
        )
        assert not store.notified(event.job_id)
    finally:
        smtp_sink.start()
    smtp_sink.mailbox.wait_for(user.email, timeout=30)
    wait_for(lambda: store.notified(event.job_id), timeout=10, what="notified mark")
    time.sleep(2)  # any stray retry would have sent its copy by now
    assert len(smtp_sink.mailbox.to(user.email)) == 1


def test_bad_message_is_parked_and_the_consumer_keeps_going(
    notifier_process: Running,
    store: RealStore,
    smtp_sink: SmtpSink,
    auth_stub: auth_pb2_grpc.AuthServiceStub,
    infra: Infra,
    vhost_url: str,
) -> None:
    user = _register(auth_stub, "proc-park")
    bad = _success_event(store, user, "x.mp4")
    bad.owner_id = "424242"  # does not match the job: never mailed, parked
    before = _depth(vhost_url, dead_queue(QUEUE))
    notifier_process.publish(bad)
    wait_for(lambda: _depth(vhost_url, dead_queue(QUEUE)) == before + 1, timeout=30, what="parked message")
    good = _success_event(store, user, "y.mp4")
    notifier_process.publish(good)
    [msg] = smtp_sink.mailbox.wait_for(user.email, timeout=30)
    assert msg["Subject"] == "Your MP3 is ready: y.mp4"
    assert notifier_process.process.alive()


def test_notifier_killed_between_send_and_mark_sends_one_email(
    infra: Infra,
    vhost_url: str,
    smtp_sink: SmtpSink,
    auth_address: str,
    store: RealStore,
    auth_stub: auth_pb2_grpc.AuthServiceStub,
    tmp_path: Any,
) -> None:
    marker = tmp_path / "sent"
    port = free_port()
    env = {**_env(infra, vhost_url, smtp_sink, auth_address, store, port), "NOTIFY_LEASE_SECONDS": "3"}
    paused = ServiceProcess(
        "notifier-paused",
        python_module("tests.notifier_paused"),
        {**env, "PAUSED_MARKER": str(marker)},
        tmp_path,
    ).start()
    publisher = Publisher(vhost_url)
    second: ServiceProcess | None = None
    try:
        wait_for(lambda: _ready(port), timeout=30, what="notifier ready")
        user = _register(auth_stub, "proc-kill")
        event = _success_event(store, user, "killed.mp4")
        publisher.publish(RK_SUCCEEDED, event, correlation_id=event.job_id)
        wait_for(marker.exists, timeout=30, what="the email sent, the mark not yet")
        smtp_sink.mailbox.wait_for(user.email, timeout=30)
        paused.signal(signal.SIGKILL)  # dies between the SMTP "250 OK" and the mark
        assert not store.notified(event.job_id)
        port = free_port()
        env["NOTIFIER_HEALTH_PORT"] = str(port)
        second = ServiceProcess(f"notifier-{port}", python_module("notifier"), env, tmp_path)
        second.start()  # the message comes back to this one
        wait_for(
            lambda: store.notified(event.job_id), timeout=60, what="notified mark by the second notifier"
        )
        publisher.publish(RK_SUCCEEDED, event, correlation_id=event.job_id)  # and a duplicate
        time.sleep(2)
        assert len(smtp_sink.mailbox.to(user.email)) == 1
    finally:
        publisher.close()
        paused.stop()
        if second is not None:
            second.stop()


def test_sigterm_stops_cleanly(notifier_process: Running) -> None:
    notifier_process.process.signal(signal.SIGTERM)
    assert notifier_process.process.proc is not None
    assert notifier_process.process.proc.wait(20) == 0


def _depth(url: str, queue: str) -> int:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()
