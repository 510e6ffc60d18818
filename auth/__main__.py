"""``python -m auth``: run the auth gRPC server until SIGTERM."""

from __future__ import annotations

import logging

from auth.db import CONNECTION_ERRORS
from auth.server import create_server
from auth.settings import Settings
from common.config import SettingsError, exit_on_settings_error
from common.grpc_server import serve_forever
from common.logs import setup_logging

log = logging.getLogger("auth")


def main() -> None:
    setup_logging("auth")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        exit_on_settings_error("auth", error)
        return
    try:
        srv = create_server(settings, port=settings.port)
    except CONNECTION_ERRORS as error:
        log.error("cannot reach MySQL at start-up; exiting", extra={"error": repr(error)})
        raise SystemExit(1) from None
    serve_forever(srv, grace=settings.stop_grace_seconds)


if __name__ == "__main__":
    main()
