"""The one place internal gRPC calls are authorised: ``AccessInterceptor``.

The TLS handshake already refused every caller without a client certificate of the
project CA (common/grpc_tls.py); this interceptor lets a call through only when the
certificate's identity is among the method's callers in common/grpc_permissions.py:
PERMISSION_DENIED otherwise, and for a method the table does not name (with an ERROR log
line, so a new RPC without a row is noticed at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from common.grpc_permissions import PERMISSIONS, Table, allowed_callers
from common.grpc_tls import peer_identity

log = logging.getLogger("grpc.access")


class AccessInterceptor(grpc.ServerInterceptor):
    def __init__(self, table: Table = PERMISSIONS) -> None:
        self.table = table

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # not served here: UNIMPLEMENTED, as without the interceptor
        method: str = handler_call_details.method
        callers = allowed_callers(method, self.table)
        if callers is None:
            log.error(
                "method missing from the permission table (common/grpc_permissions.py): refused to everyone",
                extra={"method": method},
            )

        def check(context: grpc.ServicerContext) -> None:
            identity = peer_identity(context)
            if identity is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
            if callers is None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any caller")
            if identity not in (callers or ()):
                log.warning("permission denied", extra={"method": method, "identity": identity})
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not call {method}")

        def guarded(behavior: Callable[..., Any]) -> Callable[..., Any]:
            # A plain function (not a generator) so the check runs before the servicer,
            # for streaming methods too.
            def call(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                check(context)
                return behavior(request_or_iterator, context)

            return call

        return wrap_behavior(handler, guarded)


def wrap_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """The handler with its one behaviour (unary or streaming, whichever it has) replaced by
    ``wrap(behaviour)``: how a server interceptor puts code around a method's servicer."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return handler._replace(**{kind: wrap(behavior)})
    return handler
