"""The mailer against real SMTP servers: the tests' sink process, and scripted aiosmtpd
servers for 4xx / 5xx answers and TLS."""

from __future__ import annotations

import time

import pytest

from common.amqp import TransientError
from notifier.mailer import Mailer, PermanentMailError, SmtpConfig
from notifier.messages import FailureMail, download_link, failure_message, parse_sender, success_message
from notifier.messages import SuccessMail as Success
from testing.infra import SmtpSink
from testing.processes import free_port
from tests.fixtures.notifier import ScriptedSmtp, TlsFiles, TlsSmtp

SENDER = parse_sender("video2mp3 <noreply@video2mp3.test>")


def _mail(recipient: str, filename: str = "clip.mp4") -> Success:
    return Success(
        job_id=f"job-{time.monotonic_ns()}",
        recipient=recipient,
        filename=filename,
        link=download_link("http://127.0.0.1:8080", "mp3-1", "tok"),
        expires_at=int(time.time()) + 600,
    )


def test_sends_to_the_real_sink(smtp_sink: SmtpSink) -> None:
    to = f"mailer-{time.monotonic_ns()}@example.com"
    Mailer(SmtpConfig("127.0.0.1", smtp_sink.port)).send(success_message(_mail(to, "Réunion 🎬.mp4"), SENDER))
    [got] = smtp_sink.mailbox.wait_for(to, timeout=10)
    assert got["Subject"] == "Your MP3 is ready: Réunion 🎬.mp4"
    assert got.get_body(("html",)) is not None and got.get_body(("plain",)) is not None


def test_header_injection_reaches_only_the_one_recipient(smtp_sink: SmtpSink) -> None:
    to = f"inject-{time.monotonic_ns()}@example.com"
    victim = f"victim-{time.monotonic_ns()}@example.com"
    name = f"x.mp4\r\nBcc: {victim}\r\nSubject: free money"
    Mailer(SmtpConfig("127.0.0.1", smtp_sink.port)).send(
        failure_message(FailureMail("j-inj", to, name, f"bad\nCc: {victim}"), SENDER)
    )
    [got] = smtp_sink.mailbox.wait_for(to, timeout=10)
    assert str(got["X-Sink-Rcpt-To"]) == to
    assert got["Bcc"] is None and got["Cc"] is None
    assert len(got.get_all("Subject") or []) == 1
    assert smtp_sink.mailbox.to(victim) == []


def test_sink_down_is_transient_and_recovers(smtp_sink: SmtpSink) -> None:
    to = f"down-{time.monotonic_ns()}@example.com"
    mailer = Mailer(SmtpConfig("127.0.0.1", smtp_sink.port, timeout_seconds=3))
    smtp_sink.stop()
    try:
        with pytest.raises(TransientError):
            mailer.send(success_message(_mail(to), SENDER))
    finally:
        smtp_sink.start()
    mailer.send(success_message(_mail(to), SENDER))
    assert len(smtp_sink.mailbox.wait_for(to, timeout=10)) == 1


def test_nothing_listening_is_transient() -> None:
    mailer = Mailer(SmtpConfig("127.0.0.1", free_port(), timeout_seconds=2))
    with pytest.raises(TransientError):
        mailer.send(success_message(_mail("a@example.com"), SENDER))


def test_4xx_is_transient_and_5xx_permanent(scripted_smtp: ScriptedSmtp) -> None:
    mailer = Mailer(SmtpConfig("127.0.0.1", scripted_smtp.port))
    with pytest.raises(TransientError):
        mailer.send(success_message(_mail("rcpt451@example.com"), SENDER))
    with pytest.raises(PermanentMailError):
        mailer.send(success_message(_mail("rcpt550@example.com"), SENDER))
    scripted_smtp.handler.data_reply = "452 mailbox full, try later"
    with pytest.raises(TransientError):
        mailer.send(success_message(_mail("ok@example.com"), SENDER))
    scripted_smtp.handler.data_reply = "554 message rejected"
    with pytest.raises(PermanentMailError):
        mailer.send(success_message(_mail("ok@example.com"), SENDER))
    scripted_smtp.handler.data_reply = None
    mailer.send(success_message(_mail("ok@example.com"), SENDER))
    assert len(scripted_smtp.handler.received) == 1


def test_tls_with_login(tls_smtp: TlsSmtp, tls_files: TlsFiles) -> None:
    config = SmtpConfig("127.0.0.1", tls_smtp.port, security=tls_smtp.mode, username="u", password="p")
    Mailer(config, tls_context=tls_files.client_context()).send(
        success_message(_mail("tls@example.com"), SENDER)
    )
    assert [str(m["To"]) for m in tls_smtp.handler.received] == ["tls@example.com"]


def test_untrusted_certificate_is_not_accepted(tls_smtp: TlsSmtp) -> None:
    config = SmtpConfig("127.0.0.1", tls_smtp.port, security=tls_smtp.mode, timeout_seconds=3)
    with pytest.raises((TransientError, PermanentMailError)):
        Mailer(config).send(success_message(_mail("tls@example.com"), SENDER))


def test_starttls_is_never_downgraded(smtp_sink: SmtpSink) -> None:
    """The sink offers no STARTTLS: with SMTP_SECURITY=starttls nothing goes out in clear."""
    to = f"downgrade-{time.monotonic_ns()}@example.com"
    config = SmtpConfig("127.0.0.1", smtp_sink.port, security="starttls", username="u", password="p")
    with pytest.raises(PermanentMailError):
        Mailer(config).send(success_message(_mail(to), SENDER))
    assert smtp_sink.mailbox.to(to) == []
