"""``python -m converter``: consume the video queue until SIGTERM, then exit 0.

CONVERTER_WORKERS consumers (each one AMQP connection, up to CONVERTER_PREFETCH jobs at
once) share one gRPC channel and one confirming publisher. On SIGTERM or SIGINT they stop taking messages and
finish the jobs in hand; after CONVERTER_STOP_GRACE_SECONDS a job still running is cut
off (its upload cancelled, its message left unacked) so another worker gets it again.
CONVERTER_HEALTH_PORT (0 disables) serves ``/healthz`` (process alive) and ``/readyz``
(every consumer connected to the broker) for Kubernetes probes. The process's shape
(settings, logging, signals, health, closing) is common/service.py's.
"""

from __future__ import annotations

import logging
import threading

from common.amqp import Consumer, Publisher
from common.grpc_client import secure_channel
from common.service import Service, run_service
from converter.settings import Settings
from converter.worker import Converter

log = logging.getLogger("converter")


def main(service: Service) -> int:
    settings = service.settings(Settings.from_env)
    tls = service.settings(settings.grpc_tls)
    channel = secure_channel(settings.storage_address, tls)
    service.closing(channel.close, "storage channel")
    publisher = Publisher(settings.rabbitmq_url, settings.topology())
    service.closing(publisher.close, "publisher")
    abort = threading.Event()
    converter = Converter(settings, channel, publisher, abort=abort)
    service.closing(converter.close, "spool")
    converter.spool.sweep()  # what converters killed earlier left behind
    consumers = [
        Consumer(settings.video_consumer(), converter, name=f"converter-{i}") for i in range(settings.workers)
    ]

    def finish_then_cut_off() -> None:
        log.info(
            "finishing the current job, taking no new ones", extra={"grace_s": settings.stop_grace_seconds}
        )
        for consumer in consumers:
            consumer.stop()
        timer = threading.Timer(settings.stop_grace_seconds, abort.set)
        timer.daemon = True
        timer.start()

    service.on_stop(finish_then_cut_off)
    service.health(settings.health_port, lambda: all(c.connected.is_set() for c in consumers))
    log.info(
        "converter started",
        extra={
            "workers": settings.workers,
            "prefetch": settings.prefetch,
            "queue": settings.video_queue,
            "storage": settings.storage_address,
            "bitrate_kbps": settings.mp3_bitrate_kbps,
            "vbr": settings.mp3_vbr,
            "health_port": settings.health_port,
        },
    )
    service.run_threads((consumer.name, consumer.run) for consumer in consumers)
    return 0


if __name__ == "__main__":
    run_service("converter", main, big_streams=True)
