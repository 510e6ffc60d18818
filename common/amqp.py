"""RabbitMQ topology, a publisher with confirms, and a consumer base.

Topology (declared by everyone who relies on it; declarations are idempotent):

* ``video2mp3`` durable topic exchange.
* work queues ``video`` (``conversion.requested``) and ``mp3`` (``conversion.*ed``
  outcomes), durable, dead-lettering into ``<queue>.dead`` (the routing keys and the events
  themselves are in ``common/events.py``);
* ``<queue>.retry``: a delay queue without consumers. A message waits there for its
  per-message ``expiration`` and is then dead-lettered back to ``<queue>``;
* ``<queue>.dead``: parked messages for a person to inspect.

The consumer runs handlers on worker threads so the connection's I/O thread keeps
sending heartbeats during long work; acks go back through
``connection.add_callback_threadsafe`` (pika's documented pattern).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from google.protobuf.message import Message
from pika.adapters.blocking_connection import BlockingChannel

from common.events import RK_FAILED, RK_REQUESTED, RK_SUCCEEDED

log = logging.getLogger("amqp")

EXCHANGE = "video2mp3"
CONTENT_TYPE = "application/x-protobuf"
ATTEMPT_HEADER = "x-attempt"


@dataclass(frozen=True)
class Topology:
    video_queue: str = "video"
    mp3_queue: str = "mp3"
    exchange: str = EXCHANGE

    def bindings(self) -> dict[str, list[str]]:
        return {self.video_queue: [RK_REQUESTED], self.mp3_queue: [RK_SUCCEEDED, RK_FAILED]}


def retry_queue(queue: str) -> str:
    return f"{queue}.retry"


def dead_queue(queue: str) -> str:
    return f"{queue}.dead"


def declare_topology(channel: BlockingChannel, topology: Topology) -> None:
    channel.exchange_declare(topology.exchange, exchange_type="topic", durable=True)
    for queue, keys in topology.bindings().items():
        channel.queue_declare(dead_queue(queue), durable=True)
        channel.queue_declare(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_queue(queue)},
        )
        channel.queue_declare(
            retry_queue(queue),
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue},
        )
        for key in keys:
            channel.queue_bind(queue, topology.exchange, routing_key=key)


def connection_parameters(url: str, heartbeat: int | None = None) -> pika.URLParameters:
    params = pika.URLParameters(url)
    if heartbeat is not None:
        params.heartbeat = heartbeat
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    return params


class PublishError(Exception):
    """The broker did not confirm the message (unreachable, nacked or unroutable)."""


def message_properties(
    message: Message, correlation_id: str, headers: dict[str, Any] | None = None
) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        type=message.DESCRIPTOR.full_name,
        message_id=uuid.uuid4().hex,
        correlation_id=correlation_id,
        delivery_mode=pika.DeliveryMode.Persistent,
        timestamp=int(time.time()),
        headers=headers or {},
    )


class Publisher:
    """Publishes protobuf events with publisher confirms. Thread-safe (one lock);
    connects lazily and reconnects once when the connection was lost."""

    def __init__(self, url: str, topology: Topology | None = None) -> None:
        self.url = url
        self.topology = topology or Topology()
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _connect(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = pika.BlockingConnection(connection_parameters(self.url))
        channel = self._connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, self.topology)
        self._channel = channel
        return channel

    def publish(
        self,
        routing_key: str,
        message: Message,
        correlation_id: str,
        exchange: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        body = message.SerializeToString()
        props = message_properties(message, correlation_id, headers)
        target = self.topology.exchange if exchange is None else exchange
        with self._lock:
            for attempt in (1, 2):
                try:
                    channel = self._connect()
                    channel.basic_publish(target, routing_key, body, props, mandatory=True)
                    return
                except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
                    raise PublishError(f"broker refused the message: {error!r}") from error
                except (pika.exceptions.AMQPError, OSError) as error:
                    self.close()
                    if attempt == 2:
                        raise PublishError(f"message broker unavailable: {error!r}") from error

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass


# ---------------------------------------------------------------------------------------- consumer


class Outcome(enum.Enum):
    ACK = "ack"  # done (or nothing to do): remove the message
    RETRY = "retry"  # transient failure: try again later through the delay queue
    DEAD = "dead"  # give up: park in the dead-letter queue


class TransientError(Exception):
    """A dependency is unavailable; the message should be retried later."""


@dataclass
class Delivery:
    body: bytes
    properties: pika.BasicProperties
    routing_key: str
    redelivered: bool
    attempt: int  # 1 for the first try, incremented by each trip through the delay queue

    @property
    def message_type(self) -> str:
        return self.properties.type or ""

    @property
    def correlation_id(self) -> str:
        return self.properties.correlation_id or ""


Handler = Callable[[Delivery], Outcome]


@dataclass
class ConsumerSettings:
    url: str
    queue: str
    topology: Topology = field(default_factory=Topology)
    prefetch: int = 1
    heartbeat: int = 30
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    reconnect_max_seconds: float = 30.0
    stop_grace_seconds: float = 30.0


def _count(value: Any, max_attempts: int) -> int:
    """A claimed attempt number, clamped to 1…max_attempts; anything that is not a plain
    integer counts as 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return min(max(value, 1), max_attempts)


def attempt_of(headers: dict[str, Any], queue: str, max_attempts: int) -> int:
    """Which try of a message this is (1 for the first).

    Headers travel with the message, so anyone who can publish can write them: a claimed
    count is clamped to 1…max_attempts, never trusted to be negative or huge (a negative
    ``x-attempt`` once meant endless retries). The broker's own record — the ``x-death``
    count of expiries from ``<queue>.retry`` — is read the same way, and the higher of the
    two wins. Since each trip through the delay queue adds one and the count can never
    start below 1, a message is handled at most ``max_attempts`` times before it is
    parked, whatever its publisher claimed.
    """
    claimed = _count(headers.get(ATTEMPT_HEADER, 1), max_attempts)
    deaths = headers.get("x-death")
    recorded = 1
    if isinstance(deaths, list):
        for death in deaths:
            if (
                isinstance(death, dict)
                and death.get("queue") == retry_queue(queue)
                and death.get("reason") == "expired"
            ):
                count = death.get("count")
                recorded = max(recorded, _count(count + 1 if isinstance(count, int) else 1, max_attempts))
    return max(claimed, recorded)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off: base, 2*base, 4*base … capped."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


class Consumer:
    """Consumes one queue with manual acks; the handler runs on worker threads.

    The handler returns an ``Outcome`` (or raises ``TransientError``, treated as RETRY; any
    other exception is logged and treated as RETRY too, so a bug never loses a message and
    the bounded attempts keep it from looping). RETRY past ``max_attempts`` becomes DEAD.
    """

    def __init__(self, settings: ConsumerSettings, handler: Handler, name: str = "consumer") -> None:
        self.settings = settings
        self.handler = handler
        self.name = name
        self._stopping = threading.Event()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.prefetch), thread_name_prefix=name)
        self._inflight: set[Future[Outcome]] = set()
        self._inflight_lock = threading.Lock()
        self.connected = threading.Event()

    # -- lifecycle
    def run(self) -> None:
        """Consume until ``stop()``; reconnects with back-off when the broker goes away."""
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._consume()
                delay = 0.5
            except (pika.exceptions.AMQPError, OSError) as error:
                self.connected.clear()
                if self._stopping.is_set():
                    break
                log.warning(
                    "broker connection lost; reconnecting",
                    extra={"queue": self.settings.queue, "error": repr(error), "retry_in_s": delay},
                )
                self._stopping.wait(delay)
                delay = min(self.settings.reconnect_max_seconds, delay * 2)
        self._drain()
        self._pool.shutdown(wait=True)

    def stop(self) -> None:
        """Stop taking messages; work in flight finishes (or is redelivered if cut off)."""
        self._stopping.set()
        connection = self._connection
        if connection is not None and connection.is_open:
            try:
                connection.add_callback_threadsafe(self._cancel)
            except (pika.exceptions.AMQPError, OSError, AttributeError):
                pass

    # -- internals
    def _cancel(self) -> None:
        channel = self._channel
        if channel is not None and channel.is_open:
            channel.stop_consuming()

    def _consume(self) -> None:
        params = connection_parameters(self.settings.url, heartbeat=self.settings.heartbeat)
        self._connection = pika.BlockingConnection(params)
        try:
            channel = self._connection.channel()
            declare_topology(channel, self.settings.topology)
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=max(1, self.settings.prefetch))
            channel.basic_consume(self.settings.queue, self._on_message, auto_ack=False)
            self._channel = channel
            self.connected.set()
            log.info("consuming", extra={"queue": self.settings.queue, "prefetch": self.settings.prefetch})
            if self._stopping.is_set():
                return
            channel.start_consuming()
            # Stopped by request: let in-flight work finish while the I/O loop keeps running.
            self._drain()
        finally:
            self.connected.clear()
            connection, self._connection, self._channel = self._connection, None, None
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except (pika.exceptions.AMQPError, OSError):
                    pass

    def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.stop_grace_seconds
        while time.monotonic() < deadline:
            with self._inflight_lock:
                if not self._inflight:
                    return
            connection = self._connection
            if connection is not None and connection.is_open:
                try:
                    connection.process_data_events(time_limit=0.2)
                except (pika.exceptions.AMQPError, OSError):
                    return
            else:
                time.sleep(0.2)

    def _on_message(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        attempt = attempt_of(properties.headers or {}, self.settings.queue, self.settings.max_attempts)
        delivery = Delivery(
            body=body,
            properties=properties,
            routing_key=method.routing_key or "",
            redelivered=bool(method.redelivered),
            attempt=attempt,
        )
        tag = method.delivery_tag
        connection = self._connection
        assert connection is not None
        future = self._pool.submit(self._run_handler, delivery)
        with self._inflight_lock:
            self._inflight.add(future)

        def done(fut: Future[Outcome]) -> None:
            outcome = fut.result()
            try:
                connection.add_callback_threadsafe(lambda: self._settle(channel, tag, delivery, outcome, fut))
            except (pika.exceptions.AMQPError, OSError, AttributeError):
                # Connection gone: the broker redelivers the message; handlers are idempotent.
                with self._inflight_lock:
                    self._inflight.discard(fut)

        future.add_done_callback(done)

    def _run_handler(self, delivery: Delivery) -> Outcome:
        try:
            return self.handler(delivery)
        except TransientError as error:
            log.warning(
                "transient failure",
                extra={"queue": self.settings.queue, "job_id": delivery.correlation_id, "error": str(error)},
            )
            return Outcome.RETRY
        except Exception:
            log.exception(
                "handler failed unexpectedly",
                extra={"queue": self.settings.queue, "job_id": delivery.correlation_id},
            )
            return Outcome.RETRY

    def _settle(
        self,
        channel: BlockingChannel,
        tag: int,
        delivery: Delivery,
        outcome: Outcome,
        fut: Future[Outcome],
    ) -> None:
        try:
            if not channel.is_open:
                return
            if outcome is Outcome.RETRY and delivery.attempt >= self.settings.max_attempts:
                log.error(
                    "giving up after retries; parking in the dead-letter queue",
                    extra={
                        "queue": self.settings.queue,
                        "job_id": delivery.correlation_id,
                        "attempts": delivery.attempt,
                    },
                )
                outcome = Outcome.DEAD
            if outcome is Outcome.RETRY:
                delay = backoff_seconds(
                    delivery.attempt, self.settings.retry_base_seconds, self.settings.retry_max_seconds
                )
                self._republish(
                    channel,
                    retry_queue(self.settings.queue),
                    delivery,
                    delivery.attempt + 1,
                    expiration_ms=int(delay * 1000),
                )
            elif outcome is Outcome.DEAD:
                self._republish(channel, dead_queue(self.settings.queue), delivery, delivery.attempt)
            channel.basic_ack(tag)
        except (pika.exceptions.AMQPError, OSError) as error:
            # Not acked: the broker redelivers it after the connection closes.
            log.warning("could not settle a message", extra={"error": repr(error)})
        finally:
            with self._inflight_lock:
                self._inflight.discard(fut)

    @staticmethod
    def _republish(
        channel: BlockingChannel,
        queue: str,
        delivery: Delivery,
        attempt: int,
        expiration_ms: int | None = None,
    ) -> None:
        old = delivery.properties
        headers = dict(old.headers or {})
        headers[ATTEMPT_HEADER] = attempt
        props = pika.BasicProperties(
            content_type=old.content_type,
            type=old.type,
            message_id=old.message_id,
            correlation_id=old.correlation_id,
            delivery_mode=pika.DeliveryMode.Persistent,
            timestamp=old.timestamp,
            headers=headers,
            expiration=str(expiration_ms) if expiration_ms is not None else None,
        )
        channel.basic_publish("", queue, delivery.body, props, mandatory=True)
