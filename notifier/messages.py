"""The two emails the notifier sends, as ``EmailMessage`` objects with text and HTML parts.

Everything that comes from users (file names, failure reasons, addresses) is treated as
hostile: control characters, line breaks and invisible formatting characters never reach a
header, HTML is escaped, and a recipient must be exactly one plain address.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import html
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage

from common.email_address import UndeliverableAddress, parse_address

SUBJECT_NAME_LIMIT = 80
BODY_NAME_LIMIT = 255
REASON_LIMIT = 500
_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class InvalidAddress(ValueError):
    """An address that cannot be used (malformed, several addresses, header tricks)."""


def clean_text(value: str, limit: int) -> str:
    """One line of plain, visible text: control, format and separator characters (including
    CR, LF, U+2028, bidi overrides, zero-width characters) become spaces or vanish, runs of
    white space collapse, and the result is cut to ``limit`` characters with an ellipsis."""
    out = []
    for char in unicodedata.normalize("NFC", value):
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp") or char.isspace():
            out.append(" ")
        elif category in ("Cf", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(char)
    text = " ".join("".join(out).split())
    if len(text) > limit:
        text = text[: max(1, limit - 1)].rstrip() + "…"
    return text


def parse_recipient(value: str) -> Address:
    """Exactly one plain ``local@domain`` address by the rule sign-up checks
    (common/email_address.py), the domain in its ASCII form; or ``InvalidAddress``. A
    non-ASCII local part is kept: such a message is sent with SMTPUTF8."""
    try:
        parsed = parse_address(value, allow_utf8_local=True)
    except UndeliverableAddress as error:
        raise InvalidAddress(f"recipient address cannot be delivered: {error}") from None
    return Address(username=parsed.local, domain=parsed.ascii_domain)


def parse_sender(value: str) -> Address:
    """``MAIL_FROM`` as ``Name <local@domain>`` or a plain address."""
    if any(c in value for c in "\r\n\0"):
        raise InvalidAddress("MAIL_FROM contains line breaks")
    try:
        header = email.policy.default.header_factory("From", value)
        addresses = header.addresses
    except (ValueError, IndexError, TypeError) as error:
        raise InvalidAddress(f"MAIL_FROM is malformed: {error}") from None
    if len(addresses) != 1 or header.defects or not addresses[0].domain or not addresses[0].username:
        raise InvalidAddress("MAIL_FROM must be one address, like 'video2mp3 <noreply@example.com>'")
    address = addresses[0]
    name = address.display_name
    return Address(display_name=clean_text(name, 100), username=address.username, domain=address.domain)


def download_link(public_base_url: str, mp3_id: str, token: str) -> str:
    query = urllib.parse.urlencode({"fid": mp3_id, "token": token})
    return f"{public_base_url.rstrip('/')}/download?{query}"


def message_id(job_id: str, kind: str, sender: Address) -> str:
    """A Message-ID fixed per job and kind: should a mail ever be sent twice, mail clients
    see one message."""
    safe = _ID_SAFE.sub("", job_id)[:64] or "job"
    return f"<{safe}.{kind}@{sender.domain or 'video2mp3.local'}>"


def _base(sender: Address, recipient: Address, subject: str, msg_id: str) -> EmailMessage:
    # Non-ASCII before the @ cannot be encoded in a header: such a message is sent as UTF-8
    # (smtplib then asks the relay for SMTPUTF8, and fails for good if it lacks it).
    international = not recipient.username.isascii()
    msg = EmailMessage(policy=email.policy.SMTPUTF8 if international else email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = msg_id
    msg["Auto-Submitted"] = "auto-generated"
    return msg


def _display_name(filename: str, limit: int) -> str:
    return clean_text(filename, limit) or "your video"


def _expiry_words(expires_at: int) -> str:
    when = datetime.datetime.fromtimestamp(expires_at, tz=datetime.UTC)
    return f"until {when:%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class SuccessMail:
    job_id: str
    recipient: str
    filename: str
    link: str
    expires_at: int  # Unix seconds when the link stops working
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class FailureMail:
    job_id: str
    recipient: str
    filename: str
    reason: str


def _duration_words(seconds: float) -> str:
    if seconds <= 0:
        return ""
    total = round(seconds)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def success_message(mail: SuccessMail, sender: Address) -> EmailMessage:
    recipient = parse_recipient(mail.recipient)
    subject_name = _display_name(mail.filename, SUBJECT_NAME_LIMIT)
    name = _display_name(mail.filename, BODY_NAME_LIMIT)
    expiry = _expiry_words(mail.expires_at)
    duration = _duration_words(mail.duration_seconds)
    length = f" ({duration} long)" if duration else ""
    subject = f"Your MP3 is ready: {subject_name}"
    msg = _base(sender, recipient, subject, message_id(mail.job_id, "ok", sender))
    msg.set_content(
        f"Hello,\n\n"
        f'the sound track of "{name}" has been converted to MP3{length}.\n\n'
        f"Download it here (no login needed; the link works {expiry}, for this file only):\n"
        f"{mail.link}\n\n"
        f"You can also download it any time from your job list after logging in.\n\n"
        f"-- video2mp3\n"
    )
    e_name, e_link = html.escape(name), html.escape(mail.link, quote=True)
    msg.add_alternative(
        "<!DOCTYPE html>\n<html><body>\n"
        "<p>Hello,</p>\n"
        f"<p>the sound track of <strong>{e_name}</strong> has been converted to MP3"
        f"{html.escape(length)}.</p>\n"
        f'<p><a href="{e_link}">Download the MP3</a></p>\n'
        f"<p>No login needed; the link works {html.escape(expiry)}, for this file only.</p>\n"
        "<p>-- video2mp3</p>\n</body></html>\n",
        subtype="html",
    )
    return msg


def failure_message(mail: FailureMail, sender: Address) -> EmailMessage:
    recipient = parse_recipient(mail.recipient)
    subject_name = _display_name(mail.filename, SUBJECT_NAME_LIMIT)
    name = _display_name(mail.filename, BODY_NAME_LIMIT)
    reason = clean_text(mail.reason, REASON_LIMIT) or "the conversion failed for an unknown reason"
    msg = _base(
        sender, recipient, f"We could not convert {subject_name}", message_id(mail.job_id, "failed", sender)
    )
    msg.set_content(
        f"Hello,\n\n"
        f'we could not make an MP3 from "{name}".\n\n'
        f"Why: {reason}\n\n"
        f"If the file plays on your computer and has sound, you can try uploading it again.\n\n"
        f"-- video2mp3\n"
    )
    msg.add_alternative(
        "<!DOCTYPE html>\n<html><body>\n"
        "<p>Hello,</p>\n"
        f"<p>we could not make an MP3 from <strong>{html.escape(name)}</strong>.</p>\n"
        f"<p>Why: {html.escape(reason)}</p>\n"
        "<p>If the file plays on your computer and has sound, you can try uploading it again.</p>\n"
        "<p>-- video2mp3</p>\n</body></html>\n",
        subtype="html",
    )
    return msg
