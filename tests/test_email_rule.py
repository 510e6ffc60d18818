"""One rule for email addresses (issue 19 item 5): the real auth service accepts at sign-up
exactly the addresses the notifier's mail path delivers to the SMTP sink — with a relay
that lacks SMTPUTF8 (the default) and with one that offers it (MAIL_SMTPUTF8=true)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from video2mp3.auth.v1 import auth_pb2 as pb

from auth.settings import Settings
from common.email_address import UndeliverableAddress, parse_address
from notifier.mailer import Mailer, PermanentMailError, SmtpConfig
from notifier.messages import InvalidAddress, SuccessMail, parse_sender, success_message
from testing.infra import SmtpSink
from tests.test_auth_throttle import PASSWORD, address, auth_stub_with

SENDER = parse_sender("video2mp3 <noreply@video2mp3.test>")


def tag() -> str:
    return uuid.uuid4().hex[:8]


# (address template, accepted without SMTPUTF8, accepted with SMTPUTF8); {t} makes it unique.
CORPUS = [
    ("plain.user+{t}@example.com", True, True),
    ("o'brien-{t}@example.com", True, True),
    ("user{t}@例子.广告", True, True),  # IDN domain: delivered to its A-label form
    ("user{t}@bücher.example", True, True),
    ("ünï{t}@example.com", False, True),  # non-ASCII local part: needs SMTPUTF8
    ("用户{t}@例子.广告", False, True),
    ("=?utf-8?q?{t}?=@example.com", False, False),  # RFC 2047 encoded word
    ('"quoted {t}"@example.com', False, False),
    ("a..{t}@example.com", False, False),
    (".{t}@example.com", False, False),
    ("{t}@-bad.example", False, False),
    ("{t}@example", False, False),
    ("{t}@[127.0.0.1]", False, False),
    ("{t}\u200b@example.com", False, False),  # invisible character
    ("{t}@example.123", False, False),
]


@pytest.fixture(params=[False, True], ids=["relay-without-smtputf8", "relay-with-smtputf8"])
def relay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[bool, SmtpSink]]:
    sink = SmtpSink(tmp_path, smtputf8=request.param)
    sink.start()
    try:
        yield request.param, sink
    finally:
        sink.stop()


def signed_up(stub: object, email: str) -> bool:
    try:
        stub.Register(  # type: ignore[attr-defined]
            pb.RegisterRequest(email=email, password=PASSWORD, client_address=address()), timeout=30
        )
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        return False
    return True


def delivered(sink: SmtpSink, email: str) -> bool:
    mailer = Mailer(SmtpConfig(host="127.0.0.1", port=sink.port, timeout_seconds=10))
    mail = SuccessMail("job-" + tag(), email, "clip.mp4", "http://x.test/download?fid=1", 2_000_000_000)
    try:
        mailer.send(success_message(mail, SENDER))
    except (InvalidAddress, PermanentMailError):
        return False
    wire = parse_address(email, allow_utf8_local=True).wire
    return bool(sink.mailbox.wait_for(wire, timeout=10))


def test_sign_up_accepts_exactly_what_the_mail_path_delivers(
    auth_settings: Settings, relay: tuple[bool, SmtpSink]
) -> None:
    smtputf8, sink = relay
    with auth_stub_with(auth_settings, mail_smtputf8=smtputf8) as stub:
        for template, without, with_utf8 in CORPUS:
            email = template.format(t=tag())
            expected = with_utf8 if smtputf8 else without
            assert signed_up(stub, email) is expected, f"sign-up of {email!r}"
            if expected:
                assert delivered(sink, email), f"{email!r} was accepted but never arrived"
            elif not smtputf8 and with_utf8:
                # Refused at sign-up because this relay could not take it: indeed it cannot.
                assert not delivered(sink, email), f"{email!r} was refused but is deliverable"


def test_encoded_words_are_never_an_address() -> None:
    with pytest.raises(UndeliverableAddress, match="encoded words"):
        parse_address("=?utf-8?b?w7w=?=@example.com", allow_utf8_local=True)


def test_idn_domains_go_out_as_a_labels() -> None:
    assert parse_address("Ann@Bücher.Example").wire == "Ann@xn--bcher-kva.example"
