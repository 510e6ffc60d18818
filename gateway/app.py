"""The gateway's application factory: ``gunicorn 'gateway.app:create_app()'``."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from common.config import SettingsError, exit_on_settings_error
from common.logs import setup_logging
from gateway import errors, metrics
from gateway.clients import EXTENSION, Clients
from gateway.jsonio import StrictJSONProvider
from gateway.settings import Settings
from gateway.sweeper import Sweeper
from gateway.views import download, identity, jobs, ops, upload

log = logging.getLogger("gateway.http")

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Without ``settings`` (the production path) they come from the
    environment and JSON logging is set up; nothing connects to a backend here."""
    if settings is None:
        setup_logging("gateway")
    try:
        settings = Settings.from_env() if settings is None else settings
        tls = settings.grpc_tls()  # read once, before gunicorn forks its workers
    except SettingsError as error:
        exit_on_settings_error("gateway", error)
        raise  # unreachable: exit_on_settings_error exits

    app = Flask("gateway", static_folder=None)  # every route is one of ours, documented
    app.json = StrictJSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        AUTH_TIMEOUT_SECONDS=settings.auth_timeout_seconds,
        GRPC_TIMEOUT_SECONDS=settings.grpc_timeout_seconds,
        PUBLIC_BASE_URL=settings.public_base_url,
        PROMETHEUS_MULTIPROC_DIR=settings.prometheus_multiproc_dir,
        JSON_SORT_KEYS=False,
    )
    app.extensions["video2mp3.settings"] = settings
    app.extensions[EXTENSION] = Clients(settings, tls)
    sweeper = Sweeper(app.extensions[EXTENSION], settings)
    app.extensions["video2mp3.sweeper"] = sweeper
    if settings.trusted_proxy_count:
        n = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]

    @app.before_request
    def request_id() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_started = time.perf_counter()
        sweeper.ensure_started()

    @app.after_request
    def log_request(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if request.path not in ("/healthz", "/readyz", "/metrics"):
            started = g.get("request_started")
            log.info(
                "http",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "request_id": g.get("request_id"),
                    "client": request.remote_addr,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1) if started else None,
                },
            )
        return response

    metrics.install(app)
    errors.register_error_handlers(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(identity.bp)
    app.register_blueprint(upload.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(download.bp)
    return app


def close_app(app: Flask) -> None:
    """Stop the sweeper and close what this process opened (gRPC channels, the AMQP
    connection). gunicorn calls it as each worker exits (``worker_exit`` in
    gateway/gunicorn_conf.py)."""
    sweeper = app.extensions.get("video2mp3.sweeper")
    if sweeper is not None:
        sweeper.stop()
    clients = app.extensions.get(EXTENSION)
    if clients is not None:
        clients.close()
    log.info("worker closed its clients", extra={"pid": os.getpid()})
