"""gunicorn configuration: ``gunicorn -c python:gateway.gunicorn_conf 'gateway.app:create_app()'``.

Binds to ``BIND_HOST:GATEWAY_PORT``, gthread workers (uploads stream through threads),
gunicorn's own logs as JSON lines like every other service; each worker closes its clients as it
exits (``worker_exit``).
"""

from __future__ import annotations

from typing import Any

from common.config import SettingsError, exit_on_settings_error
from gateway.settings import Settings

try:
    _settings = Settings.from_env()
except SettingsError as _error:
    exit_on_settings_error("gateway", _error)
    raise

bind = f"{_settings.bind_host}:{_settings.port}"
worker_class = "gthread"
workers = _settings.workers
threads = _settings.threads
timeout = _settings.worker_timeout_seconds
graceful_timeout = 30
keepalive = 5
# Limits on the request line and headers (bodies are limited by the app).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = None  # the app logs one JSON line per request
errorlog = "-"
proc_name = "video2mp3-gateway"
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl),
# shared by every gateway of that user and unwritable on a read-only root filesystem.
control_socket_disable = True
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "common.logs.JsonFormatter", "service": "gateway"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}


def worker_exit(server: Any, worker: Any) -> None:
    # In the worker, as it leaves: close what it opened (the app is worker.wsgi).
    from flask import Flask

    from gateway.app import close_app

    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        close_app(app)


def child_exit(server: Any, worker: Any) -> None:
    # prometheus_client multiprocess mode: forget the samples of live gauges of a dead worker.
    if _settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
