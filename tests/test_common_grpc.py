"""The shared gRPC bootstrap: health per service, reflection, error hygiene, graceful stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.grpc_permissions import GATEWAY, OPERATOR, PERMISSIONS
from common.grpc_server import GrpcServer, create_server
from testing.infra import Infra
from testing.processes import ROOT, free_port, port_open, wait_for

SERVICE = "test.v1.EchoService"
# The project's table, and a row for the echo service.
TABLE = {**PERMISSIONS, SERVICE: {"Echo": frozenset({GATEWAY, OPERATOR})}}


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"abort":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad echo")
    if request == b"boom":
        raise RuntimeError("secret internal detail")
    return request


def _add_echo(server: grpc.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture
def echo_server(infra: Infra) -> Iterator[GrpcServer]:
    srv = create_server([(SERVICE, _add_echo)], port=0, tls=infra.tls("auth"), permissions=TABLE)
    srv.start()
    srv.set_serving(True)
    yield srv
    srv.stop(grace=1)


def call(infra: Infra, srv: GrpcServer, payload: bytes) -> bytes:
    with infra.channel(f"127.0.0.1:{srv.port}", GATEWAY) as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        return bytes(echo(payload, timeout=5))


def test_health_reports_each_service(infra: Infra, echo_server: GrpcServer) -> None:
    with infra.channel(f"127.0.0.1:{echo_server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in (SERVICE, ""):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        echo_server.set_serving(False)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_errors_keep_their_code_and_hide_internals(infra: Infra, echo_server: GrpcServer) -> None:
    assert call(infra, echo_server, b"hi") == b"hi"
    with pytest.raises(grpc.RpcError) as aborted:
        call(infra, echo_server, b"abort")
    assert aborted.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert aborted.value.details() == "bad echo"
    with pytest.raises(grpc.RpcError) as crashed:
        call(infra, echo_server, b"boom")
    assert crashed.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (crashed.value.details() or "")


def test_reflection_lists_services(infra: Infra, echo_server: GrpcServer) -> None:
    grpcurl = ROOT / ".venv/bin/grpcurl"
    out = subprocess.run(
        [
            str(grpcurl),
            *infra.grpcurl_tls(),
            f"127.0.0.1:{echo_server.port}",
            "list",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert SERVICE in out
    assert "grpc.health.v1.Health" in out


def test_sigterm_stops_gracefully_with_json_logs(infra: Infra) -> None:
    port = free_port()
    script = textwrap.dedent(f"""
        import logging
        from common.grpc_server import create_server
        from common.grpc_tls import GrpcTls
        from common.service import run_service

        def main(service):
            service.closing(lambda: logging.getLogger("probe").info("closed"))
            tls = GrpcTls.load("{infra.tls_dir}", "auth")
            service.serve_grpc(create_server([], port={port}, tls=tls), grace=1)

        run_service("probe", main)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}", "PATH": "/usr/bin:/bin"},
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=20, what="probe server")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert messages[-2:] == ["closed", "stopped"]  # what main opened is closed before the exit
    assert all(line["service"] == "probe" and "severity" in line and "time" in line for line in lines)


def test_is_transient_tells_answers_from_outages(infra: Infra, echo_server: GrpcServer) -> None:
    from common.grpc_client import is_transient

    with pytest.raises(grpc.RpcError) as answered:
        call(infra, echo_server, b"abort")  # INVALID_ARGUMENT: the same call gets the same answer
    assert not is_transient(answered.value)
    with pytest.raises(grpc.RpcError) as crashed:
        call(infra, echo_server, b"boom")  # INTERNAL: a server bug or restart, worth a bounded retry
    assert is_transient(crashed.value)
    with (
        grpc.insecure_channel(f"127.0.0.1:{free_port()}") as channel,
        pytest.raises(grpc.RpcError) as down,
    ):
        channel.unary_unary(f"/{SERVICE}/Echo")(b"x", timeout=5)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE and is_transient(down.value)


def test_a_method_missing_from_the_table_is_refused_to_everyone_and_logged(
    infra: Infra, caplog: pytest.LogCaptureFixture
) -> None:
    """A new RPC merged without its row: PERMISSION_DENIED for every caller, an ERROR line."""
    srv = create_server([(SERVICE, _add_echo)], port=0, tls=infra.tls("auth"))  # the project's table
    srv.start()
    try:
        for identity in ("operator", "gateway"):
            with infra.channel(f"127.0.0.1:{srv.port}", identity) as channel:
                with pytest.raises(grpc.RpcError) as refused:
                    channel.unary_unary(f"/{SERVICE}/Echo")(b"hi", timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        srv.stop(grace=1)
    missing = [r for r in caplog.records if "missing from the permission table" in r.getMessage()]
    assert missing and all(r.levelname == "ERROR" for r in missing)
    assert missing[0].method == f"/{SERVICE}/Echo"  # type: ignore[attr-defined]
