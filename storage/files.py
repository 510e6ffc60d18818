"""StorageService: streams videos and MP3s in and out of GridFS, in chunks."""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import gridfs
import gridfs.errors
import grpc
import pymongo.errors
from bson import ObjectId
from gridfs import GridOut
from video2mp3.storage.v1 import storage_pb2, storage_pb2_grpc

from storage.gridwriter import GridWriter, OrphanedUpload
from storage.lifecycle import SUCCEEDED, TERMINAL
from storage.mongo import Mongo, chunk_id, now
from storage.rpc import parse_id, timestamp, unavailable_on_mongo_error

log = logging.getLogger("storage.files")

MAX_FILENAME = 255
# Chunk documents per round trip when reading another writer's file by query (2 MiB at
# GridFS's usual 255 KiB chunks; storage's own files are read chunk by chunk, by _id).
CHUNK_DOCS_PER_BATCH = 8
MAX_OWNER_ID = 128
DEFAULT_CONTENT_TYPE: dict[int, str] = {
    storage_pb2.BUCKET_VIDEOS: "application/octet-stream",
    storage_pb2.BUCKET_MP3S: "audio/mpeg",
}


def clean_filename(raw: str) -> str:
    """The last path component, without control characters, at most 255 characters."""
    name = raw.replace("\\", "/")
    name = posixpath.basename(name)
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in {"", ".", ".."}:
        return "upload"
    return name[:MAX_FILENAME]


def file_info(bucket: int, grid_out: GridOut) -> storage_pb2.FileInfo:
    metadata: Mapping[str, Any] = grid_out.metadata or {}
    return storage_pb2.FileInfo(
        id=str(grid_out._id),
        bucket=bucket,  # type: ignore[arg-type]
        filename=grid_out.filename or "",
        content_type=str(metadata.get("content_type", "")),
        owner_id=str(metadata.get("owner_id", "")),
        size=int(grid_out.length),
        sha256=str(metadata.get("sha256", "")),
        created_at=timestamp(grid_out.upload_date),
    )


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, mongo: Mongo) -> None:
        self.mongo = mongo
        self.settings = mongo.settings

    # -- helpers
    def _bucket(self, bucket: int, context: grpc.ServicerContext) -> gridfs.GridFSBucket:
        found = self.mongo.buckets.get(bucket)
        if found is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bucket must be BUCKET_VIDEOS or BUCKET_MP3S")
        assert found is not None
        return found

    def _open(self, bucket: int, file_id: str, owner_id: str, context: grpc.ServicerContext) -> GridOut:
        """The file, if it exists and (when ``owner_id`` is given) belongs to that owner.
        A missing file and another owner's file look the same: NOT_FOUND."""
        store = self._bucket(bucket, context)
        oid = parse_id(file_id, "file_id", context)
        if bucket == storage_pb2.BUCKET_MP3S and self._expired(oid, owner_id):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the file expired")
        try:
            grid_out = store.open_download_stream(oid)
        except gridfs.errors.NoFile:
            context.abort(grpc.StatusCode.NOT_FOUND, "file not found")
            raise
        owner = str((grid_out.metadata or {}).get("owner_id", ""))
        if owner_id and owner != owner_id:
            grid_out.close()
            context.abort(grpc.StatusCode.NOT_FOUND, "file not found")
        return grid_out

    def _expired(self, oid: ObjectId, owner_id: str) -> bool:
        """An MP3 of a job whose MP3 retention ran out (whether or not the sweeper removed it yet)."""
        job = self.mongo.jobs.find_one(
            {"mp3_id": str(oid), "state": SUCCEEDED}, {"owner_id": 1, "expired": 1, "expires_at": 1}
        )
        if job is None or (owner_id and job.get("owner_id") != owner_id):
            return False
        expires_at = job.get("expires_at")
        return bool(job.get("expired")) or (expires_at is not None and expires_at <= now())

    # -- RPCs
    def Upload(
        self, request_iterator: Iterator[storage_pb2.UploadRequest], context: grpc.ServicerContext
    ) -> storage_pb2.UploadResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be an UploadHeader")
        assert first is not None
        header = first.header
        with unavailable_on_mongo_error(context):
            self._bucket(header.bucket, context)
            if not header.owner_id or len(header.owner_id) > MAX_OWNER_ID:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "owner_id is required")
            job_id = ""
            if header.job_id:
                self._check_job_open(header.job_id, header.owner_id, context)
                job_id = header.job_id
            filename = clean_filename(header.filename)
            metadata: dict[str, Any] = {
                "owner_id": header.owner_id,
                "content_type": header.content_type or DEFAULT_CONTENT_TYPE[header.bucket],
            }
            if job_id:
                metadata["job_id"] = job_id
            self.mongo.ensure_indexes()
            grid_in = GridWriter(
                self.mongo.files(header.bucket),
                self.mongo.chunks(header.bucket),
                filename,
                metadata,
                chunk_size=self.settings.chunk_bytes,
                uploads=self.mongo.uploads,
            )
            size = self._receive(grid_in, metadata, request_iterator, context)
            info = storage_pb2.FileInfo(
                id=str(grid_in.id),
                bucket=header.bucket,
                filename=filename,
                content_type=metadata["content_type"],
                owner_id=header.owner_id,
                size=size,
                sha256=metadata["sha256"],
                created_at=timestamp(grid_in.upload_date),
            )
            if job_id:
                self._drop_if_job_finished(header.bucket, grid_in.id, job_id, context)
        log.info(
            "stored",
            extra={"file_id": info.id, "bucket": header.bucket, "size": size, "job_id": job_id},
        )
        return storage_pb2.UploadResponse(file=info)

    def _receive(
        self,
        grid_in: GridWriter,
        metadata: dict[str, Any],
        request_iterator: Iterator[storage_pb2.UploadRequest],
        context: grpc.ServicerContext,
    ) -> int:
        """Write the chunks into ``grid_in`` and commit it; on any failure (the client went
        away, the size limit, a database error) the partial file is removed."""
        digest = hashlib.sha256()
        size = 0
        limit = self.settings.max_upload_bytes
        committed = False
        try:
            finish: storage_pb2.UploadFinish | None = None
            for request in request_iterator:
                kind = request.WhichOneof("payload")
                if kind == "finish":
                    finish = request.finish
                    break
                if kind != "chunk":
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only the first message is a header")
                data = request.chunk
                size += len(data)
                if size > limit:
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, f"file is larger than the limit of {limit} bytes"
                    )
                digest.update(data)
                grid_in.write(data)
            if finish is None or not context.is_active():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upload ended without its finish message")
            assert finish is not None
            sha = digest.hexdigest()
            if finish.size != size or (finish.sha256 and finish.sha256.lower() != sha):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the bytes received differ from those sent")
            if size == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the file is empty")
            metadata["sha256"] = sha
            grid_in.close()
            committed = True
            return size
        except grpc.RpcError:
            # The request stream broke: the client cancelled, failed or hit its deadline.
            context.abort(grpc.StatusCode.CANCELLED, "the upload was cancelled")
            raise
        except OrphanedUpload:
            context.abort(grpc.StatusCode.ABORTED, "the upload stalled for too long and was discarded")
            raise
        finally:
            if not committed:
                self._abort(grid_in)

    @staticmethod
    def _abort(grid_in: GridWriter) -> None:
        try:
            grid_in.abort()
            log.info("partial upload removed", extra={"file_id": str(grid_in.id)})
        except pymongo.errors.PyMongoError as error:
            log.warning(
                "could not remove a partial upload",
                extra={"file_id": str(grid_in.id), "error": repr(error)},
            )

    def _check_job_open(self, job_id: str, owner_id: str, context: grpc.ServicerContext) -> None:
        oid = parse_id(job_id, "job_id", context)
        job = self.mongo.jobs.find_one({"_id": oid}, {"owner_id": 1, "state": 1})
        if job is None or job.get("owner_id") != owner_id:
            context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        assert job is not None
        if job["state"] in TERMINAL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the job is already finished")

    def _drop_if_job_finished(
        self, bucket: int, file_id: ObjectId, job_id: str, context: grpc.ServicerContext
    ) -> None:
        """Checked after the file is committed: if the job finished meanwhile with another
        file, this one can never be used, so it goes. (TransitionJob removes the files it
        sees; this check covers a file committed after that sweep.)"""
        job = self.mongo.jobs.find_one({"_id": ObjectId(job_id)}, {"state": 1, "mp3_id": 1})
        if job is not None and job["state"] not in TERMINAL:
            return
        if job is not None and job.get("mp3_id") == str(file_id):
            return
        self.mongo.delete_file(bucket, file_id)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the job finished while the file was uploaded")

    def Download(
        self, request: storage_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[storage_pb2.DownloadResponse]:
        if request.offset < 0 or request.length < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "offset and length must not be negative")
        with unavailable_on_mongo_error(context):
            grid_out = self._open(request.bucket, request.file_id, request.owner_id, context)
            try:
                size = int(grid_out.length)
                if request.offset > size:
                    context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset is past the end ({size} bytes)")
                remaining = size - request.offset
                if request.length:
                    remaining = min(remaining, request.length)
                yield storage_pb2.DownloadResponse(file=file_info(request.bucket, grid_out))
                yield from self._read_range(request.bucket, grid_out, request.offset, remaining, context)
            finally:
                grid_out.close()

    def _read_range(
        self,
        bucket: int,
        grid_out: gridfs.GridOut,
        offset: int,
        remaining: int,
        context: grpc.ServicerContext,
    ) -> Iterator[storage_pb2.DownloadResponse]:
        chunk_size = int(grid_out.chunk_size)
        first = offset // chunk_size
        skip = offset % chunk_size
        chunks = self.mongo.chunks(bucket)
        head = (
            chunks.find_one({"_id": chunk_id(grid_out._id, first)}, {"n": 1, "data": 1})
            if remaining
            else None
        )
        if head is not None:
            docs = self._chunks_by_id(chunks, grid_out._id, first, head)
        else:
            docs = self._chunks_by_query(chunks, grid_out._id, first)
        try:
            expected = first
            while remaining > 0:
                doc = next(docs, None)
                if doc is None:
                    break
                if doc["n"] != expected:
                    context.abort(grpc.StatusCode.DATA_LOSS, "the file is missing a piece")
                data = bytes(doc["data"])[skip : skip + remaining]
                skip = 0
                expected += 1
                remaining -= len(data)
                yield storage_pb2.DownloadResponse(chunk=data)
        finally:
            docs.close()
        if remaining > 0:
            if self.mongo.files(bucket).find_one({"_id": grid_out._id}, {"_id": 1}) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "file was removed during the download")
            context.abort(grpc.StatusCode.DATA_LOSS, "file ended early")

    @staticmethod
    def _chunks_by_id(
        chunks: pymongo.collection.Collection, file_id: ObjectId, first: int, head: dict[str, Any]
    ) -> Generator[dict[str, Any] | None, None, None]:
        """A file storage wrote: each chunk by its ``_id``, one round trip each (the lookup
        every MongoDB-compatible server answers from its primary key)."""
        yield head
        n = first + 1
        while True:
            yield chunks.find_one({"_id": chunk_id(file_id, n)}, {"n": 1, "data": 1})
            n += 1

    @staticmethod
    def _chunks_by_query(
        chunks: pymongo.collection.Collection, file_id: ObjectId, first: int
    ) -> Generator[dict[str, Any], None, None]:
        """A file another GridFS writer made: the chunks by ``files_id`` and ``n``, a few
        per round trip. (GridOut's own cursor leaves the batch size to the server, and the
        local FerretDB answers with batches larger than a MongoDB reply may be, which
        pymongo refuses.)"""
        cursor = (
            chunks.find({"files_id": file_id, "n": {"$gte": first}}, {"n": 1, "data": 1})
            .sort("n", 1)
            .batch_size(CHUNK_DOCS_PER_BATCH)
        )
        with cursor:
            yield from cursor

    def Stat(
        self, request: storage_pb2.StatRequest, context: grpc.ServicerContext
    ) -> storage_pb2.StatResponse:
        with unavailable_on_mongo_error(context):
            grid_out = self._open(request.bucket, request.file_id, request.owner_id, context)
            grid_out.close()
            return storage_pb2.StatResponse(file=file_info(request.bucket, grid_out))

    def Delete(
        self, request: storage_pb2.DeleteRequest, context: grpc.ServicerContext
    ) -> storage_pb2.DeleteResponse:
        with unavailable_on_mongo_error(context):
            grid_out = self._open(request.bucket, request.file_id, request.owner_id, context)
            grid_out.close()
            if not self.mongo.delete_file(request.bucket, grid_out._id):
                context.abort(grpc.StatusCode.NOT_FOUND, "file not found")
        log.info("deleted", extra={"file_id": request.file_id, "bucket": request.bucket})
        return storage_pb2.DeleteResponse()
