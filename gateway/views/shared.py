"""Small helpers the gateway's views share: the gRPC deadline, public URLs, timestamps."""

from __future__ import annotations

from datetime import UTC

from flask import current_app
from google.protobuf.timestamp_pb2 import Timestamp


def grpc_timeout() -> float:
    """The deadline of a unary call to a backend, in seconds."""
    return float(current_app.config["GRPC_TIMEOUT_SECONDS"])


def iso(ts: Timestamp) -> str | None:
    """A protobuf timestamp as ISO 8601 in UTC (``…Z``), None when unset."""
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def base_url() -> str:
    """Where users reach the gateway (``PUBLIC_BASE_URL``), for links in responses."""
    return str(current_app.config["PUBLIC_BASE_URL"])
