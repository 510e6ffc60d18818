"""Internal gRPC is authenticated (mutual TLS with the project CA) and authorised (the
permission table of common/grpc_permissions.py), against ``python -m auth`` and
``python -m storage`` as real processes."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.storage.v1 import jobs_pb2, jobs_pb2_grpc, storage_pb2, storage_pb2_grpc

from common.file_streams import UploadStream
from common.grpc_client import secure_channel
from common.grpc_permissions import CLIENTS, PERMISSIONS
from common.grpc_tls import GrpcTls
from dev.certs import ensure_certificates
from testing.infra import Infra
from testing.processes import ROOT, ServiceProcess, free_port, python_module, wait_for
from tests.fixtures.auth import FAST_ARGON2, unique_email

GRPCURL = str(ROOT / ".venv/bin/grpcurl")


@dataclass
class Servers:
    infra: Infra
    auth: str
    storage: str
    auth_health: str
    storage_health: str
    processes: dict[str, ServiceProcess]


def serving(infra: Infra, address: str) -> bool:
    with infra.channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def servers(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    work = tmp_path_factory.mktemp("mtls")
    ports = {name: free_port() for name in ("auth", "storage", "auth_health", "storage_health")}
    env = infra.service_env(
        **FAST_ARGON2,
        BIND_HOST="127.0.0.1",
        AUTH_PORT=str(ports["auth"]),
        AUTH_HEALTH_PORT=str(ports["auth_health"]),
        STORAGE_PORT=str(ports["storage"]),
        STORAGE_HEALTH_PORT=str(ports["storage_health"]),
    )
    processes = {
        name: ServiceProcess(f"{name}-mtls", python_module(name), env, work).start()
        for name in ("auth", "storage")
    }
    found = Servers(
        infra,
        **{name: f"127.0.0.1:{port}" for name, port in ports.items()},
        processes=processes,
    )
    try:
        for name in ("auth", "storage"):
            address = getattr(found, name)
            wait_for(functools.partial(serving, infra, address), timeout=60, what=f"{name} serving")
        yield found
    finally:
        for proc in processes.values():
            proc.stop()


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()


def health_check(channel: grpc.Channel) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


# ---------------------------------------------------------------- authentication (the handshake)


def test_a_caller_without_a_client_certificate_is_refused(servers: Servers) -> None:
    ca = (servers.infra.tls_dir / "ca.crt").read_bytes()
    for address in (servers.auth, servers.storage):
        # TLS, trusting the server, but no certificate of our own.
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
            assert code_of(lambda c=channel: health_check(c)) in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.UNAUTHENTICATED,
            )
        with grpc.insecure_channel(address) as channel:  # no TLS at all
            assert code_of(lambda c=channel: health_check(c)) == grpc.StatusCode.UNAVAILABLE
        # The same server answers a caller with a certificate.
        with servers.infra.channel(address, "gateway") as channel:
            assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING


def test_a_certificate_of_another_ca_is_refused(servers: Servers, tmp_path: Path) -> None:
    ensure_certificates(tmp_path / "other")
    ours = servers.infra.tls("operator")
    theirs = GrpcTls.load(tmp_path / "other", "operator")  # the same name, another CA
    impostor = GrpcTls(identity="operator", ca=ours.ca, cert=theirs.cert, key=theirs.key)
    with secure_channel(servers.auth, impostor) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        code = code_of(
            lambda: stub.Login(auth_pb2.LoginRequest(email="a@b.cc", password="x" * 12), timeout=5)
        )
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    # And a client trusting only the other CA does not accept our server.
    with secure_channel(servers.storage, theirs) as channel:
        assert code_of(lambda: health_check(channel)) == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- authorisation (the table)


def test_the_converter_may_not_mint_download_links(servers: Servers) -> None:
    request = auth_pb2.IssueDownloadTokenRequest(user_id="1", file_id="0123456789abcdef01234567")
    with servers.infra.channel(servers.auth, "converter") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.IssueDownloadToken(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.details() == (
            "converter may not call /video2mp3.auth.v1.AuthService/IssueDownloadToken"
        )
    # The gateway registers a user, the notifier may mint a link for that user's file.
    with servers.infra.channel(servers.auth, "gateway") as channel:
        register = auth_pb2.RegisterRequest(
            email=unique_email("mtls"), password="a perfectly fine passphrase"
        )
        user = auth_pb2_grpc.AuthServiceStub(channel).Register(register, timeout=10).user
    request.user_id = user.id
    with servers.infra.channel(servers.auth, "notifier") as channel:
        reply = auth_pb2_grpc.AuthServiceStub(channel).IssueDownloadToken(request, timeout=5)
        assert reply.download_token and reply.expires_at
    with servers.infra.channel(servers.auth, "converter") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        assert (
            code_of(lambda: stub.IssueDownloadToken(request, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        )
    logs = servers.processes["auth"].logs()
    denied = [json.loads(line) for line in logs.splitlines() if '"permission denied"' in line]
    assert any(
        line.get("identity") == "converter" and line.get("method", "").endswith("/IssueDownloadToken")
        for line in denied
    ), logs[-2000:]


def test_the_gateway_stores_and_reads_files_and_the_notifier_may_not(servers: Servers) -> None:
    header = storage_pb2.UploadHeader(
        bucket=storage_pb2.BUCKET_VIDEOS, filename="clip.mp4", content_type="video/mp4", owner_id="7"
    )
    with servers.infra.channel(servers.storage, "gateway") as channel:
        files = storage_pb2_grpc.StorageServiceStub(channel)
        stored = files.Upload(UploadStream(header, [b"x" * 1000]), timeout=30).file
        stat = files.Stat(storage_pb2.StatRequest(bucket=stored.bucket, file_id=stored.id), timeout=5)
        assert stat.file.size == 1000
    with servers.infra.channel(servers.storage, "notifier") as channel:
        files = storage_pb2_grpc.StorageServiceStub(channel)
        stat_request = storage_pb2.StatRequest(bucket=stored.bucket, file_id=stored.id)
        assert code_of(lambda: files.Stat(stat_request, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        delete = storage_pb2.DeleteRequest(bucket=stored.bucket, file_id=stored.id)
        assert code_of(lambda: files.Delete(delete, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        # A streaming method is refused before the server reads the stream.
        upload = UploadStream(header, [b"y" * 10])
        assert code_of(lambda: files.Upload(upload, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        listing = jobs_pb2.ListJobsRequest(owner_id="7")
        assert code_of(lambda: jobs.ListJobs(listing, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    with servers.infra.channel(servers.storage, "gateway") as channel:  # still there
        files = storage_pb2_grpc.StorageServiceStub(channel)
        assert files.Stat(storage_pb2.StatRequest(bucket=stored.bucket, file_id=stored.id), timeout=5)


def test_reflection_is_for_the_operator_only(servers: Servers) -> None:
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    def list_services(identity: str) -> list[str]:
        with servers.infra.channel(servers.storage, identity) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
            return [s.name for s in reply.list_services_response.service]

    assert "video2mp3.storage.v1.StorageService" in list_services("operator")
    assert code_of(lambda: list_services("gateway")) == grpc.StatusCode.PERMISSION_DENIED


def grpcurl(
    servers: Servers, *args: str, identity: str | None = "operator"
) -> subprocess.CompletedProcess[str]:
    """grpcurl over TLS with ``identity``'s certificate (None: with no certificate)."""
    ca_only = ["-cacert", str(servers.infra.tls_dir / "ca.crt")]
    creds = servers.infra.grpcurl_tls(identity) if identity else ca_only
    return subprocess.run([GRPCURL, *creds, *args], capture_output=True, text=True, timeout=30, check=False)


def test_grpcurl_works_with_the_operator_certificate(servers: Servers) -> None:
    listed = grpcurl(servers, servers.storage, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"video2mp3.storage.v1.StorageService", "video2mp3.storage.v1.JobService"} <= set(
        listed.stdout.split()
    )
    check = grpcurl(servers, servers.auth, "grpc.health.v1.Health/Check")
    assert check.returncode == 0 and json.loads(check.stdout)["status"] == "SERVING", check.stderr
    refused = grpcurl(servers, servers.storage, "list", identity=None)
    assert refused.returncode != 0
    denied = grpcurl(servers, servers.storage, "list", identity="gateway")
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr, denied.stderr


# ---------------------------------------------------------------- the probes' health-only port


def test_the_health_only_port_answers_probes_and_nothing_else(servers: Servers) -> None:
    for address, service in (
        (servers.auth_health, "video2mp3.auth.v1.AuthService"),
        (servers.storage_health, "video2mp3.storage.v1.StorageService"),
    ):
        with grpc.insecure_channel(address) as channel:  # as the kubelet: plaintext, no certificate
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            login = auth_pb2.LoginRequest(email="a@b.cc", password="x" * 12)
            assert code_of(lambda a=auth, r=login: a.Login(r, timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
            files = storage_pb2_grpc.StorageServiceStub(channel)
            stat = storage_pb2.StatRequest(file_id="0123456789abcdef01234567")
            assert code_of(lambda f=files, r=stat: f.Stat(r, timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
    listed = subprocess.run(
        [GRPCURL, "-plaintext", servers.storage_health, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode != 0, "no reflection on the health-only port"


# ---------------------------------------------------------------- the table


def test_every_served_method_is_in_the_table_and_every_row_is_served(servers: Servers) -> None:
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    served: set[str] = set()
    for address in (servers.auth, servers.storage):
        with servers.infra.channel(address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
            served |= {s.name for s in reply.list_services_response.service}
    assert served == set(PERMISSIONS), "each service a server offers has its rows, and only those"
    descriptors = {
        d.full_name: d
        for module in (auth_pb2, storage_pb2, jobs_pb2, health_pb2, reflection_pb2)
        for d in module.DESCRIPTOR.services_by_name.values()
    }
    for service, rows in PERMISSIONS.items():
        methods = {m.name for m in descriptors[service].methods}
        assert set(rows) == methods, f"{service}: table {sorted(rows)} vs contract {sorted(methods)}"
        for method, callers in rows.items():
            assert callers and callers <= set(CLIENTS), f"{service}/{method}: unknown callers {callers}"
