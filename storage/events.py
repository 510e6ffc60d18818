"""JobChanged events: published after every change of a job, off the RPC's thread.

The RPC only puts the event on a bounded in-memory queue (never blocks; a full queue
drops the event). One thread publishes them to the topic exchange with routing key
``job.changed.<owner_id>``, without confirms and not persistent: the events are hints —
a gateway that receives one reads the job from storage, and reads it on its own too
(stream open, heartbeat), so a lost event delays an update and never loses a final state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import pika
import pika.exceptions
from video2mp3.events.v1 import events_pb2

from common.amqp import CONTENT_TYPE, EXCHANGE, connection_parameters
from common.events import RK_JOB_CHANGED

log = logging.getLogger("storage.events")

QUEUE_SIZE = 10_000
RECONNECT_SECONDS = 2.0


class EventPublisher:
    def __init__(self, url: str, exchange: str = EXCHANGE) -> None:
        self.url = url
        self.exchange = exchange
        self._queue: queue.Queue[events_pb2.JobChanged | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._dropped = 0

    def __call__(self, event: events_pb2.JobChanged) -> None:
        if self._thread is None:
            self.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped += 1

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="job-events", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        connection: pika.BlockingConnection | None = None
        while True:
            event = self._queue.get()
            if event is None:
                break
            try:
                if connection is None or not connection.is_open:
                    connection = pika.BlockingConnection(connection_parameters(self.url))
                    channel = connection.channel()
                    channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
                channel.basic_publish(
                    self.exchange,
                    f"{RK_JOB_CHANGED}.{event.owner_id}",
                    event.SerializeToString(),
                    pika.BasicProperties(
                        content_type=CONTENT_TYPE,
                        type=event.DESCRIPTOR.full_name,
                        correlation_id=event.job_id,
                    ),
                )
            except (pika.exceptions.AMQPError, OSError) as error:
                log.warning("job event not published", extra={"job_id": event.job_id, "error": repr(error)})
                connection = None
                time.sleep(RECONNECT_SECONDS)
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
