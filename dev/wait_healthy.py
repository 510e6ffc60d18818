"""Waits until every local service answers its health check (used by `make up`).

The gRPC servers are asked over mutual TLS, as the operator (``GRPC_TLS_DIR``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.grpc_client import secure_channel
from common.grpc_tls import GrpcTls


def grpc_serving(address: str, tls: GrpcTls | None) -> bool:
    """SERVING over mutual TLS with ``tls``; ``None``: over plaintext (a health-only port)."""
    try:
        with secure_channel(address, tls) if tls else grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL of our own
            return bool(response.status == 200)
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    env = os.environ
    tls = GrpcTls.load(env["GRPC_TLS_DIR"], "operator")
    checks = {
        "auth": lambda: grpc_serving(env["AUTH_SVC_ADDRESS"], tls),
        "storage": lambda: grpc_serving(env["STORAGE_SVC_ADDRESS"], tls),
        "gateway": lambda: http_ok(f"http://127.0.0.1:{env['GATEWAY_PORT']}/readyz"),
        "converter": lambda: http_ok(f"http://127.0.0.1:{env['CONVERTER_HEALTH_PORT']}/healthz"),
        "notifier": lambda: http_ok(f"http://127.0.0.1:{env['NOTIFIER_HEALTH_PORT']}/healthz"),
    }
    deadline = time.monotonic() + args.timeout
    pending = dict(checks)
    while pending and time.monotonic() < deadline:
        for name, check in list(pending.items()):
            if check():
                print(f"[up] {name} is healthy", file=sys.stderr)
                del pending[name]
        time.sleep(0.5)
    if pending:
        print(f"[up] not healthy after {args.timeout:.0f}s: {', '.join(pending)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
