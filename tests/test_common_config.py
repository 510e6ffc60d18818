from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from common.config import (
    PROCESS_SETTINGS,
    Declared,
    SettingsError,
    declarations,
    env_bool,
    env_int,
    env_str,
    mongo_uri,
    rabbitmq_url,
)
from testing.processes import ROOT


def test_required_missing_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        env_str("JWT_SECRET", env={})


def test_defaults_and_parsing() -> None:
    env = {"A": "7", "B": "yes", "C": ""}
    assert env_int("A", 1, env) == 7
    assert env_bool("B", False, env) is True
    assert env_str("C", "fallback", env) == "fallback"
    with pytest.raises(SettingsError, match="integer"):
        env_int("X", None, {"X": "seven"})


def test_urls_from_parts() -> None:
    assert rabbitmq_url({"RABBITMQ_HOST": "rabbitmq"}) == "amqp://guest:guest@rabbitmq:5672/%2F"
    assert rabbitmq_url({"RABBITMQ_URL": "amqp://u:p@h/v"}) == "amqp://u:p@h/v"
    assert mongo_uri({"MONGO_HOST": "mongodb", "MONGO_PORT": "27018"}) == "mongodb://mongodb:27018/"


# ---------------------------------------------------------------------------------------- declarations
# Each setting is declared once (common/config.py); the files that set them are held to that.

SERVICES = ("gateway", "auth", "storage", "converter", "notifier", "sweeper")
# A service whose settings are not ``<service>.settings.Settings``: (module, class).
SETTINGS_CLASS = {"sweeper": ("storage.settings", "SweeperSettings")}
# Names dev/defaults.env sets for the local servers and scripts, read by no service.
LOCAL_ONLY = {
    "INFRA_DIR": "where dev/infra.sh keeps the servers' data",
    "PYTHON": "the interpreter of the scripts",
    "RABBITMQ_NODENAME": "the local RabbitMQ node",
    "RABBITMQ_DIST_PORT": "the local RabbitMQ node's distribution port",
    "DEFAULT_MONGO_URI": "tells dev/infra.sh whether MONGO_URI points at its own FerretDB",
    "MONGO_HOST_SHOWN": "MONGO_URI without credentials, for messages",
    "SMTP_SINK_DIR": "where the local SMTP sink writes messages",
}
# manifests/*/config.env of servers that are not our services.
INFRASTRUCTURE_CONFIGS = {"mongodb", "mysql"}


def declared(service: str) -> dict[str, tuple[Declared, Any]]:
    """Environment name → (declaration, type) of one service; a composite one under each name."""
    module, name = SETTINGS_CLASS.get(service, (f"{service}.settings", "Settings"))
    settings = getattr(importlib.import_module(module), name)
    result: dict[str, tuple[Declared, Any]] = {}
    for item, kind in declarations(settings).values():
        for name in item.names:
            result[name] = (item, kind)
    return result


def check_value(service: str, name: str, raw: str) -> None:
    item, kind = declared(service)[name]
    if item.load is None:  # a part of a composite setting is parsed by its loader
        try:
            item.parse_text(raw, kind)
        except SettingsError as error:
            pytest.fail(f"{service}: {error}")


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value
    return pairs


def test_manifest_configs_set_only_declared_settings_with_valid_values() -> None:
    configs = {path.parent.name: path for path in (ROOT / "manifests").glob("*/config.env")}
    assert set(configs) == set(SERVICES) | INFRASTRUCTURE_CONFIGS
    for service in SERVICES:
        names = declared(service)
        for name, raw in env_file(configs[service]).items():
            assert name in names or name in PROCESS_SETTINGS, f"{service}/config.env: {name} is not declared"
            if name in names:
                check_value(service, name, raw)


def test_dev_defaults_set_declared_settings_with_valid_values() -> None:
    exported = re.findall(
        r'^export ([A-Z0-9_]+)="(?:\$\{\1:-(.*)\}|(.*))"$', (ROOT / "dev" / "defaults.env").read_text(), re.M
    )
    assert len(exported) > 20
    by_service = {service: declared(service) for service in SERVICES}
    for name, default, value in exported:
        readers = [service for service, names in by_service.items() if name in names]
        assert readers or name in LOCAL_ONLY, f"dev/defaults.env sets {name}, which no service declares"
        literal = default or value
        if "$" not in literal:
            for service in readers:
                check_value(service, name, literal)


def test_a_name_means_the_same_in_every_service() -> None:
    """A name read by several services has one default (or is required by some)."""
    defaults: dict[str, dict[str, Any]] = {}
    for service in SERVICES:
        for name, (item, _) in declared(service).items():
            if not item.required:
                defaults.setdefault(name, {})[service] = item.default
    for name, by_service in defaults.items():
        assert len(set(map(repr, by_service.values()))) == 1, f"{name} has different defaults: {by_service}"
