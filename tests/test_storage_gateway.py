"""The gateway's upload, jobs and download endpoints, against the real auth and storage
servers, the real MongoDB-compatible server and the real RabbitMQ."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pika
import pytest
import requests
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import jobs_pb2, storage_pb2

from testing.infra import Infra
from testing.processes import ServiceProcess, free_port, wait_for
from tests.fixtures.storage import MIB, StorageHandle, sha256
from tests.fixtures.storage_gateway import MediaUser

MP3S = storage_pb2.BUCKET_MP3S


def requested_messages(infra: Infra) -> dict[str, tuple[pika.BasicProperties, bytes]]:
    """Takes every message waiting in the video queue (by job id)."""
    found: dict[str, tuple[pika.BasicProperties, bytes]] = {}
    connection = infra.amqp()
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get("video", auto_ack=True)
            if method is None:
                return found
            found[properties.correlation_id] = (properties, body)
    finally:
        connection.close()


def leftovers(storage: StorageHandle, owner_id: str) -> tuple[int, int]:
    videos = storage.db[f"{storage.settings.video_bucket}.files"].count_documents(
        {"metadata.owner_id": owner_id}
    )
    jobs = storage.db[storage.settings.jobs_collection].count_documents({"owner_id": owner_id})
    return videos, jobs


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str)
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def finish_job(storage: StorageHandle, job_id: str, owner_id: str, mp3: bytes, name: str) -> str:
    """What a converter does: converting, MP3 into storage, succeeded."""
    assert storage.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(job_id=job_id, worker_id="test-converter")).claimed
    info = storage.upload(
        mp3, owner_id=owner_id, bucket=MP3S, filename=name, content_type="audio/mpeg", job_id=job_id
    )
    storage.jobs.FinishJob(
        jobs_pb2.FinishJobRequest(job_id=job_id, worker_id="test-converter", mp3_id=info.id)
    )
    return info.id


# ------------------------------------------------------------------------------------ upload


@pytest.mark.parametrize("size", [1000, 6 * MIB + 7])
def test_upload_stores_queues_and_publishes(
    media_user: Callable[[], MediaUser], storage_service: StorageHandle, infra: Infra, size: int
) -> None:
    user = media_user()
    data = os.urandom(size)
    response = user.upload(data, filename="Holiday in Zürich.mp4")
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    job_id, video_id = body["job_id"], body["video_id"]
    assert body["status_url"] == f"http://gateway.test/jobs/{job_id}"
    assert response.headers["Location"] == body["status_url"]
    assert body["size"] == size and body["sha256"] == sha256(data) and body["state"] == "queued"

    info, stored, _ = storage_service.download(video_id, owner_id=user.id)
    assert stored == data
    assert info.filename == "Holiday in Zürich.mp4" and info.content_type == "video/mp4"

    properties, raw = requested_messages(infra)[job_id]
    assert properties.content_type == "application/x-protobuf"
    assert properties.type == "video2mp3.events.v1.ConversionRequested"
    assert properties.delivery_mode == 2 and properties.message_id
    event = events_pb2.ConversionRequested.FromString(raw)
    assert (event.job_id, event.video_id, event.owner_id, event.owner_email) == (
        job_id,
        video_id,
        user.id,
        user.email,
    )
    assert event.filename == "Holiday in Zürich.mp4" and event.requested_at.seconds > 0

    job = user.http.get(f"/jobs/{job_id}", headers=user.headers)
    assert job.status_code == 200
    assert job.get_json()["state"] == "queued" and job.get_json()["video_id"] == video_id
    assert job.get_json()["mp3_id"] is None
    listed = user.http.get("/jobs", headers=user.headers).get_json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]


def test_upload_refusals(
    media_user: Callable[[], MediaUser], media_http: Any, storage_service: StorageHandle
) -> None:
    user = media_user()
    assert_error(user.upload(b"", filename="empty.mp4"), 400)
    assert_error(user.upload(b"data", field="video"), 400)
    assert_error(media_http.post("/upload", headers=user.headers, data=b"raw", content_type="video/mp4"), 400)
    assert_error(
        media_http.post("/upload", headers=user.headers, data=b"--x--", content_type="multipart/form-data"),
        400,
    )
    truncated = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
        + os.urandom(500_000)
    )
    assert_error(
        media_http.post(
            "/upload", headers=user.headers, data=truncated, content_type="multipart/form-data; boundary=XyZ"
        ),
        400,
    )
    nobody = media_http.post("/upload", data={"file": (b"x", "a.mp4")}, content_type="multipart/form-data")
    assert_error(nobody, 401)
    assert leftovers(storage_service, user.id) == (0, 0)
    assert storage_service.orphan_chunks() == 0


def test_oversized_upload_is_413_and_leaves_nothing(
    media_gateway_factory: Callable[..., Any],
    start_storage: Callable[..., StorageHandle],
    auth_address: str,
    infra: Infra,
) -> None:
    # The gateway's own limit …
    small = media_gateway_factory(MAX_UPLOAD_BYTES=str(MIB)).test_client()
    user = MediaUser(small)
    assert_error(user.upload(os.urandom(MIB + 1)), 413)
    assert_error(user.upload(os.urandom(3 * MIB)), 413)
    # … and storage's, when it is the smaller one.
    storage = start_storage(MAX_UPLOAD_BYTES=str(MIB))
    gateway = media_gateway_factory(STORAGE_SVC_ADDRESS=storage.address).test_client()
    other = MediaUser(gateway)
    assert_error(other.upload(os.urandom(2 * MIB)), 413)
    for who in (user, other):
        assert leftovers(storage, who.id) == (0, 0)
    assert storage.orphan_chunks() == 0
    assert user.upload(os.urandom(MIB)).status_code == 202


def test_broker_down_is_503_and_leaves_nothing(
    media_gateway_factory: Callable[..., Any], storage_service: StorageHandle, infra: Infra
) -> None:
    gateway = media_gateway_factory(RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    user = MediaUser(gateway.test_client())
    response = user.upload(os.urandom(2 * MIB))
    body = assert_error(response, 503)
    assert body["error"] == "unavailable" and response.headers.get("Retry-After")
    assert leftovers(storage_service, user.id) == (0, 0)
    assert storage_service.orphan_chunks() == 0


def test_storage_down_is_503(media_gateway_factory: Callable[..., Any]) -> None:
    gateway = media_gateway_factory(STORAGE_SVC_ADDRESS=f"127.0.0.1:{free_port()}")
    user = MediaUser(gateway.test_client())
    assert_error(user.upload(os.urandom(100_000)), 503)
    assert_error(user.http.get("/jobs", headers=user.headers), 503)


# -------------------------------------------------------------------------------------- jobs


def test_jobs_are_private(media_user: Callable[[], MediaUser]) -> None:
    alice, bob = media_user(), media_user()
    job_id = alice.upload(b"alice's video").get_json()["job_id"]
    assert alice.http.get(f"/jobs/{job_id}", headers=alice.headers).status_code == 200
    assert_error(bob.http.get(f"/jobs/{job_id}", headers=bob.headers), 404)
    assert bob.http.get("/jobs", headers=bob.headers).get_json()["jobs"] == []
    assert_error(bob.http.get("/jobs/not-an-id", headers=bob.headers), 400)
    assert_error(bob.http.get("/jobs/0123456789abcdef01234567", headers=bob.headers), 404)
    assert_error(bob.http.get(f"/jobs/{job_id}"), 401)


# ---------------------------------------------------------------------------------- download


@pytest.fixture
def finished(
    media_user: Callable[[], MediaUser], storage_service: StorageHandle
) -> tuple[MediaUser, str, bytes]:
    user = media_user()
    job_id = user.upload(os.urandom(5000), filename="Fête à Zürich.mov").get_json()["job_id"]
    mp3 = os.urandom(3 * MIB + 11)
    mp3_id = finish_job(storage_service, job_id, user.id, mp3, "Fête à Zürich.mov")
    job = user.http.get(f"/jobs/{job_id}", headers=user.headers).get_json()
    assert job["state"] == "succeeded" and job["mp3_id"] == mp3_id
    assert job["download_url"] == f"http://gateway.test/download?fid={mp3_id}"
    return user, mp3_id, mp3


def test_download_whole_file(finished: tuple[MediaUser, str, bytes]) -> None:
    user, mp3_id, mp3 = finished
    response = user.http.get(f"/download?fid={mp3_id}", headers=user.headers)
    assert response.status_code == 200
    assert response.mimetype == "audio/mpeg"
    assert response.headers["Content-Length"] == str(len(mp3))
    assert response.headers["Accept-Ranges"] == "bytes"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=")
    assert "filename*=UTF-8''" + urllib.parse.quote("Fête à Zürich.mp3") in disposition
    assert response.get_data() == mp3
    head = user.http.head(f"/download?fid={mp3_id}", headers=user.headers)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(mp3))
    assert head.get_data() == b""


def test_download_ranges(finished: tuple[MediaUser, str, bytes]) -> None:
    user, mp3_id, mp3 = finished
    size = len(mp3)
    url = f"/download?fid={mp3_id}"
    for header, start, stop in [
        ("bytes=0-0", 0, 1),
        ("bytes=10-99", 10, 100),
        ("bytes=262140-262150", 262140, 262151),
        (f"bytes={MIB}-", MIB, size),
        ("bytes=-100", size - 100, size),
        (f"bytes=100-{size + 1000}", 100, size),
    ]:
        response = user.http.get(url, headers={**user.headers, "Range": header})
        assert response.status_code == 206, header
        assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert response.headers["Content-Length"] == str(stop - start)
        assert response.get_data() == mp3[start:stop], header
    for header in (f"bytes={size}-", "bytes=-0", "bytes= -000"):  # a zero-length suffix (RFC 9110 §14.1.1)
        unsatisfiable = user.http.get(url, headers={**user.headers, "Range": header})
        assert_error(unsatisfiable, 416)
        assert unsatisfiable.headers["Content-Range"] == f"bytes */{size}"
    # Several ranges or a stale If-Range: the whole file.
    several = user.http.get(url, headers={**user.headers, "Range": "bytes=0-1,5-6"})
    assert several.status_code == 200 and len(several.get_data()) == size
    stale = user.http.get(url, headers={**user.headers, "Range": "bytes=0-1", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.get_data()) == size


def test_download_access_rules(
    finished: tuple[MediaUser, str, bytes],
    media_user: Callable[[], MediaUser],
    infra: Infra,
    auth_address: str,
    auth_settings: Any,
    storage_service: StorageHandle,
) -> None:
    user, mp3_id, mp3 = finished
    stranger = media_user()
    http = user.http
    assert_error(http.get(f"/download?fid={mp3_id}", headers=stranger.headers), 404)
    assert_error(http.get(f"/download?fid={mp3_id}"), 401)
    assert_error(http.get("/download", headers=user.headers), 400)
    assert_error(http.get("/download?fid=nope", headers=user.headers), 400)
    assert_error(http.get("/download?fid=0123456789abcdef01234567", headers=user.headers), 404)
    # The video is not downloadable as an MP3.
    video_id = user.http.get("/jobs", headers=user.headers).get_json()["jobs"][0]["video_id"]
    assert_error(http.get(f"/download?fid={video_id}", headers=user.headers), 404)

    channel = infra.channel(auth_address, "notifier")
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    token = auth.IssueDownloadToken(
        auth_pb2.IssueDownloadTokenRequest(user_id=user.id, file_id=mp3_id)
    ).download_token
    linked = http.get(f"/download?fid={mp3_id}&token={urllib.parse.quote(token)}")
    assert linked.status_code == 200 and linked.get_data() == mp3
    ranged = http.get(
        f"/download?fid={mp3_id}&token={urllib.parse.quote(token)}", headers={"Range": "bytes=0-9"}
    )
    assert ranged.status_code == 206 and ranged.get_data() == mp3[:10]
    # A link only works for its own file.
    other_mp3 = storage_service.upload(b"ID3 other", owner_id=user.id, bucket=MP3S)
    assert_error(http.get(f"/download?fid={other_mp3.id}&token={urllib.parse.quote(token)}"), 401)
    assert_error(http.get(f"/download?fid={mp3_id}&token=garbage"), 401)
    assert_error(http.get(f"/download?fid={mp3_id}&token="), 401)
    # A link for a file of another user (token names that user) never reaches this one's file.
    stranger_token = auth.IssueDownloadToken(
        auth_pb2.IssueDownloadTokenRequest(user_id=stranger.id, file_id=mp3_id)
    ).download_token
    assert_error(http.get(f"/download?fid={mp3_id}&token={urllib.parse.quote(stranger_token)}"), 404)
    # An expired link: signed like auth's own, an hour ago, valid for a minute.
    from auth.tokens import Tokens

    with mock.patch("auth.tokens.time.time", return_value=time.time() - 3600):
        expired, _ = Tokens(auth_settings).issue_download(int(user.id), mp3_id, 60)
    assert_error(http.get(f"/download?fid={mp3_id}&token={urllib.parse.quote(expired)}"), 401)
    channel.close()


# ------------------------------------------------------------------- under gunicorn, streaming


def _worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry.name))
    return pids


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_streaming_through_gunicorn(
    infra: Infra, auth_address: str, storage_service: StorageHandle, tmp_path: Path
) -> None:
    port = free_port()
    env = infra.service_env(
        AUTH_SVC_ADDRESS=auth_address,
        STORAGE_SVC_ADDRESS=storage_service.address,
        GATEWAY_PORT=str(port),
        GUNICORN_WORKERS="1",
        MAX_UPLOAD_BYTES=str(256 * MIB),
    )
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    proc = ServiceProcess(
        "gateway-media",
        [gunicorn, "--config", "python:gateway.gunicorn_conf", "gateway.app:create_app()"],
        env,
        tmp_path,
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{base}/healthz", timeout=2).ok, timeout=30, what="gateway up")
        email = f"stream-{uuid.uuid4().hex[:10]}@example.com"
        assert requests.post(
            f"{base}/register", json={"email": email, "password": "pw-pw-pw-pw-1"}, timeout=10
        ).ok
        login = requests.post(f"{base}/login", auth=(email, "pw-pw-pw-pw-1"), timeout=10)
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        user_id = requests.get(f"{base}/me", headers=headers, timeout=10).json()["id"]
        (worker,) = _worker_pids(proc.pid)
        before = _peak_rss_kib(worker)

        # 48 MiB sent with chunked transfer encoding, generated on the fly (as curl -T - would).
        size = 48 * MIB
        boundary = "streamingboundary42"
        digest = hashlib.sha256()

        def body() -> Iterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
                "Content-Type: video/mp4\r\n\r\n"
            ).encode()
            block = os.urandom(MIB)
            for i in range(size // MIB):
                piece = block[i:] + block[:i]
                digest.update(piece)
                yield piece
            yield f"\r\n--{boundary}--\r\n".encode()

        response = requests.post(
            f"{base}/upload",
            data=body(),
            headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=120,
        )
        assert response.status_code == 202, response.text
        assert response.json()["size"] == size and response.json()["sha256"] == digest.hexdigest()
        grown_mib = (_peak_rss_kib(worker) - before) / 1024
        assert grown_mib < 24, f"the gateway worker grew by {grown_mib:.1f} MiB for a 48 MiB upload"

        # A client that goes away mid-body leaves nothing behind.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {100 * MIB}\r\n\r\n"
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut.mp4"\r\n\r\n'
            )
            sock.sendall(head.encode())
            for _ in range(4):
                sock.sendall(os.urandom(MIB))
            # The bytes are on their way into GridFS while the client is still "sending".
            wait_for(lambda: storage_service.orphan_chunks() > 0, timeout=30, what="chunks in flight")
        wait_for(lambda: storage_service.orphan_chunks() == 0, timeout=30, what="partial chunks removed")
        assert leftovers(storage_service, user_id) == (1, 1)  # only the finished upload

        # The same with chunked transfer encoding (curl -T - stopped with Ctrl-C).
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            )
            preamble = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut2.mp4"\r\n\r\n'
            ).encode()
            sock.sendall(head.encode() + b"%x\r\n" % len(preamble) + preamble + b"\r\n")
            for _ in range(4):
                sock.sendall(b"%x\r\n" % MIB + os.urandom(MIB) + b"\r\n")
            wait_for(lambda: storage_service.orphan_chunks() > 0, timeout=30, what="chunks in flight")
        wait_for(lambda: storage_service.orphan_chunks() == 0, timeout=30, what="partial chunks removed")
        assert leftovers(storage_service, user_id) == (1, 1)

        # Each abort is one WARNING line, never an ERROR with a traceback.
        def aborted() -> list[dict[str, Any]]:
            records = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
            return [r for r in records if r.get("message") == "upload aborted by the client"]

        wait_for(lambda: len(aborted()) == 2, timeout=30, what="two warnings logged")
        assert [r["severity"] for r in aborted()] == ["WARNING", "WARNING"]
        records = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
        errors = [r for r in records if r.get("severity") in ("ERROR", "CRITICAL")]
        assert not errors, errors
        assert "Traceback" not in proc.logs()
    finally:
        proc.stop()
