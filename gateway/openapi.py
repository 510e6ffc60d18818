"""The HTTP API as an OpenAPI 3.1 document: ``gateway/openapi.yaml``, served as JSON at
``GET /openapi.json``. tests/test_gateway_openapi.py keeps it equal to the app's routes."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

SPEC_FILE = "openapi.yaml"


@functools.cache
def document() -> dict[str, Any]:
    """The parsed document (read once per process)."""
    text = resources.files("gateway").joinpath(SPEC_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded
