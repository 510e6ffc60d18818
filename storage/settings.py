"""Settings of the storage service, declared once each (common/config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import (
    PORT,
    POSITIVE,
    EnvSettings,
    SettingsError,
    at_least,
    between,
    mongo_setting,
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

    def grpc_tls(self) -> GrpcTls:
        """This process's certificate (storage), the CA's, and its key (common/grpc_tls.py)."""
        return GrpcTls.load(self.grpc_tls_dir, "storage")

    def check(self) -> None:
        if self.video_bucket == self.mp3_bucket:
            raise SettingsError("VIDEO_BUCKET and MP3_BUCKET must differ")
