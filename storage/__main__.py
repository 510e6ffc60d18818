"""``python -m storage``: run the storage service until SIGTERM."""

from __future__ import annotations

from common import memory
from common.config import SettingsError, exit_on_settings_error
from common.grpc_server import serve_forever
from common.logs import setup_logging
from storage.server import create_server
from storage.settings import Settings


def main() -> None:
    memory.limit_arenas()
    setup_logging("storage")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        exit_on_settings_error("storage", error)
        return
    serve_forever(create_server(settings))


if __name__ == "__main__":
    main()
