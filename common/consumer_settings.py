"""The settings every service that consumes a queue shares, and what is built from them.

The broker and the queue names have one name in every service; how a queue is consumed
(prefetch, attempts, back-off) is declared by each service under its own prefix
(``CONVERTER_PREFETCH``, ``NOTIFIER_MAX_ATTEMPTS`` …), so those fields are only announced here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.amqp import ConsumerSettings, Topology
from common.config import EnvSettings, rabbitmq_setting, setting


@dataclass(frozen=True, kw_only=True)
class ConsumerEnvSettings(EnvSettings):
    """Base of a consuming service's ``Settings``."""

    rabbitmq_url: str = rabbitmq_setting()
    video_queue: str = setting("VIDEO_QUEUE", "video")
    mp3_queue: str = setting("MP3_QUEUE", "mp3")
    # Declared by each service under its own prefix.
    prefetch: int
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float

    def topology(self) -> Topology:
        return Topology(video_queue=self.video_queue, mp3_queue=self.mp3_queue)

    def consumer_settings(self, queue: str, **more: Any) -> ConsumerSettings:
        """How ``queue`` is consumed; ``more`` sets the rest of ``ConsumerSettings``."""
        return ConsumerSettings(
            url=self.rabbitmq_url,
            queue=queue,
            topology=self.topology(),
            prefetch=self.prefetch,
            max_attempts=self.max_attempts,
            retry_base_seconds=self.retry_base_seconds,
            retry_max_seconds=self.retry_max_seconds,
            **more,
        )
