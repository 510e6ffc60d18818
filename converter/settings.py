"""Converter settings, declared once each (common/config.py)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from common.amqp import ConsumerSettings
from common.config import NOT_NEGATIVE, PORT, POSITIVE, SettingsError, at_least, setting
from common.consumer_settings import ConsumerEnvSettings
from common.grpc_tls import GrpcTls, tls_dir_setting
from converter.encoders import EncodeOptions


@dataclass(frozen=True, kw_only=True)
class Settings(ConsumerEnvSettings):
    storage_address: str = setting("STORAGE_SVC_ADDRESS")
    grpc_tls_dir: str = tls_dir_setting()
    # Each worker is one AMQP connection + consumer; each runs up to `prefetch` jobs at once.
    workers: int = setting("CONVERTER_WORKERS", 1, check=at_least(1))
    prefetch: int = setting("CONVERTER_PREFETCH", 1, check=at_least(1))
    heartbeat_seconds: int = setting("RABBITMQ_HEARTBEAT_SECONDS", 30, check=NOT_NEGATIVE)
    max_attempts: int = setting("CONVERTER_MAX_ATTEMPTS", 5, check=at_least(1))
    retry_base_seconds: float = setting("CONVERTER_RETRY_BASE_SECONDS", 5.0)
    retry_max_seconds: float = setting("CONVERTER_RETRY_MAX_SECONDS", 300.0)
    # SIGTERM: how long the current job may take to finish before it is cut off and
    # left to be redelivered.
    stop_grace_seconds: float = setting("CONVERTER_STOP_GRACE_SECONDS", 300.0)
    mp3_bitrate_kbps: int = setting("MP3_BITRATE_KBPS", 192)
    mp3_vbr: bool = setting("MP3_VBR", False)
    mp3_vbr_quality: int = setting("MP3_VBR_QUALITY", 2)
    mp3_encoder: str = setting("MP3_ENCODER", "lameenc")
    mp3_encoder_threads: int = setting("MP3_ENCODER_THREADS", 0)  # 0: one per available core (at most 4)
    max_duration_seconds: float = setting("MAX_DURATION_SECONDS", 4 * 3600.0, check=POSITIVE)
    tmp_dir: str = setting("TMP_DIR", tempfile.gettempdir())
    # Largest video spooled to disk, and free space always left in tmp_dir.
    spool_max_bytes: int = setting("CONVERTER_SPOOL_MAX_BYTES", 2 * 1024**3)
    spool_reserve_bytes: int = setting("CONVERTER_SPOOL_RESERVE_BYTES", 256 * 1024**2)
    rpc_timeout_seconds: float = setting("GRPC_TIMEOUT_SECONDS", 10.0, check=POSITIVE)
    stream_timeout_seconds: float = setting("GRPC_STREAM_TIMEOUT_SECONDS", 1800.0, check=POSITIVE)
    # /healthz and /readyz for probes (0: none).
    health_port: int = setting("CONVERTER_HEALTH_PORT", 0, check=PORT)

    def grpc_tls(self) -> GrpcTls:
        """This process's certificate (converter), the CA's, and its key (common/grpc_tls.py)."""
        return GrpcTls.load(self.grpc_tls_dir, "converter")

    def check(self) -> None:
        try:
            self.encode_options()
        except ValueError as error:
            raise SettingsError(f"MP3 settings: {error}") from None

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(
            bitrate_kbps=self.mp3_bitrate_kbps,
            vbr=self.mp3_vbr,
            vbr_quality=self.mp3_vbr_quality,
            max_duration_seconds=self.max_duration_seconds,
            encoder=self.mp3_encoder,
            threads=self.mp3_encoder_threads,
        )

    def video_consumer(self) -> ConsumerSettings:
        return self.consumer_settings(
            self.video_queue, heartbeat=self.heartbeat_seconds, stop_grace_seconds=self.stop_grace_seconds
        )
