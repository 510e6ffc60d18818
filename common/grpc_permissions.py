"""Who may call what over internal gRPC: the one table, enforced by ``AccessInterceptor``
(common/grpc_server.py) in every server.

A caller is known by the common name of its client certificate (common/grpc_tls.py,
made by dev/certs.py). A method missing from the table is refused to everyone, with an
ERROR log line naming it: a new RPC is added here, with the callers that need it, in the
same change (tests/test_grpc_mtls.py holds every method of every served service to the
table). The README's "Internal gRPC: mutual TLS, and who may call what" shows this table.
"""

from __future__ import annotations

from collections.abc import Mapping

# Client identities (the certificates' common names).
GATEWAY = "gateway"
CONVERTER = "converter"
NOTIFIER = "notifier"
SWEEPER = "sweeper"  # the recovery process (stale jobs, expiry); today the gateway's sweeper thread
OPERATOR = "operator"  # a person with grpcurl; its key is in no pod (README: "grpcurl")

CLIENTS = (GATEWAY, CONVERTER, NOTIFIER, SWEEPER, OPERATOR)

AUTH = "video2mp3.auth.v1.AuthService"
STORAGE = "video2mp3.storage.v1.StorageService"
JOBS = "video2mp3.storage.v1.JobService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

# service → method → the identities that may call it.
Table = Mapping[str, Mapping[str, frozenset[str]]]

# Keep one line per method.
PERMISSIONS: Table = {
    AUTH: {
        "Register": frozenset({GATEWAY, OPERATOR}),
        "Login": frozenset({GATEWAY, OPERATOR}),
        "ValidateToken": frozenset({GATEWAY, OPERATOR}),
        "IssueDownloadToken": frozenset({NOTIFIER, OPERATOR}),
        "ValidateDownloadToken": frozenset({GATEWAY, OPERATOR}),
    },
    STORAGE: {
        "Upload": frozenset({GATEWAY, CONVERTER, OPERATOR}),
        "Download": frozenset({GATEWAY, CONVERTER, OPERATOR}),
        "Stat": frozenset({GATEWAY, CONVERTER, OPERATOR}),
        "Delete": frozenset({GATEWAY, CONVERTER, OPERATOR}),
    },
    JOBS: {
        "CreateJob": frozenset({GATEWAY, OPERATOR}),
        "GetJob": frozenset({GATEWAY, CONVERTER, NOTIFIER, OPERATOR}),
        "ListJobs": frozenset({GATEWAY, OPERATOR}),
        "TransitionJob": frozenset({GATEWAY, CONVERTER, SWEEPER, OPERATOR}),
        "MarkNotified": frozenset({NOTIFIER, OPERATOR}),
        "DeleteJob": frozenset({GATEWAY, OPERATOR}),
        "ListStaleJobs": frozenset({GATEWAY, SWEEPER, OPERATOR}),
        "RecordSource": frozenset({CONVERTER, OPERATOR}),
    },
    HEALTH: {
        "Check": frozenset(CLIENTS),
        "Watch": frozenset(CLIENTS),
    },
    REFLECTION: {
        "ServerReflectionInfo": frozenset({OPERATOR}),
    },
}


def split_method(full_method: str) -> tuple[str, str]:
    """``/package.Service/Method`` → (``package.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def allowed_callers(full_method: str, table: Table = PERMISSIONS) -> frozenset[str] | None:
    """Who may call ``/package.Service/Method``; None when the table does not name it."""
    service, method = split_method(full_method)
    return table.get(service, {}).get(method)
