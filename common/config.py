"""Settings from environment variables.

Each service describes its settings in its own ``settings.py``: a frozen dataclass
``Settings`` with ``Settings.from_env(env=None)`` that reads every variable through these
helpers, passing ``env`` along (a test records which names a service reads, to check the
Kubernetes ConfigMaps and Secrets against the code). A required variable that is missing
(or malformed) stops the process at start with a message that names it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping


class SettingsError(Exception):
    """A required setting is missing or malformed."""


def env_str(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str:
    source = os.environ if env is None else env
    value = source.get(name)
    if value is None or value == "":
        if default is None:
            raise SettingsError(f"environment variable {name} is required but not set")
        return default
    return value


def env_int(name: str, default: int | None = None, env: Mapping[str, str] | None = None) -> int:
    raw = env_str(name, None if default is None else str(default), env)
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float | None = None, env: Mapping[str, str] | None = None) -> float:
    raw = env_str(name, None if default is None else str(default), env)
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name} must be a number, got {raw!r}") from None


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    raw = env_str(name, "true" if default else "false", env).strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"environment variable {name} must be true or false, got {raw!r}")


def exit_on_settings_error(service: str, error: SettingsError) -> None:
    """Print a clear message and stop the process (used by every service's main)."""
    print(f"{service}: configuration error: {error}", file=sys.stderr)
    raise SystemExit(2)


def rabbitmq_url(env: Mapping[str, str] | None = None) -> str:
    """``RABBITMQ_URL``, or one built from ``RABBITMQ_HOST`` (+ port, user, password, vhost)."""
    source = os.environ if env is None else env
    url = source.get("RABBITMQ_URL")
    if url:
        return url
    host = env_str("RABBITMQ_HOST", "localhost", source)
    port = env_int("RABBITMQ_PORT", 5672, source)
    user = env_str("RABBITMQ_USER", "guest", source)
    password = env_str("RABBITMQ_PASSWORD", "guest", source)
    vhost = env_str("RABBITMQ_VHOST", "/", source).replace("/", "%2F")
    return f"amqp://{user}:{password}@{host}:{port}/{vhost}"


def mongo_uri(env: Mapping[str, str] | None = None) -> str:
    """``MONGO_URI``, or one built from ``MONGO_HOST`` and ``MONGO_PORT``."""
    source = os.environ if env is None else env
    uri = source.get("MONGO_URI")
    if uri:
        return uri
    host = env_str("MONGO_HOST", "localhost", source)
    port = env_int("MONGO_PORT", 27017, source)
    return f"mongodb://{host}:{port}/"
