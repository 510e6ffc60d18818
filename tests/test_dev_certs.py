"""dev/certs.py: the project CA and the certificates, made once and again only when needed."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from cryptography import x509

from dev.certs import CLIENTS, SERVERS, ensure_certificates


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".crt", ".key")}


def test_made_once_then_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    assert sorted(ensure_certificates(folder)) == sorted([*SERVERS, *CLIENTS])
    first = contents(folder)
    assert set(first) == {"ca.crt", "ca.key"} | {
        f"{n}.{e}" for n in (*SERVERS, *CLIENTS) for e in ("crt", "key")
    }
    assert ensure_certificates(folder) == []
    assert contents(folder) == first
    for key in folder.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key.name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_certificate_of_another_ca_or_for_other_names_is_made_again(tmp_path: Path) -> None:
    ours, other = tmp_path / "ours", tmp_path / "other"
    ensure_certificates(ours)
    ensure_certificates(other)
    for suffix in (".crt", ".key"):
        shutil.copy(other / f"gateway{suffix}", ours / f"gateway{suffix}")
    assert ensure_certificates(ours) == ["gateway"]
    ca = x509.load_pem_x509_certificate((ours / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate((ours / "gateway.crt").read_bytes()).verify_directly_issued_by(ca)
    # Kubernetes names: the servers' certificates are made again for them.
    assert sorted(ensure_certificates(ours, namespace="video2mp3")) == sorted(SERVERS)
    auth = x509.load_pem_x509_certificate((ours / "auth.crt").read_bytes())
    names = auth.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"auth", "auth.video2mp3.svc.cluster.local", "localhost"} <= set(
        names.get_values_for_type(x509.DNSName)
    )


def test_client_certificates_name_the_identity_and_are_no_server_certificates(tmp_path: Path) -> None:
    ensure_certificates(tmp_path)
    for name in CLIENTS:
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [], "no host name: never valid as a server"
