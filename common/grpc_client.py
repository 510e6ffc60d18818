"""gRPC client side: channels with keepalive, and metadata that carries the request id."""

from __future__ import annotations

import grpc

# Every call gets a deadline; these are the defaults for quick calls and for streams.
DEFAULT_TIMEOUT = 10.0
STREAM_TIMEOUT = 600.0


def insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address,
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
    return (("x-request-id", request_id),) if request_id else ()
