"""Notifier settings, read only from environment variables (see common.config)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.config import SettingsError, env_float, env_int, env_str, rabbitmq_url
from notifier.messages import InvalidAddress, parse_sender

SECURITY_MODES = ("none", "starttls", "ssl")


@dataclass(frozen=True)
class Settings:
    smtp_host: str
    smtp_port: int
    smtp_username: str
    smtp_password: str
    smtp_security: str  # none | starttls | ssl
    smtp_timeout_seconds: float
    mail_from: str
    public_base_url: str
    auth_address: str
    storage_address: str
    rabbitmq_url: str
    mp3_queue: str
    video_queue: str
    prefetch: int
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    link_ttl_seconds: int
    grpc_timeout_seconds: float
    lease_seconds: int  # the email lease (storage's ClaimNotification); longer than a send
    health_port: int  # 0 disables the HTTP health endpoint

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        security = env_str("SMTP_SECURITY", "none", env).strip().lower()
        if security not in SECURITY_MODES:
            raise SettingsError(f"environment variable SMTP_SECURITY must be one of {SECURITY_MODES}")
        default_port = {"none": 25, "starttls": 587, "ssl": 465}[security]
        settings = cls(
            smtp_host=env_str("SMTP_HOST", "localhost", env),
            smtp_port=env_int("SMTP_PORT", default_port, env),
            smtp_username=env_str("SMTP_USERNAME", "", env),
            smtp_password=env_str("SMTP_PASSWORD", "", env),
            smtp_security=security,
            smtp_timeout_seconds=env_float("SMTP_TIMEOUT_SECONDS", 20.0, env),
            mail_from=env_str("MAIL_FROM", None, env),
            public_base_url=env_str("PUBLIC_BASE_URL", None, env).rstrip("/"),
            auth_address=env_str("AUTH_SVC_ADDRESS", None, env),
            storage_address=env_str("STORAGE_SVC_ADDRESS", None, env),
            rabbitmq_url=rabbitmq_url(env),
            mp3_queue=env_str("MP3_QUEUE", "mp3", env),
            video_queue=env_str("VIDEO_QUEUE", "video", env),
            prefetch=env_int("NOTIFIER_PREFETCH", 4, env),
            max_attempts=env_int("NOTIFIER_MAX_ATTEMPTS", 10, env),
            retry_base_seconds=env_float("NOTIFIER_RETRY_BASE_SECONDS", 5.0, env),
            retry_max_seconds=env_float("NOTIFIER_RETRY_MAX_SECONDS", 600.0, env),
            link_ttl_seconds=env_int("DOWNLOAD_LINK_TTL_SECONDS", 7 * 24 * 3600, env),
            grpc_timeout_seconds=env_float("NOTIFIER_GRPC_TIMEOUT_SECONDS", 10.0, env),
            lease_seconds=env_int("NOTIFY_LEASE_SECONDS", 120, env),
            health_port=env_int("HEALTH_PORT", 0, env),
        )
        if settings.smtp_username and not settings.smtp_password:
            raise SettingsError("environment variable SMTP_PASSWORD is required when SMTP_USERNAME is set")
        if settings.smtp_username and settings.smtp_security == "none":
            raise SettingsError("SMTP_USERNAME needs SMTP_SECURITY=starttls or ssl (no passwords in clear)")
        try:
            parse_sender(settings.mail_from)
        except InvalidAddress as error:
            raise SettingsError(f"environment variable MAIL_FROM: {error}") from None
        if not settings.public_base_url.startswith(("http://", "https://")):
            raise SettingsError("environment variable PUBLIC_BASE_URL must start with http:// or https://")
        for name, value in (
            ("SMTP_PORT", settings.smtp_port),
            ("NOTIFIER_PREFETCH", settings.prefetch),
            ("NOTIFIER_MAX_ATTEMPTS", settings.max_attempts),
            ("DOWNLOAD_LINK_TTL_SECONDS", settings.link_ttl_seconds),
            ("NOTIFY_LEASE_SECONDS", settings.lease_seconds),
        ):
            if value < 1:
                raise SettingsError(f"environment variable {name} must be at least 1, got {value}")
        if not 0 <= settings.health_port <= 65535:
            raise SettingsError("environment variable HEALTH_PORT must be a port number (0 disables)")
        return settings
