"""Sending through SMTP (none, STARTTLS or implicit TLS), with errors sorted into
temporary ones (retried later: ``common.amqp.TransientError``) and permanent ones
(``PermanentMailError``: the message is parked, never retried)."""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from common.amqp import TransientError

log = logging.getLogger("notifier.mailer")


class PermanentMailError(Exception):
    """The server refused the message for good (5xx, bad address, unusable configuration)."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str = "none"  # none | starttls | ssl
    username: str = ""
    password: str = ""
    timeout_seconds: float = 20.0


def _classify(code: int, what: str, detail: object) -> Exception:
    text = f"{what}: {code} {detail!r}"
    if 400 <= code < 500:
        return TransientError(f"SMTP temporary error, {text}")
    return PermanentMailError(f"SMTP permanent error, {text}")


class Mailer:
    """One SMTP connection per message: simple, and nothing stale survives an outage."""

    def __init__(self, config: SmtpConfig, tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tls_context = tls_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        if cfg.security == "ssl":
            return smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=self.tls_context)
        client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
        if cfg.security == "starttls":
            client.ehlo()
            client.starttls(context=self.tls_context)
            client.ehlo()
        return client

    def send(self, message: EmailMessage) -> None:
        """Send one message to its To: recipients, or raise TransientError / PermanentMailError."""
        cfg = self.config
        try:
            client = self._connect()
        except smtplib.SMTPResponseException as error:
            raise _classify(error.smtp_code, "connect", error.smtp_error) from error
        except smtplib.SMTPNotSupportedError as error:
            raise PermanentMailError(f"SMTP server lacks a required feature: {error}") from error
        except (OSError, smtplib.SMTPException) as error:
            # Refused, unreachable, timed out, TLS handshake cut, disconnected: try again later.
            raise TransientError(f"SMTP server {cfg.host}:{cfg.port} unavailable: {error!r}") from error
        try:
            if cfg.username:
                client.login(cfg.username, cfg.password)
            refused = client.send_message(message)
            if refused:
                # Some recipients refused (we only ever send to one, so this is rare).
                code, detail = next(iter(refused.values()))
                raise _classify(code, "recipient refused", detail)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            if codes and all(400 <= code < 500 for code in codes):
                raise TransientError(f"SMTP recipient temporarily refused: {error.recipients!r}") from error
            raise PermanentMailError(f"SMTP recipient refused: {error.recipients!r}") from error
        except smtplib.SMTPResponseException as error:
            # SMTPSenderRefused, SMTPDataError, SMTPAuthenticationError, ...: decided by the code.
            raise _classify(error.smtp_code, type(error).__name__, error.smtp_error) from error
        except smtplib.SMTPNotSupportedError as error:
            raise PermanentMailError(f"SMTP server lacks a required feature: {error}") from error
        except (OSError, smtplib.SMTPException) as error:
            raise TransientError(f"SMTP conversation with {cfg.host}:{cfg.port} broke: {error!r}") from error
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()
