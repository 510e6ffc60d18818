"""Auth service settings, read only from environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.config import SettingsError, env_bool, env_float, env_int, env_str

# HS256 keys shorter than the hash output weaken the signature (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class Settings:
    bind_host: str
    port: int
    grpc_max_workers: int
    mysql_host: str
    mysql_port: int
    mysql_user: str
    mysql_password: str = ""
    mysql_db: str = "video2mp3"
    mysql_connect_timeout: float = 5.0
    # How long start-up waits for MySQL (it may start at the same time as we do).
    mysql_startup_timeout: float = 60.0
    jwt_secret: str = ""
    jwt_issuer: str = "video2mp3-auth"
    jwt_audience: str = "video2mp3"
    download_audience: str = "video2mp3-download"
    jwt_leeway_seconds: int = 10
    access_token_ttl: int = 3600
    download_token_ttl: int = 86400
    download_token_max_ttl: int = 7 * 86400
    # argon2id parameters (argon2-cffi's defaults, RFC 9106 "low memory" profile).
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    # Login throttling: failures within the window before back-off, per account from one
    # client address (…_PER_EMAIL) and per client address over all accounts.
    login_window_seconds: int = 900
    login_max_failures_per_email: int = 5
    login_max_failures_per_address: int = 20
    stop_grace_seconds: float = 10.0
    # Login back-off per account + address, and the slowdown once an account (all
    # addresses) or an address (all accounts) passes its limit (auth/throttle.py).
    login_backoff_seconds: int = 30
    login_backoff_max_seconds: int = 900
    login_max_failures_per_account: int = 50
    login_slowdown_seconds: int = 10
    # Sign-ups per client address within a window.
    register_max_per_address: int = 10
    register_window_seconds: int = 3600
    # Password hashes computed at once, and how many more may wait; beyond that a sign-up or
    # login is refused at once (RESOURCE_EXHAUSTED), so hashing never takes every server
    # thread and token checks always find one free.
    hash_concurrency: int = 2
    hash_queue: int = 4
    # The notifier's mail relay offers SMTPUTF8: addresses with non-ASCII characters before
    # the @ are then accepted at sign-up (common/email_address.py).
    mail_smtputf8: bool = False

    def __repr__(self) -> str:  # never print secrets into logs
        return (
            f"Settings(bind_host={self.bind_host!r}, port={self.port}, "
            f"mysql={self.mysql_host}:{self.mysql_port}/{self.mysql_db})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        secret = env_str("JWT_SECRET", None, env)
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(f"environment variable JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        settings = cls(
            bind_host=env_str("BIND_HOST", "127.0.0.1", env),
            port=env_int("AUTH_PORT", 5000, env),
            grpc_max_workers=env_int("AUTH_GRPC_MAX_WORKERS", 16, env),
            mysql_host=env_str("MYSQL_HOST", "127.0.0.1", env),
            mysql_port=env_int("MYSQL_PORT", 3306, env),
            mysql_user=env_str("MYSQL_USER", "video2mp3", env),
            mysql_password=env_str("MYSQL_PASSWORD", "", env),
            mysql_db=env_str("MYSQL_DB", "video2mp3", env),
            mysql_connect_timeout=env_float("MYSQL_CONNECT_TIMEOUT_SECONDS", 5.0, env),
            mysql_startup_timeout=env_float("MYSQL_STARTUP_TIMEOUT_SECONDS", 60.0, env),
            jwt_secret=secret,
            jwt_issuer=env_str("JWT_ISSUER", "video2mp3-auth", env),
            jwt_audience=env_str("JWT_AUDIENCE", "video2mp3", env),
            download_audience=env_str("JWT_DOWNLOAD_AUDIENCE", "video2mp3-download", env),
            jwt_leeway_seconds=env_int("JWT_LEEWAY_SECONDS", 10, env),
            access_token_ttl=env_int("ACCESS_TOKEN_TTL_SECONDS", 3600, env),
            download_token_ttl=env_int("DOWNLOAD_TOKEN_TTL_SECONDS", 86400, env),
            download_token_max_ttl=env_int("DOWNLOAD_TOKEN_MAX_TTL_SECONDS", 7 * 86400, env),
            argon2_time_cost=env_int("ARGON2_TIME_COST", 3, env),
            argon2_memory_kib=env_int("ARGON2_MEMORY_KIB", 65536, env),
            argon2_parallelism=env_int("ARGON2_PARALLELISM", 4, env),
            login_window_seconds=env_int("LOGIN_FAILURE_WINDOW_SECONDS", 900, env),
            login_max_failures_per_email=env_int("LOGIN_MAX_FAILURES_PER_EMAIL", 5, env),
            login_max_failures_per_address=env_int("LOGIN_MAX_FAILURES_PER_ADDRESS", 20, env),
            stop_grace_seconds=env_float("AUTH_STOP_GRACE_SECONDS", 10.0, env),
            login_backoff_seconds=env_int("LOGIN_BACKOFF_SECONDS", 30, env),
            login_backoff_max_seconds=env_int("LOGIN_BACKOFF_MAX_SECONDS", 900, env),
            login_max_failures_per_account=env_int("LOGIN_MAX_FAILURES_PER_ACCOUNT", 50, env),
            login_slowdown_seconds=env_int("LOGIN_SLOWDOWN_SECONDS", 10, env),
            register_max_per_address=env_int("REGISTER_MAX_PER_ADDRESS", 10, env),
            register_window_seconds=env_int("REGISTER_WINDOW_SECONDS", 3600, env),
            hash_concurrency=env_int("HASH_CONCURRENCY", 2, env),
            hash_queue=env_int("HASH_QUEUE", 4, env),
            mail_smtputf8=env_bool("MAIL_SMTPUTF8", False, env),
        )
        for name, value in (
            ("AUTH_PORT", settings.port),
            ("ACCESS_TOKEN_TTL_SECONDS", settings.access_token_ttl),
            ("DOWNLOAD_TOKEN_TTL_SECONDS", settings.download_token_ttl),
            ("LOGIN_FAILURE_WINDOW_SECONDS", settings.login_window_seconds),
            ("LOGIN_MAX_FAILURES_PER_EMAIL", settings.login_max_failures_per_email),
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", settings.login_max_failures_per_address),
            ("ARGON2_TIME_COST", settings.argon2_time_cost),
            ("ARGON2_PARALLELISM", settings.argon2_parallelism),
            ("AUTH_GRPC_MAX_WORKERS", settings.grpc_max_workers),
            ("LOGIN_BACKOFF_SECONDS", settings.login_backoff_seconds),
            ("LOGIN_BACKOFF_MAX_SECONDS", settings.login_backoff_max_seconds),
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", settings.login_max_failures_per_account),
            ("LOGIN_SLOWDOWN_SECONDS", settings.login_slowdown_seconds),
            ("REGISTER_MAX_PER_ADDRESS", settings.register_max_per_address),
            ("REGISTER_WINDOW_SECONDS", settings.register_window_seconds),
            ("HASH_CONCURRENCY", settings.hash_concurrency),
        ):
            if value < (0 if name == "AUTH_PORT" else 1):
                raise SettingsError(f"environment variable {name} must be positive, got {value}")
        if settings.argon2_memory_kib < 8 * settings.argon2_parallelism:
            raise SettingsError("ARGON2_MEMORY_KIB must be at least 8 times ARGON2_PARALLELISM")
        if settings.hash_queue < 0:
            raise SettingsError(
                f"environment variable HASH_QUEUE must not be negative, got {settings.hash_queue}"
            )
        if settings.hash_concurrency + settings.hash_queue >= settings.grpc_max_workers:
            raise SettingsError(
                "HASH_CONCURRENCY + HASH_QUEUE must be below AUTH_GRPC_MAX_WORKERS, so token checks "
                "always find a free server thread"
            )
        if settings.download_token_max_ttl < settings.download_token_ttl:
            raise SettingsError("DOWNLOAD_TOKEN_MAX_TTL_SECONDS must not be below DOWNLOAD_TOKEN_TTL_SECONDS")
        return settings
