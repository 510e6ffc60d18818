"""Clients of the services behind the gateway, created lazily once per process.

gunicorn forks its workers; a gRPC channel or AMQP connection must never cross a fork, so
nothing is opened at import or app-creation time, and a process that finds clients made
by another pid starts afresh. Add a backend by giving it an address in ``_addresses`` and a
property that builds its stub with ``self._stub``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from flask import current_app, g, has_request_context
from grpc_health.v1 import health_pb2, health_pb2_grpc
from video2mp3.auth.v1 import auth_pb2_grpc
from video2mp3.storage.v1 import jobs_pb2_grpc, storage_pb2_grpc

from common.amqp import Publisher
from common.grpc_client import request_metadata, secure_channel
from common.grpc_tls import GrpcTls
from gateway.settings import Settings

EXTENSION = "video2mp3.clients"
S = TypeVar("S")


class Clients:
    def __init__(self, settings: Settings, tls: GrpcTls) -> None:
        self.settings = settings
        self.tls = tls
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._publisher: Publisher | None = None
        self._addresses = {"auth": settings.auth_address, "storage": settings.storage_address}

    def _check_fork(self) -> None:
        # Called with the lock held. Objects inherited from a parent process are dropped
        # without closing: they belong to the parent.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._channels, self._stubs, self._publisher = {}, {}, None

    def channel(self, backend: str) -> grpc.Channel:
        with self._lock:
            self._check_fork()
            channel = self._channels.get(backend)
            if channel is None:
                channel = secure_channel(self._addresses[backend], self.tls)
                self._channels[backend] = channel
            return channel

    def _stub(self, backend: str, factory: Callable[[grpc.Channel], S]) -> S:
        key = (backend, getattr(factory, "__name__", repr(factory)))
        with self._lock:
            self._check_fork()
            stub = self._stubs.get(key)
        if stub is None:
            stub = factory(self.channel(backend))
            with self._lock:
                stub = self._stubs.setdefault(key, stub)
        return stub

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return self._stub("auth", auth_pb2_grpc.AuthServiceStub)

    @property
    def storage(self) -> storage_pb2_grpc.StorageServiceStub:
        return self._stub("storage", storage_pb2_grpc.StorageServiceStub)

    @property
    def jobs(self) -> jobs_pb2_grpc.JobServiceStub:
        return self._stub("storage", jobs_pb2_grpc.JobServiceStub)

    @property
    def publisher(self) -> Publisher:
        with self._lock:
            self._check_fork()
            if self._publisher is None:
                self._publisher = Publisher(self.settings.rabbitmq_url)
            return self._publisher

    def serving(self, backend: str, service: str = "") -> bool:
        """A gRPC health check of one backend, within the readiness deadline."""
        stub = self._stub(backend, health_pb2_grpc.HealthStub)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.settings.readiness_timeout_seconds,
                metadata=call_metadata(),
            )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        with self._lock:
            if os.getpid() != self._pid:
                return
            channels, self._channels, self._stubs = self._channels, {}, {}
            publisher, self._publisher = self._publisher, None
        for channel in channels.values():
            channel.close()
        if publisher is not None:
            publisher.close()


def get_clients() -> Clients:
    clients: Clients = current_app.extensions[EXTENSION]
    return clients


def call_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a gRPC call made while serving a request: carries the request id."""
    return request_metadata(g.get("request_id") if has_request_context() else None)
