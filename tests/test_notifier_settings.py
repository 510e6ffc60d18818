"""Notifier settings: every variable from the environment, clear errors when one is wrong."""

from __future__ import annotations

import pytest

from common.config import SettingsError
from notifier.settings import Settings

REQUIRED = {
    "MAIL_FROM": "video2mp3 <noreply@x.test>",
    "PUBLIC_BASE_URL": "https://v2m.example/",
    "AUTH_SVC_ADDRESS": "auth:5000",
    "STORAGE_SVC_ADDRESS": "storage:5001",
}


def test_defaults() -> None:
    s = Settings.from_env(REQUIRED)
    assert (s.smtp_host, s.smtp_port, s.smtp_security) == ("localhost", 25, "none")
    assert s.public_base_url == "https://v2m.example"
    assert s.mp3_queue == "mp3" and s.rabbitmq_url.startswith("amqp://guest:guest@localhost:5672/")
    assert s.health_port == 0 and s.link_ttl_seconds == 7 * 24 * 3600


def test_everything_from_env() -> None:
    env = {
        **REQUIRED,
        "SMTP_HOST": "mail",
        "SMTP_SECURITY": "SSL",
        "SMTP_USERNAME": "u",
        "SMTP_PASSWORD": "p",
        "RABBITMQ_URL": "amqp://a:b@r:5672/v",
        "MP3_QUEUE": "mp3x",
        "NOTIFIER_MAX_ATTEMPTS": "3",
        "NOTIFIER_RETRY_BASE_SECONDS": "0.5",
        "DOWNLOAD_LINK_TTL_SECONDS": "60",
        "NOTIFIER_HEALTH_PORT": "8082",
    }
    s = Settings.from_env(env)
    assert (s.smtp_host, s.smtp_port, s.smtp_security) == ("mail", 465, "ssl")
    assert (s.smtp_username, s.smtp_password) == ("u", "p")
    assert s.rabbitmq_url == "amqp://a:b@r:5672/v" and s.mp3_queue == "mp3x"
    assert (s.max_attempts, s.retry_base_seconds, s.link_ttl_seconds, s.health_port) == (3, 0.5, 60, 8082)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"MAIL_FROM": ""}, "MAIL_FROM"),
        ({"MAIL_FROM": "a@x.test, b@x.test"}, "MAIL_FROM"),
        ({"PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL"),
        ({"PUBLIC_BASE_URL": "ftp://x"}, "PUBLIC_BASE_URL"),
        ({"AUTH_SVC_ADDRESS": ""}, "AUTH_SVC_ADDRESS"),
        ({"SMTP_SECURITY": "tls13"}, "SMTP_SECURITY"),
        ({"SMTP_PORT": "abc"}, "SMTP_PORT"),
        ({"SMTP_USERNAME": "u"}, "SMTP_PASSWORD"),
        ({"SMTP_USERNAME": "u", "SMTP_PASSWORD": "p"}, "SMTP_SECURITY"),
        ({"DOWNLOAD_LINK_TTL_SECONDS": "0"}, "DOWNLOAD_LINK_TTL_SECONDS"),
        ({"NOTIFIER_HEALTH_PORT": "70000"}, "NOTIFIER_HEALTH_PORT"),
    ],
)
def test_bad_settings_name_the_variable(change: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**REQUIRED, **change})
