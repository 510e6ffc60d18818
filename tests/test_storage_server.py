"""The storage process: settings, grpcurl (reflection), health, start and graceful stop,
and UNAVAILABLE (never INTERNAL) when MongoDB is down."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from common.config import SettingsError
from storage.settings import Settings
from testing.infra import Infra
from testing.processes import ROOT, ServiceProcess, free_port, python_module, wait_for
from tests.fixtures.storage import StorageHandle

GRPCURL = str(ROOT / ".venv/bin/grpcurl")


def test_settings_defaults_and_overrides() -> None:
    defaults = Settings.from_env({})
    assert (defaults.bind_host, defaults.port, defaults.mongo_db) == ("127.0.0.1", 5001, "video2mp3")
    assert defaults.mongo_uri == "mongodb://localhost:27017/"
    assert (defaults.video_bucket, defaults.mp3_bucket) == ("videos", "mp3s")
    custom = Settings.from_env(
        {
            "BIND_HOST": "0.0.0.0",
            "STORAGE_PORT": "6001",
            "MONGO_HOST": "mongo",
            "MONGO_PORT": "27018",
            "MONGO_DB": "x",
            "VIDEO_BUCKET": "v",
            "MP3_BUCKET": "m",
            "MAX_UPLOAD_BYTES": "1000",
            "STORAGE_CHUNK_BYTES": "524288",
        }
    )
    assert custom.mongo_uri == "mongodb://mongo:27018/"
    assert (custom.port, custom.max_upload_bytes, custom.chunk_bytes) == (6001, 1000, 524288)
    assert Settings.from_env({"MONGO_URI": "mongodb://u:p@db/"}).mongo_uri == "mongodb://u:p@db/"
    for bad in [
        {"STORAGE_PORT": "http"},
        {"MAX_UPLOAD_BYTES": "0"},
        {"STORAGE_CHUNK_BYTES": "10"},
        {"VIDEO_BUCKET": "same", "MP3_BUCKET": "same"},
    ]:
        with pytest.raises(SettingsError):
            Settings.from_env(bad)


def grpcurl(infra: Infra, *args: str) -> str:
    result = subprocess.run(
        [GRPCURL, *infra.grpcurl_tls(), *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_lists_services_and_health_is_serving(infra: Infra, storage_service: StorageHandle) -> None:
    address = storage_service.address
    services = grpcurl(infra, address, "list").split()
    assert "video2mp3.storage.v1.StorageService" in services
    assert "video2mp3.storage.v1.JobService" in services
    assert "grpc.health.v1.Health" in services
    methods = grpcurl(infra, address, "list", "video2mp3.storage.v1.JobService").split()
    assert "video2mp3.storage.v1.JobService.TransitionJob" in methods
    for service in ["", "video2mp3.storage.v1.StorageService", "video2mp3.storage.v1.JobService"]:
        answer = json.loads(
            grpcurl(infra, "-d", json.dumps({"service": service}), address, "grpc.health.v1.Health/Check")
        )
        assert answer == {"status": "SERVING"}


def test_mongo_down_answers_unavailable(start_storage: Callable[..., StorageHandle]) -> None:
    down = start_storage(MONGO_URI=f"mongodb://127.0.0.1:{free_port()}/", MONGO_TIMEOUT_MS="500")
    calls: list[Callable[[], object]] = [
        lambda: down.files.Stat(
            storage_pb2.StatRequest(bucket=storage_pb2.BUCKET_VIDEOS, file_id="0123456789abcdef01234567")
        ),
        lambda: down.upload(b"data"),
        lambda: down.download("0123456789abcdef01234567"),
        lambda: down.jobs.GetJob(jobs_pb2.GetJobRequest(job_id="0123456789abcdef01234567")),
        lambda: down.jobs.ListJobs(jobs_pb2.ListJobsRequest(owner_id="1")),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_process_serves_and_stops_on_sigterm(infra: Infra, tmp_path: Path) -> None:
    port = free_port()
    process = ServiceProcess(
        "storage", python_module("storage"), infra.service_env(STORAGE_PORT=str(port)), tmp_path
    ).start()
    try:
        channel = infra.channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, timeout=30, what="storage SERVING")
        process.signal(signal.SIGTERM)
        assert process.stop(timeout=20) == 0, process.logs()
        channel.close()
        lines = [json.loads(line) for line in process.logs().splitlines() if line.startswith("{")]
        assert any(line["message"] == "serving" for line in lines)
        assert all(line["service"] == "storage" for line in lines)
    finally:
        process.kill()


def test_process_refuses_bad_settings(infra: Infra, tmp_path: Path) -> None:
    process = ServiceProcess(
        "storage-bad", python_module("storage"), infra.service_env(MAX_UPLOAD_BYTES="lots"), tmp_path
    ).start()
    assert process.proc is not None
    assert process.proc.wait(30) == 2
    assert "MAX_UPLOAD_BYTES" in process.logs()
