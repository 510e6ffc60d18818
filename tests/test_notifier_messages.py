"""The notifier's emails: parts, wording, escaping and header-injection safety (no servers)."""

from __future__ import annotations

import email
import email.policy
import time
import urllib.parse
from email.message import EmailMessage

import pytest

from notifier.messages import (
    FailureMail,
    InvalidAddress,
    SuccessMail,
    clean_text,
    download_link,
    failure_message,
    parse_recipient,
    parse_sender,
    success_message,
)

SENDER = parse_sender("video2mp3 <noreply@video2mp3.test>")


def _roundtrip(msg: EmailMessage) -> EmailMessage:
    """What a receiver parses from the bytes we would put on the wire."""
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def _success(**overrides: object) -> SuccessMail:
    fields: dict[str, object] = {
        "job_id": "job123",
        "recipient": "alice@example.com",
        "filename": "holiday.mp4",
        "link": download_link("https://v2m.example/", "mp3id", "tok.en"),
        "expires_at": int(time.time()) + 3600,
        "duration_seconds": 75.4,
    }
    fields.update(overrides)
    return SuccessMail(**fields)  # type: ignore[arg-type]


def test_success_mail_has_text_and_html_with_the_link() -> None:
    msg = _roundtrip(success_message(_success(), SENDER))
    assert msg["To"] == "alice@example.com"
    assert msg["From"].addresses[0].addr_spec == "noreply@video2mp3.test"
    assert msg["Subject"] == "Your MP3 is ready: holiday.mp4"
    assert msg["Message-ID"] == "<job123.ok@video2mp3.test>"
    text, html = _parts(msg)
    link = "https://v2m.example/download?fid=mp3id&token=tok.en"
    assert link in text and "holiday.mp4" in text and "1:15" in text
    assert f'href="{link.replace("&", "&amp;")}"' in html


def test_download_link_quotes_its_parameters() -> None:
    link = download_link("http://h:8080", "a b&c", "x+y/z=")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
    assert link.startswith("http://h:8080/download?")
    assert query == {"fid": ["a b&c"], "token": ["x+y/z="]}


def test_failure_mail_says_which_file_and_why() -> None:
    mail = FailureMail("j9", "bob@example.com", "talk.mov", "the file has no sound track")
    msg = _roundtrip(failure_message(mail, SENDER))
    assert msg["Subject"] == "We could not convert talk.mov"
    text, html = _parts(msg)
    assert "talk.mov" in text and "Why: the file has no sound track" in text
    assert "the file has no sound track" in html


@pytest.mark.parametrize(
    "filename",
    [
        "evil.mp4\r\nBcc: victim@example.com",
        "evil.mp4\nSubject: hi\n\n<script>alert(1)</script>",
        "evil\u2028Bcc: victim@example.com.mp4",
        "evil\x85Bcc: victim@example.com",
        "\u202egnp.exe.mp4",
    ],
)
def test_header_injection_through_the_filename_is_neutralised(filename: str) -> None:
    for msg in (
        success_message(_success(filename=filename), SENDER),
        failure_message(FailureMail("j", "a@example.com", filename, "bad\r\nX-Evil: 1"), SENDER),
    ):
        parsed = _roundtrip(msg)
        assert parsed["Bcc"] is None and parsed["X-Evil"] is None
        assert parsed.get_all("Subject") is not None and len(parsed.get_all("Subject") or []) == 1
        assert [addr.addr_spec for addr in parsed["To"].addresses] == [
            "alice@example.com" if "ready" in parsed["Subject"] else "a@example.com"
        ]
        assert "\n" not in str(parsed["Subject"]) and "\u2028" not in str(parsed["Subject"])
        assert "\u202e" not in str(parsed["Subject"])
        _, html = _parts(parsed)
        assert "<script>" not in html


def test_odd_unicode_names_survive_and_are_encoded() -> None:
    name = "Vid\u00e9o \u2013 日本語 🎵.mp4"
    msg = success_message(_success(filename=name), SENDER)
    wire = msg.as_bytes()
    assert all(b < 128 for b in wire.split(b"\r\n\r\n", 1)[0])  # headers are pure ASCII on the wire
    parsed = _roundtrip(msg)
    assert parsed["Subject"] == f"Your MP3 is ready: {name}"
    text, _ = _parts(parsed)
    assert name in text


def test_long_names_are_cut_in_the_subject() -> None:
    msg = _roundtrip(success_message(_success(filename="x" * 1000 + ".mp4"), SENDER))
    assert len(str(msg["Subject"])) < 120 and str(msg["Subject"]).endswith("…")


def test_empty_name_and_reason_still_read_well() -> None:
    msg = _roundtrip(failure_message(FailureMail("j", "a@example.com", "\n\t", ""), SENDER))
    assert msg["Subject"] == "We could not convert your video"
    text, _ = _parts(msg)
    assert "unknown reason" in text


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at-sign",
        "a@b.com\r\nBcc: c@d.com",
        "a@b.com, c@d.com",
        "Bob <a@b.com>",
        "a@localhost",
        "x" * 300 + "@example.com",
    ],
)
def test_bad_recipients_are_refused(address: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_recipient(address)
    with pytest.raises(InvalidAddress):
        success_message(_success(recipient=address), SENDER)


def test_clean_text() -> None:
    assert clean_text("a\r\nb\tc\u200bd\u2029e", 50) == "a b cd e"
    assert clean_text("abcdef", 4) == "abc…"


def test_sender_parsing() -> None:
    assert parse_sender("noreply@x.test").addr_spec == "noreply@x.test"
    with pytest.raises(InvalidAddress):
        parse_sender("video2mp3 <noreply@x.test>\r\nBcc: y@z.test")
    with pytest.raises(InvalidAddress):
        parse_sender("not an address")
