"""StorageService against the real MongoDB-compatible server: uploads, downloads, ranges,
ownership, cancellation and the size limit."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from functools import partial

import gridfs
import grpc
import pymongo.errors
import pytest
from bson import ObjectId
from video2mp3.storage.v1 import storage_pb2

from common.file_streams import UploadStream
from storage.files import clean_filename
from storage.gridwriter import GridWriter
from storage.mongo import chunk_id
from testing.processes import wait_for
from tests.fixtures.storage import MIB, StorageHandle, sha256

VIDEOS = storage_pb2.BUCKET_VIDEOS
MP3S = storage_pb2.BUCKET_MP3S


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@pytest.mark.parametrize("size", [1, 1000, 5 * MIB + 12345])
def test_round_trip_is_byte_identical(storage_service: StorageHandle, size: int) -> None:
    data = os.urandom(size)
    info = storage_service.upload(data, owner_id="7", filename="holiday.mp4", chunk=300_000)
    assert info.size == size
    assert info.sha256 == sha256(data)
    assert (info.owner_id, info.filename, info.content_type) == ("7", "holiday.mp4", "video/mp4")
    assert info.bucket == VIDEOS and len(info.id) == 24 and info.created_at.seconds > 0

    got, body, sizes = storage_service.download(info.id, owner_id="7")
    assert body == data
    assert got.sha256 == info.sha256 and got.size == size and got.filename == "holiday.mp4"
    # Chunks of the configured size (1 MiB by default), the last one possibly shorter.
    assert all(s == storage_service.settings.chunk_bytes for s in sizes[:-1])
    assert 0 < sizes[-1] <= storage_service.settings.chunk_bytes

    stat = storage_service.files.Stat(storage_pb2.StatRequest(bucket=VIDEOS, file_id=info.id, owner_id="7"))
    assert stat.file == got


def test_download_of_a_file_larger_than_one_database_reply(
    start_storage: Callable[..., StorageHandle],
) -> None:
    """A reply from MongoDB may not exceed 48 MB; the local FerretDB answers a cursor's
    getMore with 250 chunk documents (62.5 MiB) unless the reader asks for few at a time,
    which storage does for files it did not write itself (it reads its own chunk by
    chunk, by ``_id``). A file past 101 + 183 chunks (~71 MiB) shows the difference.
    (Buckets of their own: FerretDB scans a whole collection for the other tests' checks.)"""
    storage_service = start_storage(MAX_UPLOAD_BYTES=str(200 * MIB), VIDEO_BUCKET=f"big{os.getpid()}")
    size = 90 * MIB + 777
    block = os.urandom(MIB)
    pieces = (block[: min(MIB, size - start)] for start in range(0, size, MIB))
    info = storage_service.upload(pieces, owner_id="7", filename="big.mp4")
    assert info.size == size
    _, body, _ = storage_service.download(info.id, owner_id="7")
    assert len(body) == size and sha256(body) == info.sha256
    _, tail, _ = storage_service.download(info.id, owner_id="7", offset=size - 1000)
    assert tail == body[-1000:]
    # The same bytes written by pymongo's own GridFS writer (chunks with ObjectId _ids).
    other_storage = start_storage(MAX_UPLOAD_BYTES=str(200 * MIB), VIDEO_BUCKET=f"other{os.getpid()}")
    other = gridfs.GridFSBucket(
        other_storage.db, other_storage.settings.video_bucket, chunk_size_bytes=255 * 1024
    ).upload_from_stream("other.mp4", io.BytesIO(body), metadata={"owner_id": "7"})
    _, again, _ = other_storage.download(str(other), owner_id="7")
    assert again == body
    _, tail, _ = other_storage.download(str(other), owner_id="7", offset=size - 1000)
    assert tail == body[-1000:]


def test_storage_names_its_chunks_after_the_file(storage_service: StorageHandle) -> None:
    """Chunk n of file F has _id "F:n", so a chunk is one primary-key lookup on any server."""
    size = 4 * storage_service.settings.chunk_bytes + 5
    info = storage_service.upload(os.urandom(size), owner_id="c")
    chunks = storage_service.db[f"{storage_service.settings.video_bucket}.chunks"]
    docs = list(chunks.find({"files_id": ObjectId(info.id)}, {"_id": 1, "n": 1}).sort("n", 1))
    assert [(d["_id"], d["n"]) for d in docs] == [(f"{info.id}:{n}", n) for n in range(5)]
    # And pymongo's GridFS reader reads the file as it reads any other.
    fs = gridfs.GridFSBucket(storage_service.db, storage_service.settings.video_bucket)
    assert len(fs.open_download_stream(ObjectId(info.id)).read()) == size


def test_delete_of_a_file_another_writer_made(storage_service: StorageHandle) -> None:
    fs = gridfs.GridFSBucket(storage_service.db, storage_service.settings.video_bucket, chunk_size_bytes=1000)
    file_id = fs.upload_from_stream("x.mp4", io.BytesIO(os.urandom(5500)), metadata={"owner_id": "d"})
    chunks = storage_service.db[f"{storage_service.settings.video_bucket}.chunks"]
    assert chunks.count_documents({"files_id": file_id}) == 6
    storage_service.files.Delete(storage_pb2.DeleteRequest(bucket=VIDEOS, file_id=str(file_id), owner_id="d"))
    assert chunks.count_documents({"files_id": file_id}) == 0
    assert code_of(lambda: storage_service.download(str(file_id))) == grpc.StatusCode.NOT_FOUND


def test_mp3_bucket_is_separate(storage_service: StorageHandle) -> None:
    data = os.urandom(50_000)
    info = storage_service.upload(data, bucket=MP3S, filename="song.mp3", content_type="")
    assert info.content_type == "audio/mpeg"
    assert storage_service.download(info.id, bucket=MP3S)[1] == data
    assert code_of(lambda: storage_service.download(info.id, bucket=VIDEOS)) == grpc.StatusCode.NOT_FOUND


def test_ranged_downloads(storage_service: StorageHandle) -> None:
    data = os.urandom(3 * MIB + 17)
    info = storage_service.upload(data, owner_id="r")
    chunk = storage_service.settings.chunk_bytes
    cases = [
        (0, 0),
        (0, 1),
        (5, 10),
        (chunk - 3, 6),  # across a GridFS chunk boundary
        (chunk, chunk),
        (MIB + 1, 2 * chunk + 5),
        (len(data) - 10, 0),
        (len(data) - 10, 1000),  # clipped at the end
        (len(data) - 1, 1),
    ]
    for offset, length in cases:
        got, body, _ = storage_service.download(info.id, owner_id="r", offset=offset, length=length)
        end = len(data) if length == 0 else min(len(data), offset + length)
        assert body == data[offset:end], (offset, length)
        assert got.size == len(data)
    # At the very end: the description and no bytes.
    assert storage_service.download(info.id, offset=len(data))[1] == b""
    assert code_of(lambda: storage_service.download(info.id, offset=len(data) + 1)) == (
        grpc.StatusCode.OUT_OF_RANGE
    )
    assert code_of(lambda: storage_service.download(info.id, offset=-1)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: storage_service.download(info.id, length=-5)) == grpc.StatusCode.INVALID_ARGUMENT


def test_other_owner_missing_and_malformed_ids(storage_service: StorageHandle) -> None:
    info = storage_service.upload(b"alice's video", owner_id="alice")
    files = storage_service.files
    not_found = grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: storage_service.download(info.id, owner_id="bob")) == not_found
    stat_bob = storage_pb2.StatRequest(bucket=VIDEOS, file_id=info.id, owner_id="bob")
    assert code_of(lambda: files.Stat(stat_bob)) == not_found
    delete_bob = storage_pb2.DeleteRequest(bucket=VIDEOS, file_id=info.id, owner_id="bob")
    assert code_of(lambda: files.Delete(delete_bob)) == not_found
    # Still there for its owner (and for internal callers that name no owner).
    assert storage_service.download(info.id, owner_id="alice")[1] == b"alice's video"
    assert storage_service.download(info.id)[1] == b"alice's video"

    missing = "0123456789abcdef01234567"
    assert code_of(lambda: storage_service.download(missing)) == not_found
    stat_missing = storage_pb2.StatRequest(bucket=VIDEOS, file_id=missing)
    assert code_of(lambda: files.Stat(stat_missing)) == not_found
    for bad in ["", "nope", "0123456789abcdef0123456z", "x" * 24, "0123456789abcdef012345678"]:
        request = storage_pb2.StatRequest(bucket=VIDEOS, file_id=bad)
        assert code_of(partial(files.Stat, request)) == grpc.StatusCode.INVALID_ARGUMENT
    no_bucket = storage_pb2.StatRequest(file_id=info.id)
    assert code_of(lambda: files.Stat(no_bucket)) == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_removes_file_and_chunks(storage_service: StorageHandle) -> None:
    info = storage_service.upload(os.urandom(8 * storage_service.settings.chunk_bytes), owner_id="d")
    chunks = storage_service.db[f"{storage_service.settings.video_bucket}.chunks"]
    assert chunks.count_documents({"files_id": ObjectId(info.id)}) == 8
    storage_service.files.Delete(storage_pb2.DeleteRequest(bucket=VIDEOS, file_id=info.id, owner_id="d"))
    assert chunks.count_documents({"files_id": ObjectId(info.id)}) == 0
    assert code_of(lambda: storage_service.download(info.id)) == grpc.StatusCode.NOT_FOUND
    again = storage_pb2.DeleteRequest(bucket=VIDEOS, file_id=info.id)
    assert code_of(lambda: storage_service.files.Delete(again)) == grpc.StatusCode.NOT_FOUND


def test_malformed_uploads_are_refused(storage_service: StorageHandle) -> None:
    files = storage_service.files
    header = storage_pb2.UploadHeader(bucket=VIDEOS, filename="a.mp4", owner_id="m")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    before = storage_service.orphan_chunks()
    # No header first.
    assert code_of(lambda: files.Upload(iter([storage_pb2.UploadRequest(chunk=b"abc")]))) == invalid
    # Nothing at all.
    assert code_of(lambda: files.Upload(iter([]))) == invalid
    # Empty file.
    assert code_of(lambda: files.Upload(UploadStream(header, []))) == invalid
    # A second header.
    twice = iter(
        [
            storage_pb2.UploadRequest(header=header),
            storage_pb2.UploadRequest(chunk=os.urandom(300_000)),
            storage_pb2.UploadRequest(header=header),
        ]
    )
    assert code_of(lambda: files.Upload(twice)) == invalid
    # Chunks but no finish message (what a cancellation can look like to the server).
    data = os.urandom(600_000)
    unfinished = iter([storage_pb2.UploadRequest(header=header), storage_pb2.UploadRequest(chunk=data)])
    assert code_of(lambda: files.Upload(unfinished)) == invalid
    # A finish that does not match what arrived.
    for finish in [
        storage_pb2.UploadFinish(size=len(data) + 1),
        storage_pb2.UploadFinish(size=len(data), sha256=sha256(b"other")),
    ]:
        wrong = iter(
            [
                storage_pb2.UploadRequest(header=header),
                storage_pb2.UploadRequest(chunk=data),
                storage_pb2.UploadRequest(finish=finish),
            ]
        )
        assert code_of(partial(files.Upload, wrong)) == invalid
    # Without the optional sha256 the size is enough.
    fine = iter(
        [
            storage_pb2.UploadRequest(header=header),
            storage_pb2.UploadRequest(chunk=data),
            storage_pb2.UploadRequest(finish=storage_pb2.UploadFinish(size=len(data))),
        ]
    )
    stored = files.Upload(fine).file
    assert stored.sha256 == sha256(data)
    files.Delete(storage_pb2.DeleteRequest(bucket=VIDEOS, file_id=stored.id))
    # No owner, no bucket.
    no_owner = storage_pb2.UploadHeader(bucket=VIDEOS, filename="a.mp4")
    assert code_of(lambda: files.Upload(UploadStream(no_owner, [b"x"]))) == invalid
    no_bucket = storage_pb2.UploadHeader(filename="a.mp4", owner_id="m")
    assert code_of(lambda: files.Upload(UploadStream(no_bucket, [b"x"]))) == invalid
    assert storage_service.orphan_chunks() == before
    assert (
        storage_service.db[f"{storage_service.settings.video_bucket}.files"].count_documents(
            {"metadata.owner_id": "m"}
        )
        == 0
    )


def test_oversized_upload_is_refused_and_leaves_nothing(start_storage: Callable[..., StorageHandle]) -> None:
    small = start_storage(MAX_UPLOAD_BYTES=str(MIB))
    before = small.orphan_chunks()
    assert code_of(lambda: small.upload(os.urandom(MIB + 1), owner_id="big")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert small.orphan_chunks() == before
    files = small.db[f"{small.settings.video_bucket}.files"]
    assert files.count_documents({"metadata.owner_id": "big"}) == 0
    # Exactly at the limit is fine.
    assert small.upload(os.urandom(MIB), owner_id="big").size == MIB


class PausingUpload:
    """An upload request stream that sends ``before`` bytes, then waits until released;
    released with ``fail=True`` it raises, like a client whose source broke."""

    def __init__(self, before: int, owner: str) -> None:
        self.before = before
        self.header = storage_pb2.UploadHeader(bucket=VIDEOS, filename="c.mp4", owner_id=owner)
        self.release = threading.Event()
        self.sent = threading.Event()
        self.fail = False

    def __iter__(self) -> Iterator[storage_pb2.UploadRequest]:
        yield storage_pb2.UploadRequest(header=self.header)
        step = 256 * 1024
        for _ in range(self.before // step):
            yield storage_pb2.UploadRequest(chunk=os.urandom(step))
        self.sent.set()
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("the client's source broke")
        yield storage_pb2.UploadRequest(chunk=b"never")


@pytest.mark.parametrize("how", ["cancel", "client-error", "deadline"])
def test_upload_interrupted_mid_stream_leaves_no_chunks(storage_service: StorageHandle, how: str) -> None:
    before = storage_service.orphan_chunks()
    stream = PausingUpload(before=3 * MIB, owner=f"cancel-{how}")
    timeout = 3.0 if how == "deadline" else 60.0
    future = storage_service.files.Upload.future(iter(stream), timeout=timeout)
    assert stream.sent.wait(20)
    # The chunks really reached the database while the upload was in flight.
    in_flight = 3 * MIB // storage_service.settings.chunk_bytes - 1  # the last may wait in the buffer
    wait_for(
        lambda: storage_service.orphan_chunks() >= before + in_flight, timeout=20, what="chunks in flight"
    )
    if how == "cancel":
        future.cancel()
    elif how == "client-error":
        stream.fail = True
        stream.release.set()
    with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)):
        future.result(timeout=30)
    stream.release.set()
    wait_for(lambda: storage_service.orphan_chunks() == before, timeout=20, what="partial chunks removed")
    files = storage_service.db[f"{storage_service.settings.video_bucket}.files"]
    assert files.count_documents({"metadata.owner_id": f"cancel-{how}"}) == 0


def test_filenames_are_cleaned(storage_service: StorageHandle) -> None:
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\Users\\me\\clip.mov") == "clip.mov"
    assert clean_filename("bad\x00\nname.mp4") == "badname.mp4"
    assert clean_filename("") == "upload"
    assert clean_filename("..") == "upload"
    assert len(clean_filename("a" * 1000)) == 255
    info = storage_service.upload(b"x", filename="dir/../été vidéo.mp4")
    assert info.filename == "été vidéo.mp4"


def test_a_failed_chunk_write_surfaces_and_the_abort_leaves_nothing(storage_service: StorageHandle) -> None:
    """The writer's database writes run on threads of their own: a failure there (here a
    real duplicate key on the server) is raised to the uploader, and abort removes the rest."""
    name = storage_service.settings.video_bucket
    files, chunks = storage_service.db[f"{name}.files"], storage_service.db[f"{name}.chunks"]
    writer = GridWriter(
        files, chunks, "dup.mp4", {"owner_id": "w"}, chunk_size=64 * 1024, batch_bytes=64 * 1024
    )
    chunks.insert_one({"_id": chunk_id(writer.id, 3), "files_id": "someone else", "n": 0})
    with pytest.raises(pymongo.errors.BulkWriteError):  # E11000 duplicate key
        for _ in range(40):
            writer.write(os.urandom(64 * 1024))
        writer.close()
    writer.abort()
    assert chunks.count_documents({"files_id": writer.id}) == 0
    assert files.count_documents({"_id": writer.id}) == 0
    chunks.delete_one({"_id": chunk_id(writer.id, 3)})
