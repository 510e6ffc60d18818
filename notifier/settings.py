"""Notifier settings, declared once each (common/config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import PORT, SettingsError, at_least, one_of, setting, starts_with
from common.consumer_settings import ConsumerEnvSettings
from common.grpc_tls import GrpcTls, tls_dir_setting
from notifier.messages import InvalidAddress, parse_sender

SECURITY_MODES = ("none", "starttls", "ssl")
# SMTP_PORT's default, by SMTP_SECURITY.
DEFAULT_SMTP_PORTS = {"none": 25, "starttls": 587, "ssl": 465}


@dataclass(frozen=True, kw_only=True)
class Settings(ConsumerEnvSettings):
    smtp_host: str = setting("SMTP_HOST", "localhost")
    # 0: the usual port of smtp_security (DEFAULT_SMTP_PORTS).
    smtp_port: int = setting("SMTP_PORT", 0, check=PORT)
    smtp_username: str = setting("SMTP_USERNAME", "")
    smtp_password: str = setting("SMTP_PASSWORD", "", secret=True)
    smtp_security: str = setting(
        "SMTP_SECURITY", "none", parse=lambda raw: raw.strip().lower(), check=one_of(*SECURITY_MODES)
    )
    smtp_timeout_seconds: float = setting("SMTP_TIMEOUT_SECONDS", 20.0)
    mail_from: str = setting("MAIL_FROM")
    public_base_url: str = setting(
        "PUBLIC_BASE_URL", parse=lambda raw: raw.rstrip("/"), check=starts_with("http://", "https://")
    )
    auth_address: str = setting("AUTH_SVC_ADDRESS")
    storage_address: str = setting("STORAGE_SVC_ADDRESS")
    grpc_tls_dir: str = tls_dir_setting()
    prefetch: int = setting("NOTIFIER_PREFETCH", 4, check=at_least(1))
    max_attempts: int = setting("NOTIFIER_MAX_ATTEMPTS", 10, check=at_least(1))
    retry_base_seconds: float = setting("NOTIFIER_RETRY_BASE_SECONDS", 5.0)
    retry_max_seconds: float = setting("NOTIFIER_RETRY_MAX_SECONDS", 600.0)
    link_ttl_seconds: int = setting("DOWNLOAD_LINK_TTL_SECONDS", 7 * 24 * 3600, check=at_least(1))
    grpc_timeout_seconds: float = setting("GRPC_TIMEOUT_SECONDS", 10.0)
    # The email lease (storage's ClaimNotification): longer than any send.
    lease_seconds: int = setting("NOTIFY_LEASE_SECONDS", 120, check=at_least(1))
    health_port: int = setting("NOTIFIER_HEALTH_PORT", 0, check=PORT)  # 0: no HTTP health endpoint

    def __post_init__(self) -> None:
        if self.smtp_port == 0:
            object.__setattr__(self, "smtp_port", DEFAULT_SMTP_PORTS.get(self.smtp_security, 25))

    def grpc_tls(self) -> GrpcTls:
        """This process's certificate (notifier), the CA's, and its key (common/grpc_tls.py)."""
        return GrpcTls.load(self.grpc_tls_dir, "notifier")

    def check(self) -> None:
        if self.smtp_username and not self.smtp_password:
            raise SettingsError("environment variable SMTP_PASSWORD is required when SMTP_USERNAME is set")
        if self.smtp_username and self.smtp_security == "none":
            raise SettingsError("SMTP_USERNAME needs SMTP_SECURITY=starttls or ssl (no passwords in clear)")
        try:
            parse_sender(self.mail_from)
        except InvalidAddress as error:
            raise SettingsError(f"environment variable MAIL_FROM: {error}") from None
