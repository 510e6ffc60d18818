"""``python -m notifier``: consume the ``mp3`` queue and send emails until SIGTERM.

The process's shape (settings, logging, signals, health, closing) is common/service.py's.
"""

from __future__ import annotations

import logging

from video2mp3.auth.v1 import auth_pb2_grpc
from video2mp3.storage.v1 import jobs_pb2_grpc

from common.amqp import Consumer
from common.grpc_client import secure_channel
from common.service import Service, run_service
from notifier.mailer import Mailer, SmtpConfig
from notifier.messages import parse_sender
from notifier.settings import Settings
from notifier.worker import Notifier, WorkerConfig

log = logging.getLogger("notifier")


def build_consumer(settings: Settings, service: Service) -> Consumer:
    """The consumer; the gRPC channels it uses are closed when the process ends."""
    sender = parse_sender(settings.mail_from)
    tls = service.settings(settings.grpc_tls)
    auth_channel = secure_channel(settings.auth_address, tls)
    service.closing(auth_channel.close, "auth channel")
    storage_channel = secure_channel(settings.storage_address, tls)
    service.closing(storage_channel.close, "storage channel")
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
    return Consumer(settings.consumer_settings(settings.mp3_queue), notifier.handle, name="notifier")


def main(service: Service) -> int:
    settings = service.settings(Settings.from_env)
    consumer = build_consumer(settings, service)
    service.on_stop(consumer.stop)
    service.health(settings.health_port, consumer.connected.is_set)
    log.info(
        "notifier starting",
        extra={"queue": settings.mp3_queue, "smtp": f"{settings.smtp_host}:{settings.smtp_port}"},
    )
    service.run_threads([(consumer.name, consumer.run)])
    return 0


if __name__ == "__main__":
    run_service("notifier", main)
