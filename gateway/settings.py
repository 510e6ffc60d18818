"""Gateway settings, read only from environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.config import SettingsError, env_float, env_int, env_str, rabbitmq_url


@dataclass(frozen=True)
class Settings:
    bind_host: str = "127.0.0.1"
    port: int = 8080
    auth_address: str = "127.0.0.1:5000"
    storage_address: str = "127.0.0.1:5001"
    rabbitmq_url: str = "amqp://guest:guest@localhost:5672/%2F"
    max_upload_bytes: int = 512 * 1024 * 1024
    public_base_url: str = "http://127.0.0.1:8080"
    # Deadline of the token check on every authenticated request, and of other quick calls.
    auth_timeout_seconds: float = 3.0
    grpc_timeout_seconds: float = 10.0
    readiness_timeout_seconds: float = 2.0
    # How many reverse proxies in front of the gateway set X-Forwarded-For (0: none trusted).
    trusted_proxy_count: int = 0
    # gunicorn (gateway/gunicorn_conf.py)
    workers: int = 2
    # Open connections per worker (gevent: one greenlet each; event streams stay open).
    worker_connections: int = 1000
    # Server-Sent Events: a comment line this often keeps proxies from closing a quiet stream.
    sse_heartbeat_seconds: float = 15.0
    worker_timeout_seconds: int = 120
    prometheus_multiproc_dir: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        settings = cls(
            bind_host=env_str("BIND_HOST", "127.0.0.1", env),
            port=env_int("GATEWAY_PORT", 8080, env),
            auth_address=env_str("AUTH_SVC_ADDRESS", "127.0.0.1:5000", env),
            storage_address=env_str("STORAGE_SVC_ADDRESS", "127.0.0.1:5001", env),
            rabbitmq_url=rabbitmq_url(env),
            max_upload_bytes=env_int("MAX_UPLOAD_BYTES", 512 * 1024 * 1024, env),
            public_base_url=env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8080", env).rstrip("/"),
            auth_timeout_seconds=env_float("AUTH_TIMEOUT_SECONDS", 3.0, env),
            grpc_timeout_seconds=env_float("GRPC_TIMEOUT_SECONDS", 10.0, env),
            readiness_timeout_seconds=env_float("READINESS_TIMEOUT_SECONDS", 2.0, env),
            trusted_proxy_count=env_int("TRUSTED_PROXY_COUNT", 0, env),
            workers=env_int("GUNICORN_WORKERS", 2, env),
            worker_connections=env_int("GUNICORN_WORKER_CONNECTIONS", 1000, env),
            sse_heartbeat_seconds=env_float("SSE_HEARTBEAT_SECONDS", 15.0, env),
            worker_timeout_seconds=env_int("GUNICORN_TIMEOUT_SECONDS", 120, env),
            prometheus_multiproc_dir=env_str("PROMETHEUS_MULTIPROC_DIR", "", env),
        )
        if not 0 <= settings.port <= 65535:
            raise SettingsError(
                f"environment variable GATEWAY_PORT must be a port number, got {settings.port}"
            )
        for name, value in (
            ("MAX_UPLOAD_BYTES", settings.max_upload_bytes),
            ("AUTH_TIMEOUT_SECONDS", settings.auth_timeout_seconds),
            ("GRPC_TIMEOUT_SECONDS", settings.grpc_timeout_seconds),
            ("READINESS_TIMEOUT_SECONDS", settings.readiness_timeout_seconds),
            ("GUNICORN_WORKERS", settings.workers),
            ("GUNICORN_WORKER_CONNECTIONS", settings.worker_connections),
            ("SSE_HEARTBEAT_SECONDS", settings.sse_heartbeat_seconds),
        ):
            if value <= 0:
                raise SettingsError(f"environment variable {name} must be positive, got {value}")
        if settings.trusted_proxy_count < 0:
            raise SettingsError("environment variable TRUSTED_PROXY_COUNT must not be negative")
        return settings
