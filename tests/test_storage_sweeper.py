"""storage.sweeper against the real servers: two replicas publish a stuck job once; MP3s
expire (410 material: the download is refused, files and chunks gone); videos retained as
configured."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from bson import ObjectId
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, storage_pb2, storage_pb2_grpc

from common.amqp import Publisher
from dev.wait_healthy import http_ok
from storage.jobstore import JobStore
from storage.mongo import Mongo
from storage.settings import SweeperSettings
from storage.sweeper import Sweeper
from testing.infra import Infra
from testing.processes import ServiceProcess, free_port, python_module, wait_for
from tests.fixtures.storage import StorageHandle
from tests.test_storage_jobs import new_job

MP3S = storage_pb2.BUCKET_MP3S


@pytest.fixture
def own_storage(infra: Infra, start_storage: Callable[..., StorageHandle]) -> Iterator[StorageHandle]:
    """A storage server on a database of the test's own: a sweeper works on every job it sees."""
    handle = start_storage(MONGO_DB=f"{infra.mongo_db}_sweep{time.monotonic_ns()}")
    try:
        yield handle
    finally:
        handle.db.client.drop_database(handle.settings.mongo_db)


def requested_for(infra: Infra, job_id: str, queue: str) -> int:
    """ConversionRequested messages for this job in the queue (others are put back)."""
    connection = infra.amqp()
    try:
        channel = connection.channel()
        count, others = 0, []
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            if props.correlation_id == job_id:
                assert events_pb2.ConversionRequested.FromString(body).job_id == job_id
                count += 1
                channel.basic_ack(method.delivery_tag)
            else:
                others.append(method.delivery_tag)
        for tag in others:
            channel.basic_nack(tag, requeue=True)
        return count
    finally:
        connection.close()


def test_two_sweeper_replicas_publish_a_stuck_job_once(
    infra: Infra, own_storage: StorageHandle, tmp_path: Path
) -> None:
    queue = f"video-sweep-{time.monotonic_ns()}"
    env = {
        **infra.service_env(),
        "MONGO_DB": own_storage.settings.mongo_db,
        "VIDEO_QUEUE": queue,
        "SWEEP_INTERVAL_SECONDS": "0.3",
        "REQUEUE_AFTER_SECONDS": "60",
    }
    connection = infra.amqp()
    channel = connection.channel()
    channel.exchange_declare("video2mp3", exchange_type="topic", durable=True)
    channel.queue_declare(queue, auto_delete=True)
    channel.queue_bind(queue, "video2mp3", routing_key="conversion.requested")
    job = new_job(own_storage, f"stuck-{time.monotonic_ns()}")
    own_storage.db[own_storage.settings.jobs_collection].update_one(
        {"_id": ObjectId(job.id)}, {"$set": {"updated_at": datetime.now(UTC) - timedelta(seconds=120)}}
    )
    sweepers = []
    for i in (1, 2):
        port = free_port()
        proc = ServiceProcess(
            f"sweeper-{i}",
            python_module("storage.sweeper"),
            {**env, "SWEEPER_HEALTH_PORT": str(port)},
            tmp_path,
        )
        sweepers.append(proc.start())
        wait_for(lambda port=port: http_ok(f"http://127.0.0.1:{port}/readyz"), 60, what="sweeper ready")  # type: ignore[misc]
    try:
        seen = 0
        deadline = time.monotonic() + 5  # some 15 passes of each replica
        while time.monotonic() < deadline:
            seen += requested_for(infra, job.id, queue)
            time.sleep(0.2)
        assert seen == 1, "\n".join(p.logs() for p in sweepers)
        assert all(p.alive() for p in sweepers)
    finally:
        for proc in sweepers:
            proc.stop()
        connection.close()
        requested_for(infra, job.id, "video")  # the default work queue got it too: take it out


def _sweeper(storage: StorageHandle, **env: str) -> Sweeper:
    return _sweeper_on(storage.settings.mongo_uri, storage.settings.mongo_db, **env)


def _sweeper_on(mongo_uri: str, mongo_db: str, **env: str) -> Sweeper:
    settings = SweeperSettings.from_env(
        {
            "MONGO_URI": mongo_uri,
            "MONGO_DB": mongo_db,
            "RABBITMQ_URL": "amqp://unused",
            **env,
        }
    )
    store = JobStore(Mongo(settings.storage()), settings.storage())
    return Sweeper(store, publisher=None, settings=settings, holder=f"t{os.getpid()}")


def test_mp3_expiry_removes_the_file_and_refuses_downloads(
    own_storage: StorageHandle, start_storage: Callable[..., StorageHandle]
) -> None:
    short = start_storage(MP3_RETENTION_DAYS=str(1.5 / 86400), MONGO_DB=own_storage.settings.mongo_db)
    job = new_job(short, f"exp-{time.monotonic_ns()}")
    short.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(job_id=job.id, worker_id="w"))
    mp3 = short.upload(
        os.urandom(700_000), owner_id=job.owner_id, bucket=MP3S, job_id=job.id, filename="a.mp3"
    )
    done = short.jobs.FinishJob(jobs_pb2.FinishJobRequest(job_id=job.id, worker_id="w", mp3_id=mp3.id)).job
    assert done.expires_at.ToDatetime(UTC) < datetime.now(UTC) + timedelta(seconds=5)
    assert short.download(mp3.id, bucket=MP3S)[1]  # still there
    chunks = short.db[f"{short.settings.mp3_bucket}.chunks"]
    assert chunks.count_documents({"files_id": ObjectId(mp3.id)}) > 0
    time.sleep(2)
    with pytest.raises(grpc.RpcError) as caught:
        short.download(mp3.id, owner_id=job.owner_id, bucket=MP3S)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in (
        caught.value.details() or ""
    )
    swept = _sweeper(short, SWEEP_INTERVAL_SECONDS="1").sweep_once()
    assert swept is not None and swept.expired >= 1
    assert short.db[f"{short.settings.mp3_bucket}.files"].count_documents({"_id": ObjectId(mp3.id)}) == 0
    assert chunks.count_documents({"files_id": ObjectId(mp3.id)}) == 0
    got = short.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).job
    assert got.expired and got.state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_videos_of_failed_jobs_go_after_their_retention(own_storage: StorageHandle) -> None:
    job = new_job(own_storage, f"vid-{time.monotonic_ns()}")
    own_storage.jobs.FailJob(jobs_pb2.FailJobRequest(job_id=job.id, reason="bad media"))
    videos = own_storage.db[f"{own_storage.settings.video_bucket}.files"]
    keep = _sweeper(own_storage, VIDEO_RETENTION_HOURS="1")
    keep.sweep_once()
    assert videos.count_documents({"_id": ObjectId(job.video_id)}) == 1  # within its retention
    time.sleep(0.2)
    gone = _sweeper(own_storage, VIDEO_RETENTION_HOURS=str(0.1 / 3600))
    gone.sweep_once()
    assert videos.count_documents({"_id": ObjectId(job.video_id)}) == 0
    assert own_storage.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).job.video_deleted


def test_a_converting_job_whose_converter_died_is_published_again_once(
    infra: Infra, own_storage: StorageHandle
) -> None:
    queue = f"video-dead-converter-{time.monotonic_ns()}"
    connection = infra.amqp()
    channel = connection.channel()
    channel.exchange_declare("video2mp3", exchange_type="topic", durable=True)
    channel.queue_declare(queue, auto_delete=True)
    channel.queue_bind(queue, "video2mp3", routing_key="conversion.requested")
    alive, dead = (new_job(own_storage, f"conv-{time.monotonic_ns()}") for _ in range(2))
    for job, lease in ((alive, 60), (dead, 1)):
        own_storage.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(job_id=job.id, worker_id="w", lease_seconds=lease))
    jobs = own_storage.db[own_storage.settings.jobs_collection]
    for job in (alive, dead):
        jobs.update_one(
            {"_id": ObjectId(job.id)}, {"$set": {"updated_at": datetime.now(UTC) - timedelta(seconds=120)}}
        )
    time.sleep(1.5)  # the dead one's lease runs out; the live one's holds
    publisher = Publisher(infra.rabbitmq_url)
    try:
        sweeper = _sweeper(own_storage, REQUEUE_AFTER_SECONDS="60")
        sweeper.publisher = publisher
        first, second = sweeper.sweep_once(), sweeper.sweep_once()
        assert first is not None and second is not None and second.requeued == 0
        assert requested_for(infra, dead.id, queue) == 1 and requested_for(infra, alive.id, queue) == 0
        # A fresh converter's claim takes the job over (its lease ran out): the attempt counts.
        taken = own_storage.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(job_id=dead.id, worker_id="w2"))
        assert taken.claimed and taken.job.attempts == 2
        assert not own_storage.jobs.ClaimJob(
            jobs_pb2.ClaimJobRequest(job_id=alive.id, worker_id="w2")
        ).claimed
    finally:
        publisher.close()
        connection.close()
        requested_for(infra, dead.id, "video")


def test_storage_killed_mid_upload_leaves_chunks_the_sweeper_removes(infra: Infra, tmp_path: Path) -> None:
    db_name = f"{infra.mongo_db}_orphans{time.monotonic_ns()}"
    port = free_port()
    storage = ServiceProcess(
        "storage",
        python_module("storage"),
        infra.service_env(STORAGE_PORT=str(port), MONGO_DB=db_name, STORAGE_CHUNK_BYTES=str(256 * 1024)),
        tmp_path,
    ).start()
    channel = infra.channel(f"127.0.0.1:{port}", "gateway")
    mongo = infra.mongo()
    db = mongo[db_name]
    sent_enough = threading.Event()
    hold = threading.Event()

    def stream() -> Iterator[storage_pb2.UploadRequest]:
        yield storage_pb2.UploadRequest(
            header=storage_pb2.UploadHeader(
                bucket=storage_pb2.BUCKET_VIDEOS, filename="big.mp4", content_type="video/mp4", owner_id="u1"
            )
        )
        for _ in range(16):  # 4 MiB: several batches reach the database
            yield storage_pb2.UploadRequest(chunk=os.urandom(256 * 1024))
        sent_enough.set()
        hold.wait(60)  # the rest never comes: storage is killed meanwhile

    try:
        wait_for(lambda: channel_ready(channel), 60, what="storage serving")
        call = storage_pb2_grpc.StorageServiceStub(channel).Upload.future(stream(), timeout=60)
        assert sent_enough.wait(30)
        wait_for(lambda: db["videos.chunks"].count_documents({}) >= 8, 30, what="chunks written")
        storage.signal(signal.SIGKILL)
        storage.proc.wait(10)  # type: ignore[union-attr]
        hold.set()
        with pytest.raises(grpc.RpcError):
            call.result()
        left = db["videos.chunks"].count_documents({})
        assert left >= 8 and db["videos.files"].count_documents({}) == 0
        [marker] = list(db["jobs.uploads"].find())

        patient = _sweeper_on(infra.mongo_uri, db_name, ORPHAN_UPLOAD_GRACE_SECONDS="3600")
        patient.sweep_once()
        assert db["videos.chunks"].count_documents({}) == left  # within the grace period: kept
        db["jobs.uploads"].update_one(
            {"_id": marker["_id"]}, {"$set": {"touched_at": datetime.now(UTC) - timedelta(hours=2)}}
        )
        patient.store.leases.release("sweeper", patient.holder)
        done = patient.sweep_once()
        assert done is not None and done.orphans == 1
        assert db["videos.chunks"].count_documents({}) == 0
        assert db["jobs.uploads"].count_documents({}) == 0
    finally:
        hold.set()
        channel.close()
        storage.stop()
        mongo.drop_database(db_name)
        mongo.close()


def channel_ready(channel: grpc.Channel) -> bool:
    try:
        grpc.channel_ready_future(channel).result(timeout=1)
        return True
    except grpc.FutureTimeoutError:
        return False
