"""Settings of the storage service, declared once each (common/config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import (
    NOT_NEGATIVE,
    PORT,
    POSITIVE,
    EnvSettings,
    SettingsError,
    at_least,
    between,
    mongo_setting,
    rabbitmq_setting,
    setting,
)
from common.grpc_tls import GrpcTls, tls_dir_setting

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Settings(EnvSettings):
    bind_host: str = setting("BIND_HOST", "127.0.0.1")
    port: int = setting("STORAGE_PORT", 5001, check=PORT)
    grpc_tls_dir: str = tls_dir_setting()
    # Plaintext grpc.health.v1 only, for Kubernetes' gRPC probes (0: none).
    health_port: int = setting("STORAGE_HEALTH_PORT", 0, check=PORT)
    mongo_uri: str = mongo_setting()
    mongo_db: str = setting("MONGO_DB", "video2mp3")
    video_bucket: str = setting("VIDEO_BUCKET", "videos")
    mp3_bucket: str = setting("MP3_BUCKET", "mp3s")
    jobs_collection: str = setting("JOBS_COLLECTION", "jobs")
    # Largest file accepted by Upload (bytes).
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 512 * MIB, check=POSITIVE)
    # Size of the chunks sent by Download, and of the GridFS chunks written by Upload.
    # 1 MiB: the local FerretDB reads a chunk document at a fixed cost plus a cost per
    # byte, and reads 1 MiB chunks about 1.6x faster than 256 KiB ones (per byte).
    chunk_bytes: int = setting(
        "STORAGE_CHUNK_BYTES", MIB, check=between(64 * 1024, 4 * MIB, "must be between 64 KiB and 4 MiB")
    )
    # How long a MongoDB operation may wait for a server before answering UNAVAILABLE.
    mongo_timeout_ms: int = setting("MONGO_TIMEOUT_MS", 5000)
    grpc_workers: int = setting("STORAGE_GRPC_WORKERS", 32, check=at_least(2))
    # The job lifecycle (storage/lifecycle.py). RabbitMQ takes the JobChanged events.
    rabbitmq_url: str = rabbitmq_setting()
    # A converter not heard of for this long has lost its job (it reports every second).
    job_lease_seconds: float = setting("JOB_LEASE_SECONDS", 30.0, check=POSITIVE)
    # MP3s expire (removed; a download answers 410) this long after their job succeeded.
    mp3_retention_days: float = setting("MP3_RETENTION_DAYS", 7.0, check=POSITIVE)
    # Videos of succeeded jobs are removed once the MP3 is stored, unless this is set
    # (the same value as the sweeper's).
    keep_videos: bool = setting("KEEP_VIDEOS", False)

    def grpc_tls(self) -> GrpcTls:
        """This process's certificate (storage), the CA's, and its key (common/grpc_tls.py)."""
        return GrpcTls.load(self.grpc_tls_dir, "storage")

    def check(self) -> None:
        if self.video_bucket == self.mp3_bucket:
            raise SettingsError("VIDEO_BUCKET and MP3_BUCKET must differ")


@dataclass(frozen=True, kw_only=True)
class SweeperSettings(EnvSettings):
    """``python -m storage.sweeper`` (storage/sweeper.py): storage's database, the broker,
    and when to publish stuck jobs again and remove old files."""

    mongo_uri: str = mongo_setting()
    mongo_db: str = setting("MONGO_DB", "video2mp3")
    video_bucket: str = setting("VIDEO_BUCKET", "videos")
    mp3_bucket: str = setting("MP3_BUCKET", "mp3s")
    jobs_collection: str = setting("JOBS_COLLECTION", "jobs")
    mongo_timeout_ms: int = setting("MONGO_TIMEOUT_MS", 5000)
    rabbitmq_url: str = rabbitmq_setting()
    # Videos of succeeded jobs go (storage removes them when the MP3 is stored; the sweeper
    # catches a crash in between), unless this is set …
    keep_videos: bool = setting("KEEP_VIDEOS", False)
    # … and those of failed and cancelled jobs this long after the job finished.
    video_retention_hours: float = setting("VIDEO_RETENTION_HOURS", 24.0, check=NOT_NEGATIVE)
    # One pass this often (with jitter); one replica at a time holds the sweeper lease.
    sweep_interval_seconds: float = setting("SWEEP_INTERVAL_SECONDS", 30.0, check=POSITIVE)
    # Queued this long (or converting without a live converter): published again.
    requeue_after_seconds: float = setting("REQUEUE_AFTER_SECONDS", 300.0, check=POSITIVE)
    health_port: int = setting("SWEEPER_HEALTH_PORT", 0, check=PORT)  # 0: no HTTP health endpoint
    # An upload whose writer has not written for this long is taken for one a crashed storage
    # left behind: its chunks are removed (storage/gridwriter.py).
    orphan_upload_grace_seconds: float = setting("ORPHAN_UPLOAD_GRACE_SECONDS", 900.0, check=POSITIVE)

    def storage(self) -> Settings:
        """The storage settings its code (storage.mongo, storage.jobstore) works with."""
        return Settings(
            mongo_uri=self.mongo_uri,
            mongo_db=self.mongo_db,
            video_bucket=self.video_bucket,
            mp3_bucket=self.mp3_bucket,
            jobs_collection=self.jobs_collection,
            mongo_timeout_ms=self.mongo_timeout_ms,
            rabbitmq_url=self.rabbitmq_url,
            keep_videos=self.keep_videos,
        )
