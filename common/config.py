"""Settings from environment variables, each declared once.

A service's ``settings.py`` holds a frozen dataclass ``Settings(EnvSettings)`` whose fields
are declarations::

    port: int = setting("AUTH_PORT", 5000, check=PORT)
    jwt_secret: str = setting("JWT_SECRET", check=min_bytes(32), secret=True)  # required

One line says the environment name, the type (the field's), the default (none: required)
and the check. ``Settings.from_env(env=None)`` reads every declared name (passing ``env``
along: a test records which names a service reads, to check the Kubernetes ConfigMaps and
``dev/defaults.env`` against the declarations), parses it by the field's type, runs its
check, then ``Settings.check()`` for rules across settings. A required setting that is
missing, or one that is malformed, raises ``SettingsError`` naming it; a process's main
(``common/service.py``) turns that into a clear message and exit code 2.

Names: a name read by several services means the same thing and has the same default in
each (``GRPC_TIMEOUT_SECONDS``, ``STORAGE_SVC_ADDRESS``); a setting whose value differs by
service carries the service's prefix (``CONVERTER_PREFETCH``, ``NOTIFIER_PREFETCH``), so
one environment — ``make up``'s — can hold every service's values.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

# Read by every process at start (common/logs.py), outside any Settings class.
PROCESS_SETTINGS = ("LOG_LEVEL",)

_KEY = "video2mp3.setting"
S = TypeVar("S", bound="EnvSettings")


class SettingsError(Exception):
    """A required setting is missing or malformed."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


# ---------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """A rule one value must follow, and how to say it ("must be …")."""

    test: Callable[[Any], bool]
    rule: str


PORT = Check(lambda v: 0 <= v <= 65535, "must be a port number (0 to 65535)")
POSITIVE = Check(lambda v: v > 0, "must be positive")
NOT_NEGATIVE = Check(lambda v: v >= 0, "must not be negative")


def at_least(minimum: float) -> Check:
    return Check(lambda v: v >= minimum, f"must be at least {minimum}")


def between(low: float, high: float, rule: str = "") -> Check:
    return Check(lambda v: low <= v <= high, rule or f"must be between {low} and {high}")


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, f"must be one of {', '.join(choices)}")


def min_bytes(count: int) -> Check:
    return Check(lambda v: len(v.encode()) >= count, f"must be at least {count} bytes")


def starts_with(*prefixes: str) -> Check:
    return Check(lambda v: v.startswith(prefixes), f"must start with {' or '.join(prefixes)}")


# ---------------------------------------------------------------------------------------- parsing


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name} must be a number, got {raw!r}") from None


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"environment variable {name} must be true or false, got {raw!r}")


_PARSERS: dict[Any, Callable[[str, str], Any]] = {
    str: lambda _name, raw: raw,
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
}


# ---------------------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Declared:
    """One setting: its environment name, default (``REQUIRED``: none), parser and check.
    A composite one (``load``) is read from several names by a function."""

    env: str
    default: Any = REQUIRED
    check: Check | None = None
    parse: Callable[[str], Any] | None = None
    secret: bool = False
    load: Callable[[Mapping[str, str]], Any] | None = None
    names: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def read(self, source: Mapping[str, str], kind: Any) -> Any:
        """The value from ``source``, parsed as ``kind`` and checked; SettingsError otherwise."""
        if self.load is not None:
            return self.load(source)
        raw = source.get(self.env)
        if raw is None or raw == "":
            if self.required:
                raise SettingsError(f"environment variable {self.env} is required but not set")
            value = self.default
        elif self.parse is not None:
            value = self.parse(raw)
        else:
            value = _PARSERS[kind](self.env, raw)
        if self.check is not None and not self.check.test(value):
            shown = "" if self.secret else f", got {value!r}"
            raise SettingsError(f"environment variable {self.env} {self.check.rule}{shown}")
        return value

    def parse_text(self, raw: str, kind: Any) -> Any:
        """Parse and check one value as if it came from the environment (for tests of files)."""
        return self.read({self.env: raw}, kind)


def setting(
    env: str,
    default: Any = REQUIRED,
    *,
    check: Check | None = None,
    parse: Callable[[str], Any] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a field of a ``Settings`` dataclass (see the module's doc). ``parse`` replaces
    the parser of the field's type (e.g. to normalise); ``secret`` keeps it out of repr and
    of error messages."""
    declared = Declared(env, default, check, parse, secret, names=(env,))
    if declared.required:
        return dataclasses.field(repr=not secret, metadata={_KEY: declared})
    return dataclasses.field(default=default, repr=not secret, metadata={_KEY: declared})


def composite(load: Callable[[Mapping[str, str]], Any], names: tuple[str, ...]) -> Any:
    """A field read from several names by ``load`` (e.g. ``RABBITMQ_URL`` or its parts); its
    default is what ``load`` makes of an empty environment."""
    declared = Declared(names[0], load({}), load=load, names=names)
    return dataclasses.field(default=declared.default, repr=False, metadata={_KEY: declared})


def declarations(cls: type) -> dict[str, tuple[Declared, Any]]:
    """Field name → (declaration, type) of a Settings class."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f.metadata[_KEY], hints[f.name]) for f in dataclasses.fields(cls) if _KEY in f.metadata}


class EnvSettings:
    """Base of every service's ``Settings`` dataclass."""

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None) -> S:
        source = os.environ if env is None else env
        values = {name: declared.read(source, kind) for name, (declared, kind) in declarations(cls).items()}
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Rules across settings (each one alone is checked by its declaration)."""


def exit_on_settings_error(service: str, error: SettingsError) -> None:
    """Print a clear message and stop the process (used by every service's main)."""
    print(f"{service}: configuration error: {error}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------- shared settings


def env_str(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str:
    value = Declared(name, REQUIRED if default is None else default).read(
        os.environ if env is None else env, str
    )
    return str(value)


def env_int(name: str, default: int | None = None, env: Mapping[str, str] | None = None) -> int:
    return int(
        Declared(name, REQUIRED if default is None else default).read(os.environ if env is None else env, int)
    )


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    return bool(Declared(name, default).read(os.environ if env is None else env, bool))


RABBITMQ_NAMES = (
    "RABBITMQ_URL",
    "RABBITMQ_HOST",
    "RABBITMQ_PORT",
    "RABBITMQ_USER",
    "RABBITMQ_PASSWORD",
    "RABBITMQ_VHOST",
)
MONGO_NAMES = ("MONGO_URI", "MONGO_HOST", "MONGO_PORT")


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


def rabbitmq_setting() -> Any:
    """The broker's URL: ``RABBITMQ_URL`` or its parts (every service that uses RabbitMQ)."""
    return composite(rabbitmq_url, RABBITMQ_NAMES)


def mongo_setting() -> Any:
    """The database server: ``MONGO_URI`` or ``MONGO_HOST`` and ``MONGO_PORT`` (storage)."""
    return composite(mongo_uri, MONGO_NAMES)
