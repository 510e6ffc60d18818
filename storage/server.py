"""Builds the storage gRPC server: StorageService and JobService over one MongoDB client."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc, storage_pb2, storage_pb2_grpc

from common.grpc_server import GrpcServer
from common.grpc_server import create_server as create_grpc_server
from storage.events import EventPublisher
from storage.files import StorageServicer
from storage.jobs import JobServicer
from storage.jobstore import JobStore
from storage.mongo import Mongo
from storage.settings import Settings

STORAGE_SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


def create_server(
    settings: Settings,
    port: int | None = None,
    health_port: int | None = None,
    interceptors: Iterable[grpc.ServerInterceptor] = (),
) -> GrpcServer:
    """Build (not start) the server; ``port=0`` picks a free port and ``interceptors`` inject
    faults (tests); without ``port`` the settings' ports (``STORAGE_PORT``,
    ``STORAGE_HEALTH_PORT``). Reads the TLS files of ``GRPC_TLS_DIR``: SettingsError when one
    is missing."""
    tls = settings.grpc_tls()
    if port is None:
        port, health_port = settings.port, settings.health_port or None
    mongo = Mongo(settings)
    mongo.ensure_indexes()  # when MongoDB is not up yet, retried on first use
    events = EventPublisher(settings.rabbitmq_url) if settings.rabbitmq_url else None
    store = JobStore(mongo, settings, events)
    storage = StorageServicer(mongo)
    jobs = JobServicer(mongo, store)
    srv = create_grpc_server(
        [
            (STORAGE_SERVICE, lambda s: storage_pb2_grpc.add_StorageServiceServicer_to_server(storage, s)),
            (JOB_SERVICE, lambda s: jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, s)),
        ],
        port=port,
        tls=tls,
        health_port=health_port,
        host=settings.bind_host,
        max_workers=settings.grpc_workers,
        interceptors=interceptors,
    )
    srv.on_stop.append(mongo.close)
    if events is not None:
        srv.on_stop.append(events.close)
    return srv
