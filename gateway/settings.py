"""Gateway settings, declared once each (common/config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import NOT_NEGATIVE, PORT, POSITIVE, EnvSettings, at_least, rabbitmq_setting, setting
from common.grpc_tls import GrpcTls, tls_dir_setting


@dataclass(frozen=True, kw_only=True)
class Settings(EnvSettings):
    bind_host: str = setting("BIND_HOST", "127.0.0.1")
    port: int = setting("GATEWAY_PORT", 8080, check=PORT)
    auth_address: str = setting("AUTH_SVC_ADDRESS", "127.0.0.1:5000")
    storage_address: str = setting("STORAGE_SVC_ADDRESS", "127.0.0.1:5001")
    grpc_tls_dir: str = tls_dir_setting()
    rabbitmq_url: str = rabbitmq_setting()
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 512 * 1024 * 1024, check=POSITIVE)
    public_base_url: str = setting(
        "PUBLIC_BASE_URL", "http://127.0.0.1:8080", parse=lambda raw: raw.rstrip("/")
    )
    # Deadline of the token check on every authenticated request, and of other quick calls.
    auth_timeout_seconds: float = setting("AUTH_TIMEOUT_SECONDS", 3.0, check=POSITIVE)
    grpc_timeout_seconds: float = setting("GRPC_TIMEOUT_SECONDS", 10.0, check=POSITIVE)
    readiness_timeout_seconds: float = setting("READINESS_TIMEOUT_SECONDS", 2.0, check=POSITIVE)
    # How many reverse proxies in front of the gateway set X-Forwarded-For (0: none trusted).
    trusted_proxy_count: int = setting("TRUSTED_PROXY_COUNT", 0, check=NOT_NEGATIVE)
    # gunicorn (gateway/gunicorn_conf.py)
    workers: int = setting("GUNICORN_WORKERS", 2, check=POSITIVE)
    threads: int = setting("GUNICORN_THREADS", 8, check=POSITIVE)
    worker_timeout_seconds: int = setting("GUNICORN_TIMEOUT_SECONDS", 120)
    prometheus_multiproc_dir: str = setting("PROMETHEUS_MULTIPROC_DIR", "")
    # Jobs still queued after this long are published again (gateway/sweeper.py) …
    requeue_after_seconds: int = setting("REQUEUE_AFTER_SECONDS", 300, check=at_least(1))
    # … checked this often by every gateway process (0 turns the sweeper off).
    sweep_interval_seconds: float = setting("SWEEP_INTERVAL_SECONDS", 60.0, check=NOT_NEGATIVE)

    def grpc_tls(self) -> GrpcTls:
        """This process's certificate (gateway), the CA's, and its key (common/grpc_tls.py)."""
        return GrpcTls.load(self.grpc_tls_dir, "gateway")
