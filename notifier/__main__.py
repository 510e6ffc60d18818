"""``python -m notifier``: consume the ``mp3`` queue and send emails until SIGTERM."""

from __future__ import annotations

import logging

from video2mp3.auth.v1 import auth_pb2_grpc
from video2mp3.storage.v1 import jobs_pb2_grpc

from common.amqp import Consumer, ConsumerSettings, Topology
from common.config import SettingsError, exit_on_settings_error
from common.grpc_client import insecure_channel
from common.logs import setup_logging
from common.worker_health import start_health_server
from notifier.mailer import Mailer, SmtpConfig
from notifier.messages import parse_sender
from notifier.settings import Settings
from notifier.worker import Notifier, WorkerConfig

log = logging.getLogger("notifier")


def build_consumer(settings: Settings) -> tuple[Consumer, list[object]]:
    """The consumer and the resources to close after it stops (gRPC channels)."""
    sender = parse_sender(settings.mail_from)
    auth_channel = insecure_channel(settings.auth_address)
    storage_channel = insecure_channel(settings.storage_address)
    mailer = Mailer(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout_seconds=settings.smtp_timeout_seconds,
        )
    )
    notifier = Notifier(
        jobs=jobs_pb2_grpc.JobServiceStub(storage_channel),
        auth=auth_pb2_grpc.AuthServiceStub(auth_channel),
        mailer=mailer,
        config=WorkerConfig(
            sender=sender,
            public_base_url=settings.public_base_url,
            link_ttl_seconds=settings.link_ttl_seconds,
            grpc_timeout_seconds=settings.grpc_timeout_seconds,
            lease_seconds=settings.lease_seconds,
        ),
    )
    consumer = Consumer(
        ConsumerSettings(
            url=settings.rabbitmq_url,
            queue=settings.mp3_queue,
            topology=Topology(video_queue=settings.video_queue, mp3_queue=settings.mp3_queue),
            prefetch=settings.prefetch,
            max_attempts=settings.max_attempts,
            retry_base_seconds=settings.retry_base_seconds,
            retry_max_seconds=settings.retry_max_seconds,
        ),
        notifier.handle,
        name="notifier",
    )
    return consumer, [auth_channel, storage_channel]


def main() -> None:
    setup_logging("notifier")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        exit_on_settings_error("notifier", error)
        return
    consumer, resources = build_consumer(settings)
    consumer.install_signal_handlers()
    health = None
    if settings.health_port:
        health = start_health_server(settings.health_port, consumer.connected.is_set)
    log.info(
        "notifier starting",
        extra={"queue": settings.mp3_queue, "smtp": f"{settings.smtp_host}:{settings.smtp_port}"},
    )
    try:
        consumer.run()
    finally:
        if health is not None:
            health.shutdown()
            health.server_close()
        for resource in resources:
            close = getattr(resource, "close", None)
            if close is not None:
                close()
        log.info("notifier stopped")


if __name__ == "__main__":
    main()
