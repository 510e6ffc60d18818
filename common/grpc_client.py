"""gRPC client side, one way for every caller (gateway, converter, notifier, tests):
channels with mutual TLS (common/grpc_tls.py) and keepalive, the deadlines, the
request-id metadata, and ``is_transient`` — the one rule for which failed calls are worth
trying again.

The streaming helpers of StorageService (upload and download of files) are in
``common/file_streams.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from common.grpc_tls import GrpcTls

# Every call gets a deadline; these are the defaults for quick calls and for streams.
DEFAULT_TIMEOUT = 10.0
STREAM_TIMEOUT = 600.0

REQUEST_ID_HEADER = "x-request-id"

# Codes after which the same call may succeed later. The converter and the notifier had a
# list each; this is their union:
# - UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED: gRPC's own "retry" codes;
# - INTERNAL, UNKNOWN: a server crashing or restarting mid-call (our servers turn every bug
#   into INTERNAL too, which is retried a bounded number of times and then parked);
# - CANCELLED: the peer went away (a restart, a proxy closing the stream);
# - UNIMPLEMENTED: during a rolling deploy a caller can reach a server older than itself.
# An error without a status code (not a ``grpc.Call``) is transient as well: it comes from
# the channel, not from a server's answer.
# Everything else (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED …)
# is an answer: asking again gets the same one.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def secure_channel(address: str, tls: GrpcTls) -> grpc.Channel:
    """A channel to ``address`` (``host:port``) that presents ``tls``'s certificate and
    trusts only servers with a certificate of the project CA for that host."""
    return grpc.secure_channel(
        address,
        tls.channel_credentials(),
        options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.max_send_message_length", 8 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 1),
            # A fixed per-stream window instead of one grown by bandwidth-delay probing:
            # see create_server in common/grpc_server.py.
            ("grpc.http2.bdp_probe", 0),
        ],
    )


def request_metadata(request_id: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that carries a request id to the server (see common/grpc_server.py)."""
    return ((REQUEST_ID_HEADER, request_id),) if request_id else ()


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call; None when the error carries none."""
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def details(error: grpc.RpcError) -> str:
    """The server's message of a failed call (or the error's repr)."""
    text = getattr(error, "details", None)
    return str(text()) if callable(text) else repr(error)


def is_transient(error: grpc.RpcError) -> bool:
    """True when trying the same call again later may succeed (see TRANSIENT_CODES)."""
    code = status_code(error)
    return code is None or code in TRANSIENT_CODES


def describe(error: grpc.RpcError) -> str:
    """``CODE details`` of a failed call, for logs and error messages."""
    return f"{status_code(error)} {details(error)}"
