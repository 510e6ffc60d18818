from __future__ import annotations

import pytest

from common.config import SettingsError, env_bool, env_int, env_str, mongo_uri, rabbitmq_url


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
