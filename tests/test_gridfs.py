"""GridFS works on the local MongoDB-compatible server (FerretDB) the way storage needs it."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator

import gridfs
import pytest
from pymongo.database import Database

from testing.infra import Infra


@pytest.fixture
def bucket(infra: Infra) -> Iterator[tuple[gridfs.GridFSBucket, Database]]:
    client = infra.mongo()
    db = client[f"{infra.mongo_db}_gridfs"]
    try:
        yield gridfs.GridFSBucket(db, bucket_name="probe", chunk_size_bytes=255 * 1024), db
    finally:
        client.drop_database(db.name)
        client.close()


def test_multi_chunk_round_trip_is_byte_identical(bucket: tuple[gridfs.GridFSBucket, Database]) -> None:
    fs, db = bucket
    data = os.urandom(6 * 1024 * 1024 + 12345)
    with fs.open_upload_stream("big.bin", metadata={"owner": "alice"}) as upload:
        for start in range(0, len(data), 1 << 20):  # written in pieces, as storage does
            upload.write(data[start : start + (1 << 20)])
        file_id = upload._id
    assert db["probe.chunks"].count_documents({"files_id": file_id}) > 20

    out = fs.open_download_stream(file_id)
    digest = hashlib.sha256()
    while piece := out.read(1 << 20):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert out.length == len(data)


def test_ranged_read(bucket: tuple[gridfs.GridFSBucket, Database]) -> None:
    fs, _ = bucket
    data = os.urandom(3 * 1024 * 1024)
    file_id = fs.upload_from_stream("ranged.bin", io.BytesIO(data))
    stream = fs.open_download_stream(file_id)
    stream.seek(1_000_003)  # crosses a chunk boundary
    assert stream.read(700_000) == data[1_000_003:1_700_003]


def test_listing_by_metadata(bucket: tuple[gridfs.GridFSBucket, Database]) -> None:
    fs, _ = bucket
    for owner, name in [("alice", "a1"), ("bob", "b1"), ("alice", "a2")]:
        fs.upload_from_stream(name, io.BytesIO(b"x" * 10), metadata={"owner": owner})
    assert sorted(f.filename for f in fs.find({"metadata.owner": "alice"})) == ["a1", "a2"]


def test_delete_leaves_no_chunks(bucket: tuple[gridfs.GridFSBucket, Database]) -> None:
    fs, db = bucket
    file_id = fs.upload_from_stream("gone.bin", io.BytesIO(os.urandom(1024 * 1024)))
    fs.delete(file_id)
    assert db["probe.chunks"].count_documents({"files_id": file_id}) == 0
    assert db["probe.files"].count_documents({"_id": file_id}) == 0
    with pytest.raises(gridfs.errors.NoFile):
        fs.open_download_stream(file_id)


def test_aborted_upload_leaves_no_chunks(bucket: tuple[gridfs.GridFSBucket, Database]) -> None:
    fs, db = bucket
    upload = fs.open_upload_stream("half.bin")
    upload.write(os.urandom(2 * 1024 * 1024))
    upload.abort()
    assert db["probe.chunks"].count_documents({"files_id": upload._id}) == 0
    assert db["probe.files"].count_documents({"_id": upload._id}) == 0
