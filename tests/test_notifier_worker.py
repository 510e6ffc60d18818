"""The notifier's handler in-process: real AuthService (MariaDB), scripted SMTP server,
and a JobService stand-in that can be made to fail."""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pika
import pytest
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2

from common.amqp import Delivery, Outcome, TransientError
from notifier.mailer import Mailer, SmtpConfig
from notifier.messages import parse_sender
from notifier.worker import Notifier, WorkerConfig
from testing.infra import Infra
from tests.fixtures.auth import auth_env, unique_email
from tests.fixtures.notifier import FakeJobServer, ScriptedSmtp

T = 10
BASE = "https://v2m.example"


def register(auth: auth_pb2_grpc.AuthServiceStub, email: str) -> auth_pb2.User:
    return auth.Register(
        auth_pb2.RegisterRequest(email=email, password="a long password 123"), timeout=T
    ).user


def make_notifier(
    fake_jobs: FakeJobServer, auth: auth_pb2_grpc.AuthServiceStub, smtp_port: int, ttl: int = 3600
) -> Notifier:
    return Notifier(
        jobs=fake_jobs.stub,
        auth=auth,
        mailer=Mailer(SmtpConfig("127.0.0.1", smtp_port, timeout_seconds=5)),
        config=WorkerConfig(
            sender=parse_sender("video2mp3 <noreply@video2mp3.test>"),
            public_base_url=BASE,
            link_ttl_seconds=ttl,
            grpc_timeout_seconds=5,
            mark_retry_seconds=0.01,
        ),
        sleep=lambda _s: None,
    )


def delivery(event: Any, attempt: int = 1, type_: str | None = None) -> Delivery:
    props = pika.BasicProperties(
        type=type_ if type_ is not None else event.DESCRIPTOR.full_name,
        correlation_id=getattr(event, "job_id", ""),
        message_id=uuid.uuid4().hex,
    )
    return Delivery(event.SerializeToString(), props, "conversion.x", False, attempt)


@pytest.fixture
def user(auth_stub: auth_pb2_grpc.AuthServiceStub) -> auth_pb2.User:
    return register(auth_stub, unique_email("notify"))


@pytest.fixture
def notifier(
    fake_jobs: FakeJobServer, auth_stub: auth_pb2_grpc.AuthServiceStub, scripted_smtp: ScriptedSmtp
) -> Notifier:
    return make_notifier(fake_jobs, auth_stub, scripted_smtp.port)


def succeeded(fake_jobs: FakeJobServer, user: auth_pb2.User, **job: Any) -> events_pb2.ConversionSucceeded:
    fields = {
        "owner_id": user.id,
        "owner_email": user.email,
        "filename": "holiday.mp4",
        "state": jobs_pb2.JOB_STATE_SUCCEEDED,
        "mp3_id": uuid.uuid4().hex[:24],
        **job,
    }
    record = fake_jobs.jobs.add(**fields)
    return events_pb2.ConversionSucceeded(
        job_id=record.id,
        mp3_id=record.mp3_id,
        owner_id=user.id,
        owner_email=user.email,
        filename=record.filename,
        duration_seconds=61,
    )


def link_of(msg: Any) -> tuple[str, str, str]:
    text = msg.get_body(("plain",)).get_content()
    [url] = [line for line in text.splitlines() if line.startswith(BASE)]
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", query["fid"][0], query["token"][0]


def test_success_mail_holds_a_working_link(
    notifier: Notifier,
    fake_jobs: FakeJobServer,
    user: auth_pb2.User,
    scripted_smtp: ScriptedSmtp,
    auth_stub: auth_pb2_grpc.AuthServiceStub,
) -> None:
    event = succeeded(fake_jobs, user)
    assert notifier.handle(delivery(event)) is Outcome.ACK
    [msg] = scripted_smtp.handler.received
    assert str(msg["To"]) == user.email and msg["Subject"] == "Your MP3 is ready: holiday.mp4"
    url, fid, token = link_of(msg)
    assert url == f"{BASE}/download" and fid == event.mp3_id
    valid = auth_stub.ValidateDownloadToken(
        auth_pb2.ValidateDownloadTokenRequest(download_token=token, file_id=fid), timeout=T
    )
    assert valid.user.id == user.id and valid.file_id == event.mp3_id
    with pytest.raises(grpc.RpcError) as caught:
        auth_stub.ValidateDownloadToken(
            auth_pb2.ValidateDownloadTokenRequest(download_token=token, file_id="another-file"), timeout=T
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert fake_jobs.jobs.jobs[event.job_id].notified


@pytest.fixture
def strict_auth(infra: Infra) -> Iterator[auth_pb2_grpc.AuthServiceStub]:
    """A second AuthService on the same database and secret, without clock leeway."""
    from auth.server import create_server
    from auth.settings import Settings

    srv = create_server(Settings.from_env(auth_env(infra, JWT_LEEWAY_SECONDS="0")), port=0)
    srv.server.start()
    srv.set_serving(True)
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    try:
        yield auth_pb2_grpc.AuthServiceStub(channel)
    finally:
        channel.close()
        srv.stop(0.5)


def test_link_stops_working_when_it_expires(
    fake_jobs: FakeJobServer,
    user: auth_pb2.User,
    scripted_smtp: ScriptedSmtp,
    strict_auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    notifier = make_notifier(fake_jobs, strict_auth, scripted_smtp.port, ttl=2)
    assert notifier.handle(delivery(succeeded(fake_jobs, user))) is Outcome.ACK
    _, fid, token = link_of(scripted_smtp.handler.received[0])
    request = auth_pb2.ValidateDownloadTokenRequest(download_token=token, file_id=fid)
    assert strict_auth.ValidateDownloadToken(request, timeout=T).file_id == fid
    time.sleep(3.2)
    with pytest.raises(grpc.RpcError) as caught:
        strict_auth.ValidateDownloadToken(request, timeout=T)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_duplicates_send_one_mail(
    notifier: Notifier, fake_jobs: FakeJobServer, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    event = succeeded(fake_jobs, user)
    outcomes: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(notifier.handle(delivery(event)))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert notifier.handle(delivery(event, attempt=3)) is Outcome.ACK
    assert outcomes == [Outcome.ACK] * 6
    assert len(scripted_smtp.handler.received) == 1
    assert fake_jobs.jobs.mark_calls == 1


def test_mark_failing_after_send_never_sends_twice(
    notifier: Notifier, fake_jobs: FakeJobServer, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    event = succeeded(fake_jobs, user)
    fake_jobs.jobs.fail_marks = 10
    with pytest.raises(TransientError):
        notifier.handle(delivery(event))
    assert len(scripted_smtp.handler.received) == 1
    fake_jobs.jobs.fail_marks = 0
    assert notifier.handle(delivery(event, attempt=2)) is Outcome.ACK
    assert len(scripted_smtp.handler.received) == 1
    assert fake_jobs.jobs.jobs[event.job_id].notified


def test_storage_down_is_transient_and_sends_nothing(
    notifier: Notifier, fake_jobs: FakeJobServer, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    event = succeeded(fake_jobs, user)
    fake_jobs.jobs.unavailable = True
    with pytest.raises(TransientError):
        notifier.handle(delivery(event))
    assert scripted_smtp.handler.received == []


def test_failure_mail_says_why(
    notifier: Notifier, fake_jobs: FakeJobServer, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    job = fake_jobs.jobs.add(
        owner_id=user.id,
        owner_email=user.email,
        filename="silent.mp4",
        state=jobs_pb2.JOB_STATE_FAILED,
        failure_reason="the video has no sound track",
    )
    event = events_pb2.ConversionFailed(
        job_id=job.id, owner_id=user.id, owner_email=user.email, filename="silent.mp4", reason=""
    )
    assert notifier.handle(delivery(event)) is Outcome.ACK
    [msg] = scripted_smtp.handler.received
    assert msg["Subject"] == "We could not convert silent.mp4"
    body = msg.get_body(("plain",))
    assert body is not None and "Why: the video has no sound track" in body.get_content()


def test_smtp_4xx_retries_and_5xx_parks(
    notifier: Notifier, fake_jobs: FakeJobServer, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    with pytest.raises(TransientError):
        notifier.handle(delivery(succeeded(fake_jobs, user, owner_email="rcpt451@example.com")))
    refused = succeeded(fake_jobs, user, owner_email="rcpt550@example.com")
    assert notifier.handle(delivery(refused)) is Outcome.DEAD
    assert not fake_jobs.jobs.jobs[refused.job_id].notified
    assert scripted_smtp.handler.received == []


@pytest.mark.parametrize(
    "case", ["unknown type", "garbage", "no job", "bad address", "owner mismatch", "job failed", "converting"]
)
def test_messages_that_cannot_be_handled(
    case: str, notifier: Notifier, fake_jobs: FakeJobServer, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    expected = Outcome.DEAD
    if case == "unknown type":
        d = delivery(succeeded(fake_jobs, user), type_="video2mp3.events.v1.Nope")
    elif case == "garbage":
        d = delivery(succeeded(fake_jobs, user))
        d.body = b"\xff\xff\xff not protobuf"
    elif case == "no job":
        d = delivery(events_pb2.ConversionSucceeded(job_id="nope", mp3_id="m", owner_id=user.id))
    elif case == "bad address":
        d = delivery(succeeded(fake_jobs, user, owner_email="a@b.com\r\nBcc: c@d.com"))
    elif case == "owner mismatch":
        event = succeeded(fake_jobs, user)
        event.owner_id = "999999"
        d = delivery(event)
    elif case == "job failed":
        d = delivery(succeeded(fake_jobs, user, state=jobs_pb2.JOB_STATE_FAILED))
    else:
        d = delivery(succeeded(fake_jobs, user, state=jobs_pb2.JOB_STATE_CONVERTING))
        with pytest.raises(TransientError):
            notifier.handle(d)
        return
    assert notifier.handle(d) is expected
    assert scripted_smtp.handler.received == []
