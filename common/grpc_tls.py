"""Mutual TLS of internal gRPC: every server asks every caller for a certificate of the
project CA, and every caller checks the server's.

One setting, ``GRPC_TLS_DIR`` (declared with ``tls_dir_setting()`` in each service's
settings.py), names a folder holding ``ca.crt`` and the process's own ``IDENTITY.crt`` and
``IDENTITY.key`` — ``dev/certs.py`` makes them (``make up``: ``$INFRA_DIR/certs``; the tests:
one folder per session; Kubernetes: the ``NAME-tls`` Secret mounted at
``/etc/video2mp3/tls``). The identity is the process's own name (``gateway``, ``auth``…),
written in the certificate's common name: the servers authorise callers by it
(common/grpc_permissions.py). There is no plaintext mode: a process without its
certificate does not start. Only the health-only port of a server (for Kubernetes' gRPC
probes, which cannot present a certificate) is plaintext — see common/grpc_server.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from common.config import SettingsError, setting

CA_FILE = "ca.crt"
TLS_DIR = "GRPC_TLS_DIR"
# Where the Kubernetes manifests mount a service's Secret NAME-tls.
DEFAULT_TLS_DIR = "/etc/video2mp3/tls"


def tls_dir_setting() -> Any:
    """The ``GRPC_TLS_DIR`` field of a service's Settings. Its files are read at start
    (``GrpcTls.load``); without them the process stops: there is no plaintext mode."""
    return setting(TLS_DIR, DEFAULT_TLS_DIR)


@dataclass(frozen=True)
class GrpcTls:
    """The CA, certificate and key of one process, read once at start."""

    identity: str
    ca: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)

    @classmethod
    def load(cls, directory: str | Path, identity: str) -> GrpcTls:
        """Read the files; a missing or unreadable one raises SettingsError naming it."""
        folder = Path(directory)
        contents = []
        for name in (CA_FILE, f"{identity}.crt", f"{identity}.key"):
            path = folder / name
            try:
                data = path.read_bytes()
            except OSError as error:
                raise SettingsError(
                    f"{TLS_DIR}={directory}: cannot read {name} ({error.strerror}); "
                    f"make the certificates with `python dev/certs.py {directory}`"
                ) from None
            if b"-----BEGIN" not in data:
                raise SettingsError(f"{TLS_DIR}={directory}: {name} is not a PEM file")
            contents.append(data)
        ca, cert, key = contents
        return cls(identity=identity, ca=ca, cert=cert, key=key)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """A caller's credentials: trust only the project CA, present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """A server's credentials: the handshake fails for a caller without a certificate
        of the project CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The caller's identity: the common name of its verified client certificate (None
    without one, which a server of ours never lets through the handshake)."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or []
    if len(names) != 1:
        return None
    value = names[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
