"""``python -m storage``: run the storage service until SIGTERM (common/service.py)."""

from __future__ import annotations

from common.service import Service, run_service
from storage.server import create_server
from storage.settings import Settings


def main(service: Service) -> None:
    settings = service.settings(Settings.from_env)
    service.serve_grpc(service.settings(lambda: create_server(settings)))


if __name__ == "__main__":
    run_service("storage", main, big_streams=True)
