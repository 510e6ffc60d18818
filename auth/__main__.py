"""``python -m auth``: run the auth gRPC server until SIGTERM (common/service.py)."""

from __future__ import annotations

import logging

from auth.db import CONNECTION_ERRORS
from auth.server import create_server
from auth.settings import Settings
from common.service import Service, run_service

log = logging.getLogger("auth")


def main(service: Service) -> int:
    settings = service.settings(Settings.from_env)
    try:
        srv = service.settings(
            lambda: create_server(settings, port=settings.port, health_port=settings.health_port or None)
        )
    except CONNECTION_ERRORS as error:
        log.error("cannot reach MySQL at start-up; exiting", extra={"error": repr(error)})
        return 1
    service.serve_grpc(srv, grace=settings.stop_grace_seconds)
    return 0


if __name__ == "__main__":
    run_service("auth", main)
