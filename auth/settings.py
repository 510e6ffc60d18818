"""Auth service settings, declared once each (common/config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import NOT_NEGATIVE, PORT, EnvSettings, SettingsError, at_least, min_bytes, setting
from common.grpc_tls import GrpcTls, tls_dir_setting

# HS256 keys shorter than the hash output weaken the signature (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, kw_only=True)
class Settings(EnvSettings):
    bind_host: str = setting("BIND_HOST", "127.0.0.1")
    port: int = setting("AUTH_PORT", 5000, check=PORT)
    grpc_max_workers: int = setting("AUTH_GRPC_MAX_WORKERS", 16, check=at_least(1))
    grpc_tls_dir: str = tls_dir_setting()
    # Plaintext grpc.health.v1 only, for Kubernetes' gRPC probes (0: none).
    health_port: int = setting("AUTH_HEALTH_PORT", 0, check=PORT)
    mysql_host: str = setting("MYSQL_HOST", "127.0.0.1")
    mysql_port: int = setting("MYSQL_PORT", 3306, check=PORT)
    mysql_user: str = setting("MYSQL_USER", "video2mp3")
    mysql_password: str = setting("MYSQL_PASSWORD", "", secret=True)
    mysql_db: str = setting("MYSQL_DB", "video2mp3")
    mysql_connect_timeout: float = setting("MYSQL_CONNECT_TIMEOUT_SECONDS", 5.0)
    # How long start-up waits for MySQL (it may start at the same time as we do).
    mysql_startup_timeout: float = setting("MYSQL_STARTUP_TIMEOUT_SECONDS", 60.0)
    jwt_secret: str = setting("JWT_SECRET", check=min_bytes(MIN_SECRET_BYTES), secret=True)
    jwt_issuer: str = setting("JWT_ISSUER", "video2mp3-auth")
    jwt_audience: str = setting("JWT_AUDIENCE", "video2mp3")
    download_audience: str = setting("JWT_DOWNLOAD_AUDIENCE", "video2mp3-download")
    jwt_leeway_seconds: int = setting("JWT_LEEWAY_SECONDS", 10)
    access_token_ttl: int = setting("ACCESS_TOKEN_TTL_SECONDS", 3600, check=at_least(1))
    download_token_ttl: int = setting("DOWNLOAD_TOKEN_TTL_SECONDS", 86400, check=at_least(1))
    download_token_max_ttl: int = setting("DOWNLOAD_TOKEN_MAX_TTL_SECONDS", 7 * 86400)
    # argon2id parameters (argon2-cffi's defaults, RFC 9106 "low memory" profile).
    argon2_time_cost: int = setting("ARGON2_TIME_COST", 3, check=at_least(1))
    argon2_memory_kib: int = setting("ARGON2_MEMORY_KIB", 65536)
    argon2_parallelism: int = setting("ARGON2_PARALLELISM", 4, check=at_least(1))
    # Login throttling (auth/throttle.py): failures within the window before back-off, per
    # account from one client address (…_PER_EMAIL), then the first wait, doubled for each
    # further failure up to the cap; per account (all addresses) and per address (all
    # accounts), failures after which attempts are spaced LOGIN_SLOWDOWN_SECONDS apart.
    login_window_seconds: int = setting("LOGIN_FAILURE_WINDOW_SECONDS", 900, check=at_least(1))
    login_max_failures_per_email: int = setting("LOGIN_MAX_FAILURES_PER_EMAIL", 5, check=at_least(1))
    login_backoff_seconds: int = setting("LOGIN_BACKOFF_SECONDS", 30, check=at_least(1))
    login_backoff_max_seconds: int = setting("LOGIN_BACKOFF_MAX_SECONDS", 900, check=at_least(1))
    login_max_failures_per_account: int = setting("LOGIN_MAX_FAILURES_PER_ACCOUNT", 50, check=at_least(1))
    login_max_failures_per_address: int = setting("LOGIN_MAX_FAILURES_PER_ADDRESS", 20, check=at_least(1))
    login_slowdown_seconds: int = setting("LOGIN_SLOWDOWN_SECONDS", 10, check=at_least(1))
    # Sign-ups per client address within a window.
    register_max_per_address: int = setting("REGISTER_MAX_PER_ADDRESS", 10, check=at_least(1))
    register_window_seconds: int = setting("REGISTER_WINDOW_SECONDS", 3600, check=at_least(1))
    # Password hashes computed at once, and how many more may wait; beyond that a sign-up or
    # login is refused at once (RESOURCE_EXHAUSTED), so hashing never takes every server
    # thread and token checks always find one free.
    hash_concurrency: int = setting("HASH_CONCURRENCY", 2, check=at_least(1))
    hash_queue: int = setting("HASH_QUEUE", 4, check=NOT_NEGATIVE)
    # The notifier's mail relay offers SMTPUTF8: addresses with non-ASCII characters before
    # the @ are then accepted at sign-up (common/email_address.py).
    mail_smtputf8: bool = setting("MAIL_SMTPUTF8", False)
    stop_grace_seconds: float = setting("AUTH_STOP_GRACE_SECONDS", 10.0)

    def grpc_tls(self) -> GrpcTls:
        """This process's certificate (auth), the CA's, and its key (common/grpc_tls.py)."""
        return GrpcTls.load(self.grpc_tls_dir, "auth")

    def check(self) -> None:
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise SettingsError("ARGON2_MEMORY_KIB must be at least 8 times ARGON2_PARALLELISM")
        if self.hash_concurrency + self.hash_queue >= self.grpc_max_workers:
            raise SettingsError(
                "HASH_CONCURRENCY + HASH_QUEUE must be below AUTH_GRPC_MAX_WORKERS, so token checks "
                "always find a free server thread"
            )
        if self.download_token_max_ttl < self.download_token_ttl:
            raise SettingsError("DOWNLOAD_TOKEN_MAX_TTL_SECONDS must not be below DOWNLOAD_TOKEN_TTL_SECONDS")
