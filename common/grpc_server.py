"""gRPC server bootstrap shared by auth and storage.

``create_server`` builds a server with the standard health service (per-service status),
server reflection, the request interceptor and the access interceptor; it listens with
mutual TLS only (common/grpc_tls.py), and lets each caller call only what the permission
table (common/grpc_permissions.py) gives it. ``health_port`` adds a plaintext listener
that serves grpc.health.v1 and nothing else, for Kubernetes' gRPC probes (the kubelet
cannot present a client certificate); it shares the health status of the main port.
``GrpcServer.stop`` marks health NOT_SERVING, stops with a grace period and runs clean-up.
A process runs it with ``Service.serve_grpc`` (common/service.py), which waits for
SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.grpc_access import AccessInterceptor, wrap_behavior
from common.grpc_client import REQUEST_ID_HEADER
from common.grpc_permissions import PERMISSIONS, Table
from common.grpc_tls import GrpcTls

log = logging.getLogger("grpc")


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class RequestInterceptor(grpc.ServerInterceptor):
    """Logs one line per call (method, code, duration, request id) and turns unexpected
    exceptions into INTERNAL with a generic message: no stack trace reaches a client."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if method.startswith(("/grpc.health.v1.", "/grpc.reflection.")):
            return handler

        def finish(
            context: grpc.ServicerContext, rid: str, started: float, error: BaseException | None
        ) -> None:
            code = context.code() if hasattr(context, "code") else None
            if error is not None and code is None:
                log.error(
                    "unhandled error",
                    exc_info=(type(error), error, error.__traceback__),
                    extra={"method": method, "request_id": rid},
                )
            name = code.name if isinstance(code, grpc.StatusCode) else ("INTERNAL" if error else "OK")
            log.info(
                "rpc",
                extra={
                    "method": method,
                    "code": name,
                    "request_id": rid,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )

        def guard(context: grpc.ServicerContext, error: BaseException) -> None:
            code = context.code() if hasattr(context, "code") else None
            if code is None:
                context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise error

        def wrap_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                rid, started = _request_id(context), time.monotonic()
                try:
                    response = behavior(request_or_iterator, context)
                except Exception as error:
                    finish(context, rid, started, error)
                    guard(context, error)
                    raise
                finish(context, rid, started, None)
                return response

            return call

        def wrap_stream(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def call(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                rid, started = _request_id(context), time.monotonic()
                try:
                    yield from behavior(request_or_iterator, context)
                except Exception as error:
                    finish(context, rid, started, error)
                    guard(context, error)
                    raise
                finish(context, rid, started, None)

            return call

        return wrap_behavior(handler, wrap_stream if handler.response_streaming else wrap_unary)


@dataclass
class GrpcServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    service_names: list[str]
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # The plaintext health-only listener (None without one) and its port.
    health_server: grpc.Server | None = None
    health_port: int = 0

    def start(self) -> None:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [*self.service_names, ""]:
            self.health.set(name, status)

    def stop(self, grace: float = 10.0) -> None:
        """NOT_SERVING first (so probes drain traffic), then a graceful stop, then clean-up."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        for callback in self.on_stop:
            try:
                callback()
            except Exception:
                log.exception("clean-up after stop failed")


def create_server(
    registrations: Iterable[tuple[str, Callable[[grpc.Server], None]]],
    port: int,
    tls: GrpcTls,
    host: str = "127.0.0.1",
    max_workers: int = 16,
    max_message_bytes: int = 8 * 1024 * 1024,
    health_port: int | None = None,
    permissions: Table = PERMISSIONS,
    interceptors: Iterable[grpc.ServerInterceptor] = (),
) -> GrpcServer:
    """Build (not start) a server. ``registrations`` pairs each full service name with a
    function that adds its servicer. ``port=0`` picks a free port (for tests);
    ``health_port`` None: no health-only listener, 0: one on a free port; ``interceptors``
    run after the access check (tests inject faults with one)."""
    registrations = list(registrations)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        # The request interceptor is the outer one: refused calls are logged too.
        interceptors=[RequestInterceptor(), AccessInterceptor(permissions), *interceptors],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # No bandwidth-delay probing: with it gRPC grows a stream's receive window (bytes
            # the peer may send before we read) the longer a transfer runs, so the memory of a
            # file stream grew with the file (storage: 75 MiB for 32 MiB, 81-89 for 1 GiB).
            # With the fixed default window (64 KiB) it stays flat, and a file stream is paced
            # by the database's chunk writes anyway; raise grpc.http2.lookahead_bytes if links
            # with a long round trip ever make the window the limit.
            ("grpc.http2.bdp_probe", 0),
        ],
    )
    names = []
    for name, add in registrations:
        add(server)
        names.append(name)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials())
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    result = GrpcServer(server=server, health=health_servicer, port=bound, service_names=names)
    if health_port is not None:
        result.health_server, result.health_port = _health_only_server(health_servicer, host, health_port)
    result.set_serving(False)
    return result


def _health_only_server(servicer: health.HealthServicer, host: str, port: int) -> tuple[grpc.Server, int]:
    """A plaintext listener serving grpc.health.v1 only (Check and Watch of the same status)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpc-health"),
        maximum_concurrent_rpcs=8,
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (health port)")
    return server, bound
