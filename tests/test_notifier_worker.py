"""The notifier's handler in-process: real AuthService (MariaDB), scripted SMTP server,
and the real JobService behind a fault injector (tests/fixtures/faulty_storage.py)."""

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
from tests.fixtures.faulty_storage import FaultyStorage
from tests.fixtures.notifier import ScriptedSmtp

T = 10
BASE = "https://v2m.example"


def register(auth: auth_pb2_grpc.AuthServiceStub, email: str) -> auth_pb2.User:
    return auth.Register(
        auth_pb2.RegisterRequest(email=email, password="a long password 123"), timeout=T
    ).user


def make_notifier(
    storage: FaultyStorage, auth: auth_pb2_grpc.AuthServiceStub, smtp_port: int, ttl: int = 3600
) -> Notifier:
    return Notifier(
        jobs=storage.jobs_as("notifier"),
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
def storage(faulty_storage: FaultyStorage) -> FaultyStorage:
    return faulty_storage


@pytest.fixture
def user(auth_stub: auth_pb2_grpc.AuthServiceStub) -> auth_pb2.User:
    return register(auth_stub, unique_email("notify"))


@pytest.fixture
def notifier(
    storage: FaultyStorage, auth_stub: auth_pb2_grpc.AuthServiceStub, scripted_smtp: ScriptedSmtp
) -> Notifier:
    return make_notifier(storage, auth_stub, scripted_smtp.port)


def succeeded(
    storage: FaultyStorage,
    user: auth_pb2.User,
    owner_email: str | None = None,
    state: jobs_pb2.JobState.ValueType = jobs_pb2.JOB_STATE_SUCCEEDED,
) -> events_pb2.ConversionSucceeded:
    record = storage.job_in_state(state, user.id, owner_email or user.email, "holiday.mp4")
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
    storage: FaultyStorage,
    user: auth_pb2.User,
    scripted_smtp: ScriptedSmtp,
    auth_stub: auth_pb2_grpc.AuthServiceStub,
) -> None:
    event = succeeded(storage, user)
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
    assert storage.job(event.job_id).notified


@pytest.fixture
def strict_auth(infra: Infra) -> Iterator[auth_pb2_grpc.AuthServiceStub]:
    """A second AuthService on the same database and secret, without clock leeway."""
    from auth.server import create_server
    from auth.settings import Settings

    srv = create_server(Settings.from_env(auth_env(infra, JWT_LEEWAY_SECONDS="0")), port=0)
    srv.start()
    srv.set_serving(True)
    channel = infra.channel(f"127.0.0.1:{srv.port}")
    try:
        yield auth_pb2_grpc.AuthServiceStub(channel)
    finally:
        channel.close()
        srv.stop(0.5)


def test_link_stops_working_when_it_expires(
    storage: FaultyStorage,
    user: auth_pb2.User,
    scripted_smtp: ScriptedSmtp,
    strict_auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    notifier = make_notifier(storage, strict_auth, scripted_smtp.port, ttl=2)
    assert notifier.handle(delivery(succeeded(storage, user))) is Outcome.ACK
    _, fid, token = link_of(scripted_smtp.handler.received[0])
    request = auth_pb2.ValidateDownloadTokenRequest(download_token=token, file_id=fid)
    assert strict_auth.ValidateDownloadToken(request, timeout=T).file_id == fid
    time.sleep(3.2)
    with pytest.raises(grpc.RpcError) as caught:
        strict_auth.ValidateDownloadToken(request, timeout=T)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_duplicates_send_one_mail(
    notifier: Notifier, storage: FaultyStorage, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    event = succeeded(storage, user)
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
    assert storage.calls["MarkNotified"] == 1


def test_mark_failing_after_send_never_sends_twice(
    notifier: Notifier, storage: FaultyStorage, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    event = succeeded(storage, user)
    storage.fail_next["MarkNotified"] = 10
    with pytest.raises(TransientError):
        notifier.handle(delivery(event))
    assert len(scripted_smtp.handler.received) == 1
    storage.fail_next["MarkNotified"] = 0
    assert notifier.handle(delivery(event, attempt=2)) is Outcome.ACK
    assert len(scripted_smtp.handler.received) == 1
    assert storage.job(event.job_id).notified


def test_storage_down_is_transient_and_sends_nothing(
    notifier: Notifier, storage: FaultyStorage, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    event = succeeded(storage, user)
    storage.faults["GetJob"] = storage.faults["MarkNotified"] = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TransientError):
        notifier.handle(delivery(event))
    assert scripted_smtp.handler.received == []


def test_failure_mail_says_why(
    notifier: Notifier, storage: FaultyStorage, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    job = storage.job_in_state(
        jobs_pb2.JOB_STATE_FAILED, user.id, user.email, "silent.mp4", reason="the video has no sound track"
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
    notifier: Notifier, storage: FaultyStorage, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    with pytest.raises(TransientError):
        notifier.handle(delivery(succeeded(storage, user, owner_email="rcpt451@example.com")))
    refused = succeeded(storage, user, owner_email="rcpt550@example.com")
    assert notifier.handle(delivery(refused)) is Outcome.DEAD
    assert not storage.job(refused.job_id).notified
    assert scripted_smtp.handler.received == []


@pytest.mark.parametrize(
    "case", ["unknown type", "garbage", "no job", "bad address", "owner mismatch", "job failed", "converting"]
)
def test_messages_that_cannot_be_handled(
    case: str, notifier: Notifier, storage: FaultyStorage, user: auth_pb2.User, scripted_smtp: ScriptedSmtp
) -> None:
    expected = Outcome.DEAD
    if case == "unknown type":
        d = delivery(succeeded(storage, user), type_="video2mp3.events.v1.Nope")
    elif case == "garbage":
        d = delivery(succeeded(storage, user))
        d.body = b"\xff\xff\xff not protobuf"
    elif case == "no job":
        d = delivery(events_pb2.ConversionSucceeded(job_id="nope", mp3_id="m", owner_id=user.id))
    elif case == "bad address":
        d = delivery(succeeded(storage, user, owner_email="a@b.com\r\nBcc: c@d.com"))
    elif case == "owner mismatch":
        event = succeeded(storage, user)
        event.owner_id = "999999"
        d = delivery(event)
    elif case == "job failed":
        d = delivery(succeeded(storage, user, state=jobs_pb2.JOB_STATE_FAILED))
    else:
        d = delivery(succeeded(storage, user, state=jobs_pb2.JOB_STATE_CONVERTING))
        with pytest.raises(TransientError):
            notifier.handle(d)
        return
    assert notifier.handle(d) is expected
    assert scripted_smtp.handler.received == []
