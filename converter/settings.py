"""Converter settings, only from environment variables (see common/config.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from common.amqp import ConsumerSettings, Topology
from common.config import SettingsError, env_bool, env_float, env_int, env_str, rabbitmq_url
from converter.encoders import EncodeOptions


@dataclass(frozen=True)
class Settings:
    storage_address: str
    rabbitmq_url: str
    video_queue: str = "video"
    mp3_queue: str = "mp3"
    # Each worker is one AMQP connection + consumer; each runs up to `prefetch` jobs at once.
    workers: int = 1
    prefetch: int = 1
    heartbeat_seconds: int = 30
    max_attempts: int = 5
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    # SIGTERM: how long the current job may take to finish before it is cut off and
    # left to be redelivered.
    stop_grace_seconds: float = 300.0
    mp3_bitrate_kbps: int = 192
    mp3_vbr: bool = False
    mp3_vbr_quality: int = 2
    mp3_encoder: str = "lameenc"
    mp3_encoder_threads: int = 0  # 0: one per available core (at most 4)
    max_duration_seconds: float = 4 * 3600.0
    tmp_dir: str = ""
    # Largest video spooled to disk, and free space always left in tmp_dir.
    spool_max_bytes: int = 2 * 1024**3
    spool_reserve_bytes: int = 256 * 1024**2
    rpc_timeout_seconds: float = 10.0
    stream_timeout_seconds: float = 1800.0
    health_port: int = 0
    # A job "converting" for longer than this is taken over by a fresh message for it (its
    # worker is gone and its message was lost); a job younger than this is left alone.
    takeover_after_seconds: float = 3600.0
    # Test-only: seconds of sleep per second of audio, to make a conversion slow.
    slowdown: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        settings = cls(
            storage_address=env_str("STORAGE_SVC_ADDRESS", None, env),
            rabbitmq_url=rabbitmq_url(env),
            video_queue=env_str("VIDEO_QUEUE", "video", env),
            mp3_queue=env_str("MP3_QUEUE", "mp3", env),
            workers=env_int("WORKERS", 1, env),
            prefetch=env_int("PREFETCH", 1, env),
            heartbeat_seconds=env_int("RABBITMQ_HEARTBEAT_SECONDS", 30, env),
            max_attempts=env_int("CONVERTER_MAX_ATTEMPTS", 5, env),
            retry_base_seconds=env_float("CONVERTER_RETRY_BASE_SECONDS", 5.0, env),
            retry_max_seconds=env_float("CONVERTER_RETRY_MAX_SECONDS", 300.0, env),
            stop_grace_seconds=env_float("CONVERTER_STOP_GRACE_SECONDS", 300.0, env),
            mp3_bitrate_kbps=env_int("MP3_BITRATE_KBPS", 192, env),
            mp3_vbr=env_bool("MP3_VBR", False, env),
            mp3_vbr_quality=env_int("MP3_VBR_QUALITY", 2, env),
            mp3_encoder=env_str("MP3_ENCODER", "lameenc", env),
            mp3_encoder_threads=env_int("MP3_ENCODER_THREADS", 0, env),
            max_duration_seconds=env_float("MAX_DURATION_SECONDS", 4 * 3600.0, env),
            tmp_dir=env_str("TMP_DIR", tempfile.gettempdir(), env),
            spool_max_bytes=env_int("CONVERTER_SPOOL_MAX_BYTES", 2 * 1024**3, env),
            spool_reserve_bytes=env_int("CONVERTER_SPOOL_RESERVE_BYTES", 256 * 1024**2, env),
            rpc_timeout_seconds=env_float("GRPC_TIMEOUT_SECONDS", 10.0, env),
            stream_timeout_seconds=env_float("GRPC_STREAM_TIMEOUT_SECONDS", 1800.0, env),
            health_port=env_int("HEALTH_PORT", 0, env),
            takeover_after_seconds=env_float("CONVERTER_TAKEOVER_AFTER_SECONDS", 3600.0, env),
            slowdown=env_float("CONVERTER_TEST_SLOWDOWN", 0.0, env),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = [
            (self.workers >= 1, "WORKERS must be at least 1"),
            (self.prefetch >= 1, "PREFETCH must be at least 1"),
            (self.heartbeat_seconds >= 0, "RABBITMQ_HEARTBEAT_SECONDS must not be negative"),
            (self.max_attempts >= 1, "CONVERTER_MAX_ATTEMPTS must be at least 1"),
            (self.max_duration_seconds > 0, "MAX_DURATION_SECONDS must be positive"),
            (0 <= self.health_port < 65536, "HEALTH_PORT must be a port number (0 disables it)"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
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
            slowdown=self.slowdown,
        )

    def topology(self) -> Topology:
        return Topology(video_queue=self.video_queue, mp3_queue=self.mp3_queue)

    def consumer_settings(self) -> ConsumerSettings:
        return ConsumerSettings(
            url=self.rabbitmq_url,
            queue=self.video_queue,
            topology=self.topology(),
            prefetch=self.prefetch,
            heartbeat=self.heartbeat_seconds,
            max_attempts=self.max_attempts,
            retry_base_seconds=self.retry_base_seconds,
            retry_max_seconds=self.retry_max_seconds,
            stop_grace_seconds=self.stop_grace_seconds,
        )
