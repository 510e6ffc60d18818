"""Probes, metrics and the API description: ``/healthz`` (process alive), ``/readyz`` (backends
reachable), ``/metrics``, ``/openapi.json``."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify

from gateway import metrics, openapi
from gateway.clients import get_clients

bp = Blueprint("ops", __name__)

AUTH_SERVICE = "video2mp3.auth.v1.AuthService"


def readiness_checks() -> dict[str, Callable[[], bool]]:
    """What must be reachable for this gateway to take traffic (add backends here)."""
    clients = get_clients()
    return {"auth": lambda: clients.serving("auth", AUTH_SERVICE)}


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    results = {name: ("ok" if check() else "unavailable") for name, check in readiness_checks().items()}
    ready = all(value == "ok" for value in results.values())
    return jsonify({"status": "ready" if ready else "not ready", "checks": results}), 200 if ready else 503


@bp.get("/metrics")
def prometheus() -> Response:
    return metrics.render(current_app.config["PROMETHEUS_MULTIPROC_DIR"])


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi.document())
