"""The AMQP helpers against the real RabbitMQ (a virtual host of this test session)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pika
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from video2mp3.events.v1 import events_pb2

from common.amqp import (
    ATTEMPT_HEADER,
    Consumer,
    ConsumerSettings,
    Delivery,
    Outcome,
    Publisher,
    PublishError,
    Topology,
    TransientError,
    backoff_seconds,
    dead_queue,
    declare_topology,
)
from common.events import RK_REQUESTED
from testing.infra import Infra
from testing.processes import free_port, wait_for


@pytest.fixture
def topology(infra: Infra, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """Queues of this test only, so tests never see each other's messages."""
    name = request.node.name.replace("[", "_").replace("]", "")[:40]
    topo = Topology(video_queue=f"video-{name}", mp3_queue=f"mp3-{name}", exchange=f"x-{name}")
    connection = infra.amqp()
    declare_topology(connection.channel(), topo)
    connection.close()
    yield topo
    connection = infra.amqp()
    channel = connection.channel()
    for queue in [topo.video_queue, topo.mp3_queue]:
        for q in (queue, f"{queue}.retry", f"{queue}.dead"):
            channel.queue_delete(q)
    channel.exchange_delete(topo.exchange)
    connection.close()


def requested(job_id: str = "job-1") -> events_pb2.ConversionRequested:
    ts = Timestamp()
    ts.GetCurrentTime()
    return events_pb2.ConversionRequested(job_id=job_id, video_id="v1", owner_id="1", requested_at=ts)


def run_consumer(consumer: Consumer) -> threading.Thread:
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    wait_for(consumer.connected.is_set, timeout=20, what="consumer connected")
    return thread


def test_publish_with_confirms_sets_contract_properties(infra: Infra, topology: Topology) -> None:
    publisher = Publisher(infra.rabbitmq_url, topology)
    publisher.publish(RK_REQUESTED, requested("job-42"), correlation_id="job-42")
    publisher.close()

    connection = infra.amqp()
    method, props, body = connection.channel().basic_get(topology.video_queue, auto_ack=True)
    connection.close()
    assert method is not None
    assert props.content_type == "application/x-protobuf"
    assert props.type == "video2mp3.events.v1.ConversionRequested"
    assert props.correlation_id == "job-42"
    assert props.delivery_mode == 2
    assert len(props.message_id) == 32
    assert events_pb2.ConversionRequested.FromString(body).job_id == "job-42"


def test_publish_to_unreachable_broker_raises(topology: Topology) -> None:
    publisher = Publisher(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", topology)
    with pytest.raises(PublishError, match="unavailable"):
        publisher.publish(RK_REQUESTED, requested(), correlation_id="x")


def test_unroutable_message_is_refused(infra: Infra, topology: Topology) -> None:
    publisher = Publisher(infra.rabbitmq_url, topology)
    with pytest.raises(PublishError, match="refused"):
        publisher.publish("no.such.binding", requested(), correlation_id="x")
    publisher.close()


def test_retry_goes_through_delay_queue_then_dead_letters(infra: Infra, topology: Topology) -> None:
    attempts: list[int] = []

    def handler(delivery: Delivery) -> Outcome:
        attempts.append(delivery.attempt)
        raise TransientError("storage unavailable")

    settings = ConsumerSettings(
        url=infra.rabbitmq_url,
        queue=topology.video_queue,
        topology=topology,
        max_attempts=3,
        retry_base_seconds=0.2,
    )
    consumer = Consumer(settings, handler)
    thread = run_consumer(consumer)
    Publisher(infra.rabbitmq_url, topology).publish(RK_REQUESTED, requested("job-r"), correlation_id="job-r")
    wait_for(lambda: infra.queue_depth(dead_queue(topology.video_queue)) == 1, timeout=30, what="dead letter")
    consumer.stop()
    thread.join(20)
    assert attempts == [1, 2, 3]

    connection = infra.amqp()
    _, props, body = connection.channel().basic_get(dead_queue(topology.video_queue), auto_ack=True)
    connection.close()
    assert props.headers[ATTEMPT_HEADER] == 3
    assert props.correlation_id == "job-r"
    assert events_pb2.ConversionRequested.FromString(body).job_id == "job-r"


def test_ack_and_dead_outcomes(infra: Infra, topology: Topology) -> None:
    seen: list[str] = []

    def handler(delivery: Delivery) -> Outcome:
        seen.append(delivery.correlation_id)
        return Outcome.DEAD if delivery.correlation_id == "poison" else Outcome.ACK

    consumer = Consumer(
        ConsumerSettings(url=infra.rabbitmq_url, queue=topology.video_queue, topology=topology), handler
    )
    thread = run_consumer(consumer)
    publisher = Publisher(infra.rabbitmq_url, topology)
    publisher.publish(RK_REQUESTED, requested("good"), correlation_id="good")
    publisher.publish(RK_REQUESTED, requested("poison"), correlation_id="poison")
    wait_for(
        lambda: infra.queue_depth(dead_queue(topology.video_queue)) == 1, timeout=20, what="poison parked"
    )
    consumer.stop()
    thread.join(20)
    assert sorted(seen) == ["good", "poison"]
    assert infra.queue_depth(topology.video_queue) == 0


def test_long_work_keeps_the_connection_alive(infra: Infra, topology: Topology) -> None:
    """A handler that runs for several heartbeat intervals is acked on the same connection."""
    connections: list[object] = []
    done = threading.Event()

    def handler(delivery: Delivery) -> Outcome:
        connections.append(consumer._connection)
        time.sleep(5)  # five heartbeat intervals
        done.set()
        return Outcome.ACK

    settings = ConsumerSettings(
        url=infra.rabbitmq_url, queue=topology.video_queue, topology=topology, heartbeat=1
    )
    consumer = Consumer(settings, handler)
    thread = run_consumer(consumer)
    Publisher(infra.rabbitmq_url, topology).publish(RK_REQUESTED, requested("slow"), correlation_id="slow")
    wait_for(done.is_set, timeout=30, what="slow handler")
    wait_for(lambda: infra.queue_depth(topology.video_queue) == 0, timeout=10, what="ack")
    # Same connection throughout, still open, and the message was not redelivered.
    assert connections == [consumer._connection]
    assert consumer._connection is not None and consumer._connection.is_open
    consumer.stop()
    thread.join(20)
    assert not thread.is_alive()


def test_consumer_reconnects_after_connection_loss(infra: Infra, topology: Topology) -> None:
    seen: list[str] = []

    def handler(delivery: Delivery) -> Outcome:
        seen.append(delivery.correlation_id)
        return Outcome.ACK

    consumer = Consumer(
        ConsumerSettings(url=infra.rabbitmq_url, queue=topology.video_queue, topology=topology), handler
    )
    thread = run_consumer(consumer)
    first = consumer._connection
    assert first is not None
    # Close the consumer's connection from the broker side.
    from testing.infra import rabbitmqctl

    wait_for(lambda: "video2mp3" in rabbitmqctl("list_connections", "-p", infra.vhost, "user"), timeout=10)
    for line in rabbitmqctl("list_connections", "-p", infra.vhost, "pid").split():
        if line.startswith("<"):
            rabbitmqctl("close_connection", line, "test")
    wait_for(
        lambda: consumer.connected.is_set() and consumer._connection is not first,
        timeout=30,
        what="reconnect",
    )
    Publisher(infra.rabbitmq_url, topology).publish(RK_REQUESTED, requested("after"), correlation_id="after")
    wait_for(lambda: seen == ["after"], timeout=20, what="message after reconnect")
    consumer.stop()
    thread.join(20)


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_seconds(a, 2, 30) for a in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_properties_are_pika_basic_properties() -> None:
    from common.amqp import message_properties

    props = message_properties(requested(), "job")
    assert isinstance(props, pika.BasicProperties)


@pytest.mark.parametrize(
    "headers",
    [
        {ATTEMPT_HEADER: -1_000_000},  # was: retried every few seconds, forever
        {ATTEMPT_HEADER: 0},
        {ATTEMPT_HEADER: "not a number"},
        {ATTEMPT_HEADER: 10**12},
        {"x-death": [{"queue": "whatever.retry", "reason": "expired", "count": -50}]},
    ],
    ids=["negative", "zero", "text", "huge", "forged-x-death"],
)
def test_forged_attempts(infra: Infra, topology: Topology, headers: dict[str, object]) -> None:
    """Whatever attempt count a publisher claims, a message that keeps failing is parked
    after at most max_attempts tries."""
    attempts: list[int] = []

    def handler(delivery: Delivery) -> Outcome:
        attempts.append(delivery.attempt)
        raise TransientError("storage unavailable")

    settings = ConsumerSettings(
        url=infra.rabbitmq_url,
        queue=topology.video_queue,
        topology=topology,
        max_attempts=3,
        retry_base_seconds=0.1,
    )
    if "x-death" in headers:
        headers = {"x-death": [{**headers["x-death"][0], "queue": f"{topology.video_queue}.retry"}]}  # type: ignore[index]
    consumer = Consumer(settings, handler)
    thread = run_consumer(consumer)
    connection = infra.amqp()
    props = pika.BasicProperties(correlation_id="forged", delivery_mode=2, headers=headers)
    connection.channel().basic_publish(
        topology.exchange, RK_REQUESTED, requested("forged").SerializeToString(), props
    )
    connection.close()
    wait_for(lambda: infra.queue_depth(dead_queue(topology.video_queue)) == 1, timeout=30, what="parked")
    consumer.stop()
    thread.join(20)
    assert 1 <= len(attempts) <= 3, attempts
    assert all(1 <= a <= 3 for a in attempts), attempts
