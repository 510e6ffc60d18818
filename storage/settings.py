"""Settings of the storage service, from environment variables only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.config import SettingsError, env_bool, env_float, env_int, env_str, mongo_uri, rabbitmq_url

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    bind_host: str = "127.0.0.1"
    port: int = 5001
    mongo_uri: str = "mongodb://localhost:27017/"
    mongo_db: str = "video2mp3"
    video_bucket: str = "videos"
    mp3_bucket: str = "mp3s"
    jobs_collection: str = "jobs"
    # Largest file accepted by Upload (bytes).
    max_upload_bytes: int = 512 * MIB
    # Size of the chunks sent by Download, and of the GridFS chunks written by Upload.
    # 1 MiB: the local FerretDB reads a chunk document at a fixed cost plus a cost per
    # byte, and reads 1 MiB chunks about 1.6x faster than 256 KiB ones (per byte).
    chunk_bytes: int = MIB
    # How long a MongoDB operation may wait for a server before answering UNAVAILABLE.
    mongo_timeout_ms: int = 5000
    grpc_workers: int = 32
    # Job lifecycle (storage/lifecycle.py). RabbitMQ takes the JobChanged events (empty: none).
    rabbitmq_url: str = ""
    # A converter that was not heard of for this long has lost its job (it reports every 2 s).
    job_lease_seconds: float = 30.0
    # MP3s expire (are removed; downloads answer 410) this long after their job succeeded.
    mp3_retention_days: float = 7.0
    # Videos of failed and cancelled jobs are removed this long after the job finished …
    video_retention_hours: float = 24.0
    # … and those of succeeded jobs once the MP3 is stored, unless this is set.
    keep_videos: bool = False
    # storage.sweeper: how often one pass runs (one replica at a time holds the lease) …
    sweep_interval_seconds: float = 30.0
    # … and how long a job may stay queued (or converting without a live converter)
    # before it is published again.
    requeue_after_seconds: float = 300.0
    # storage.sweeper's /healthz and /readyz (0: none).
    health_port: int = 0

    @staticmethod
    def _shared(env: Mapping[str, str] | None) -> dict[str, object]:
        """What the storage server and storage.sweeper both read."""
        return {
            "mongo_uri": mongo_uri(env),
            "mongo_db": env_str("MONGO_DB", "video2mp3", env),
            "video_bucket": env_str("VIDEO_BUCKET", "videos", env),
            "mp3_bucket": env_str("MP3_BUCKET", "mp3s", env),
            "jobs_collection": env_str("JOBS_COLLECTION", "jobs", env),
            "mongo_timeout_ms": env_int("MONGO_TIMEOUT_MS", 5000, env),
            "rabbitmq_url": rabbitmq_url(env),
            "keep_videos": env_bool("KEEP_VIDEOS", False, env),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The storage server's settings."""
        settings = cls(
            bind_host=env_str("BIND_HOST", "127.0.0.1", env),
            port=env_int("STORAGE_PORT", 5001, env),
            max_upload_bytes=env_int("MAX_UPLOAD_BYTES", 512 * MIB, env),
            chunk_bytes=env_int("STORAGE_CHUNK_BYTES", MIB, env),
            grpc_workers=env_int("STORAGE_GRPC_WORKERS", 32, env),
            job_lease_seconds=env_float("JOB_LEASE_SECONDS", 30.0, env),
            mp3_retention_days=env_float("MP3_RETENTION_DAYS", 7.0, env),
            **cls._shared(env),  # type: ignore[arg-type]
        )
        settings.check()
        return settings

    @classmethod
    def sweeper_from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``python -m storage.sweeper``."""
        settings = cls(
            video_retention_hours=env_float("VIDEO_RETENTION_HOURS", 24.0, env),
            sweep_interval_seconds=env_float("SWEEP_INTERVAL_SECONDS", 30.0, env),
            requeue_after_seconds=env_float("REQUEUE_AFTER_SECONDS", 300.0, env),
            health_port=env_int("HEALTH_PORT", 0, env),
            **cls._shared(env),  # type: ignore[arg-type]
        )
        settings.check()
        if not 0 <= settings.health_port < 65536:
            raise SettingsError(f"HEALTH_PORT must be a TCP port, got {settings.health_port}")
        return settings

    def check(self) -> None:
        if not 0 <= self.port < 65536:
            raise SettingsError(f"STORAGE_PORT must be a TCP port, got {self.port}")
        if self.max_upload_bytes <= 0:
            raise SettingsError("MAX_UPLOAD_BYTES must be positive")
        if not 64 * 1024 <= self.chunk_bytes <= 4 * MIB:
            raise SettingsError("STORAGE_CHUNK_BYTES must be between 64 KiB and 4 MiB")
        if self.video_bucket == self.mp3_bucket:
            raise SettingsError("VIDEO_BUCKET and MP3_BUCKET must differ")
        for name, value in (
            ("JOB_LEASE_SECONDS", self.job_lease_seconds),
            ("MP3_RETENTION_DAYS", self.mp3_retention_days),
            ("SWEEP_INTERVAL_SECONDS", self.sweep_interval_seconds),
            ("REQUEUE_AFTER_SECONDS", self.requeue_after_seconds),
        ):
            if value <= 0:
                raise SettingsError(f"{name} must be positive")
        if self.video_retention_hours < 0:
            raise SettingsError("VIDEO_RETENTION_HOURS must not be negative")
        if self.grpc_workers < 2:
            raise SettingsError("STORAGE_GRPC_WORKERS must be at least 2")
