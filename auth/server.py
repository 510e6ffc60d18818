"""Builds the auth gRPC server: migrations, servicer, health, reflection."""

from __future__ import annotations

from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc

from auth.db import Database, migrate_when_reachable
from auth.service import AuthServicer
from auth.settings import Settings
from common import grpc_server

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


def create_server(
    settings: Settings, port: int = 0, health_port: int | None = None
) -> grpc_server.GrpcServer:
    """Apply migrations and build (not start) the server; ``port=0`` picks a free port
    (``python -m auth`` passes ``settings.port`` and ``settings.health_port``). Reads the
    TLS files of ``GRPC_TLS_DIR``: SettingsError when one is missing."""
    tls = settings.grpc_tls()
    db = Database(settings, max_idle=settings.grpc_max_workers)
    migrate_when_reachable(db, settings.mysql_startup_timeout)
    servicer = AuthServicer(settings, db)
    srv = grpc_server.create_server(
        [(SERVICE_NAME, lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server))],
        port=port,
        tls=tls,
        health_port=health_port,
        host=settings.bind_host,
        max_workers=settings.grpc_max_workers,
    )
    srv.on_stop.append(db.close)
    return srv
