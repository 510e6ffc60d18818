"""``python -m converter``: consume the video queue until SIGTERM, then exit 0.

WORKERS consumers (each one AMQP connection, up to PREFETCH jobs at once) share one gRPC
channel and one confirming publisher. On SIGTERM or SIGINT they stop taking messages and
finish the jobs in hand; after CONVERTER_STOP_GRACE_SECONDS a job still running is cut
off (its upload cancelled, its message left unacked) so another worker gets it again.
HEALTH_PORT (0 disables) serves ``/healthz`` (process alive) and ``/readyz`` (every
consumer connected to the broker) for Kubernetes probes.
"""

from __future__ import annotations

import logging
import signal
import threading

from common import memory
from common.amqp import Consumer, Publisher
from common.config import SettingsError, exit_on_settings_error
from common.grpc_client import insecure_channel
from common.logs import setup_logging
from common.worker_health import start_health_server
from converter.settings import Settings
from converter.worker import Converter

log = logging.getLogger("converter")


def main() -> int:
    memory.limit_arenas()
    setup_logging("converter")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        exit_on_settings_error("converter", error)
        return 2
    channel = insecure_channel(settings.storage_address)
    publisher = Publisher(settings.rabbitmq_url, settings.topology())
    abort = threading.Event()
    converter = Converter(settings, channel, publisher, abort=abort)
    converter.spool.sweep()  # what converters killed earlier left behind
    consumers = [
        Consumer(settings.consumer_settings(), converter, name=f"converter-{i}")
        for i in range(settings.workers)
    ]
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info(
            "signal received: finishing the current job, taking no new ones",
            extra={"signal": signal.Signals(signum).name, "grace_s": settings.stop_grace_seconds},
        )
        for consumer in consumers:
            consumer.stop()
        timer = threading.Timer(settings.stop_grace_seconds, abort.set)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    health = (
        start_health_server(settings.health_port, lambda: all(c.connected.is_set() for c in consumers))
        if settings.health_port
        else None
    )
    threads = [threading.Thread(target=c.run, name=c.name) for c in consumers]
    for thread in threads:
        thread.start()
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
    # Join with a timeout so the main thread keeps handling signals.
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    if health is not None:
        health.shutdown()
    converter.close()
    publisher.close()
    channel.close()
    log.info("converter stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
