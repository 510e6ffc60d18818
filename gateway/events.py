"""Job events for the open event streams of one gateway process (one hub per process).

Storage publishes a small JobChanged event (events/v1) to the topic exchange after every
change of a job and every progress report, with routing key ``job.changed.<owner_id>``.
The hub holds ONE consumer per gateway process: an exclusive, auto-delete queue bound to
``job.changed.#``, so every gateway replica and worker process sees every event, and no
queue outlives its process. Each event is handed to the streams of that owner (in memory,
no database query). The streams read the job itself from storage only when they open,
when a job reaches a final state, and on their heartbeat — so a lost event delays an
update but never hides a final state.

Started on the first subscription, per process (gunicorn forks its workers; under gevent
the consumer's thread is a greenlet). It reconnects with back-off when the broker goes
away; meanwhile streams get a ``resync`` so they read their job again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field

import pika
import pika.exceptions
from google.protobuf.message import DecodeError
from video2mp3.events.v1 import events_pb2

from common.amqp import EXCHANGE, connection_parameters
from common.events import RK_JOB_CHANGED

log = logging.getLogger("gateway.events")

RESYNC = events_pb2.JobChanged(job_id="", owner_id="")  # "read your job again"
MAX_PENDING = 256  # per stream: a stream that falls this far behind gets a resync instead


@dataclass(eq=False)
class Subscription:
    owner_id: str
    job_id: str = ""  # empty: every job of the owner
    events: queue.Queue[events_pb2.JobChanged] = field(default_factory=lambda: queue.Queue(MAX_PENDING))

    def offer(self, event: events_pb2.JobChanged) -> None:
        if self.job_id and event.job_id and event.job_id != self.job_id:
            return
        try:
            self.events.put_nowait(event)
        except queue.Full:
            # Too slow a reader: drop what is queued and ask it to read its state afresh.
            with self.events.mutex:
                self.events.queue.clear()
            self.events.put_nowait(RESYNC)


class EventHub:
    def __init__(self, url: str, exchange: str = EXCHANGE, reconnect_seconds: float = 2.0) -> None:
        self.url = url
        self.exchange = exchange
        self.reconnect_seconds = reconnect_seconds
        self._lock = threading.Lock()
        self._by_owner: dict[str, set[Subscription]] = {}
        self._pid: int | None = None
        self._stop = threading.Event()
        self.connected = threading.Event()

    def subscribe(self, owner_id: str, job_id: str = "") -> Subscription:
        self._ensure_started()
        subscription = Subscription(owner_id, job_id)
        with self._lock:
            self._by_owner.setdefault(owner_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subs = self._by_owner.get(subscription.owner_id)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._by_owner[subscription.owner_id]

    def streams(self) -> int:
        with self._lock:
            return sum(len(subs) for subs in self._by_owner.values())

    def dispatch(self, event: events_pb2.JobChanged) -> None:
        with self._lock:
            targets = list(self._by_owner.get(event.owner_id, ()))
        for subscription in targets:
            subscription.offer(event)

    def _resync_all(self) -> None:
        with self._lock:
            targets = [sub for subs in self._by_owner.values() for sub in subs]
        for subscription in targets:
            subscription.offer(RESYNC)

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._by_owner = {}  # inherited from a parent process: not ours
            self._stop = threading.Event()
            threading.Thread(target=self._run, name="job-events", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except (pika.exceptions.AMQPError, OSError) as error:
                log.warning("job events: broker connection lost; reconnecting", extra={"error": repr(error)})
            self.connected.clear()
            self._resync_all()
            self._stop.wait(self.reconnect_seconds)

    def _consume(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.url, heartbeat=30))
        try:
            channel = connection.channel()
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            declared = channel.queue_declare("", exclusive=True, auto_delete=True)
            name = declared.method.queue
            channel.queue_bind(name, self.exchange, routing_key=f"{RK_JOB_CHANGED}.#")
            self.connected.set()
            self._resync_all()  # events may have been missed before the queue existed
            for _method, _props, body in channel.consume(name, auto_ack=True, inactivity_timeout=1.0):
                if self._stop.is_set():
                    break
                if body is None:
                    continue
                try:
                    event = events_pb2.JobChanged.FromString(body)
                except DecodeError:
                    log.warning("job events: undecodable message dropped")
                    continue
                self.dispatch(event)
        finally:
            if connection.is_open:
                try:
                    connection.close()
                except (pika.exceptions.AMQPError, OSError):
                    pass
