"""The project's certificate authority and the mutual-TLS certificates of internal gRPC.

    python dev/certs.py DIR [--namespace video2mp3]

makes, in DIR, what is missing or no longer good (idempotent: a second run changes nothing):

* ``ca.crt`` / ``ca.key`` — the project CA (the key signs, and never leaves DIR);
* ``auth.crt``/``.key``, ``storage.crt``/``.key`` — server certificates, valid for the names a
  client dials: the bare service name, ``NAME.NAMESPACE``, ``NAME.NAMESPACE.svc``,
  ``NAME.NAMESPACE.svc.cluster.local`` (with ``--namespace``), ``localhost``, 127.0.0.1, ::1;
* ``gateway``, ``converter``, ``notifier``, ``sweeper``, ``operator`` — client certificates. The
  subject's common name is the identity the servers authorise (common/grpc_permissions.py).

A certificate is made again when it is missing, expires within 30 days, was not signed by
this CA, or names other hosts. Keys are EC P-256, written 0600. ``make up`` keeps its set in
``$INFRA_DIR/certs``; the tests make one per session; ``manifests/secrets/generate.sh`` one
for Kubernetes (docs/kubernetes.md).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import ipaddress
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVERS = ("auth", "storage")
CLIENTS = ("gateway", "converter", "notifier", "sweeper", "operator")
CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=30)
ORGANIZATION = "video2mp3"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _still_good(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - RENEW_BEFORE > _now()


def ensure_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and _still_good(cert):
            return cert, key
    key = _new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("video2mp3 internal CA"))
        .issuer_name(_name("video2mp3 internal CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, key


def server_names(name: str, namespace: str | None) -> list[x509.GeneralName]:
    dns = [name, "localhost"]
    if namespace:
        dns += [f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    ips = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    return [*(x509.DNSName(d) for d in dns), *(x509.IPAddress(i) for i in ips)]


def _matches(
    cert: x509.Certificate, ca: x509.Certificate, names: list[x509.GeneralName], usage: x509.ObjectIdentifier
) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    try:
        san = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return False
    return _still_good(cert) and set(san) == set(names) and eku == [usage]


def ensure_leaf(
    directory: Path,
    name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    server: bool,
    namespace: str | None,
) -> bool:
    """Make ``NAME.crt``/``NAME.key`` unless a good one exists; True when made."""
    ca_cert, ca_key = ca
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    # A client's identity is its common name; it also carries it as a URI (no DNS name, so a
    # client certificate never passes as a server's).
    client_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"video2mp3:{name}")]
    names = server_names(name, namespace) if server else client_names
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    if cert_path.exists() and key_path.exists():
        existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _matches(existing, ca_cert, names, usage):
            return False
    key = _new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return True


def ensure_certificates(
    directory: Path,
    namespace: str | None = None,
    servers: Iterable[str] = SERVERS,
    clients: Iterable[str] = CLIENTS,
) -> list[str]:
    """Make what is missing in ``directory`` (created 0700); the names of what was made."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `make up`s or test sessions at once
        ca = ensure_ca(directory)
        made = [n for n in servers if ensure_leaf(directory, n, ca, server=True, namespace=namespace)]
        made += [n for n in clients if ensure_leaf(directory, n, ca, server=False, namespace=namespace)]
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--namespace", help="Kubernetes namespace: server names NAME.NAMESPACE.svc…")
    args = parser.parse_args(argv)
    made = ensure_certificates(args.directory, args.namespace)
    if made:
        print(f"[certs] made {', '.join(made)} in {args.directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
