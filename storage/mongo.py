"""The MongoDB side of the storage service: one client per process, buckets, indexes."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import pymongo
import pymongo.errors
from bson import ObjectId
from gridfs import GridFSBucket
from pymongo.database import Database
from video2mp3.storage.v1 import storage_pb2

from storage.settings import Settings

log = logging.getLogger("storage.mongo")


class Mongo:
    """Holds the client, the two GridFS buckets and the jobs collection. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: pymongo.MongoClient = pymongo.MongoClient(
            settings.mongo_uri,
            tz_aware=True,
            serverSelectionTimeoutMS=settings.mongo_timeout_ms,
            connectTimeoutMS=settings.mongo_timeout_ms,
            appname="video2mp3-storage",
        )
        self.db: Database = self.client[settings.mongo_db]
        self.buckets: dict[int, GridFSBucket] = {
            storage_pb2.BUCKET_VIDEOS: GridFSBucket(
                self.db, settings.video_bucket, chunk_size_bytes=settings.chunk_bytes
            ),
            storage_pb2.BUCKET_MP3S: GridFSBucket(
                self.db, settings.mp3_bucket, chunk_size_bytes=settings.chunk_bytes
            ),
        }
        self.bucket_names: dict[int, str] = {
            storage_pb2.BUCKET_VIDEOS: settings.video_bucket,
            storage_pb2.BUCKET_MP3S: settings.mp3_bucket,
        }
        self.jobs = self.db[settings.jobs_collection]
        # Uploads being written (storage/gridwriter.py): what a crashed storage leaves is found here.
        self.uploads = self.db[f"{settings.jobs_collection}.uploads"]
        self._indexes_ready = False
        self._indexes_lock = threading.Lock()

    def files(self, bucket: int) -> pymongo.collection.Collection:
        return self.db[f"{self.bucket_names[bucket]}.files"]

    def chunks(self, bucket: int) -> pymongo.collection.Collection:
        return self.db[f"{self.bucket_names[bucket]}.chunks"]

    def ensure_indexes(self) -> bool:
        """Create the indexes once; when MongoDB is down, try again on the next call."""
        if self._indexes_ready:
            return True
        with self._indexes_lock:
            if self._indexes_ready:
                return True
            try:
                self.jobs.create_index([("owner_id", 1), ("created_at", -1)], name="owner_created")
                self.jobs.create_index([("state", 1), ("updated_at", 1)], name="state_updated")
                self.jobs.create_index([("video_id", 1)], name="video")
                self.jobs.create_index([("state", 1), ("created_at", 1)], name="state_created")
                self.jobs.create_index([("mp3_id", 1)], name="mp3")
                leases = self.db[f"{settings_jobs(self)}.leases"]
                leases.create_index([("name", 1), ("gen", -1)], name="name_gen")
                self.db[f"{settings_jobs(self)}.claims"].create_index([("job_id", 1)], name="job")
                self.uploads.create_index([("touched_at", 1)], name="touched")
                for bucket in self.buckets:
                    files, chunks = self.files(bucket), self.chunks(bucket)
                    chunks.create_index([("files_id", 1), ("n", 1)], unique=True, name="files_id_1_n_1")
                    files.create_index([("filename", 1), ("uploadDate", 1)], name="filename_1_uploadDate_1")
                    files.create_index([("metadata.owner_id", 1)], name="owner")
                    files.create_index([("metadata.job_id", 1)], name="job")
            except pymongo.errors.PyMongoError as error:
                log.warning("could not create indexes yet", extra={"error": repr(error)})
                return False
            self._indexes_ready = True
            return True

    def delete_file(self, bucket: int, file_id: ObjectId) -> bool:
        """Remove a GridFS file: its file document, then its chunks (by ``_id`` when
        storage wrote it, see ``chunk_id``). False if there was no file document."""
        files, chunks = self.files(bucket), self.chunks(bucket)
        doc = files.find_one_and_delete({"_id": file_id})  # (FerretDB takes no projection here)
        if chunks.find_one({"_id": chunk_id(file_id, 0)}, {"_id": 1}) is None:
            chunks.delete_many({"files_id": file_id})  # another GridFS writer's file, or empty
            return doc is not None
        count = -(-int(doc["length"]) // int(doc["chunkSize"])) if doc else 0
        n = 0
        while chunks.delete_one({"_id": chunk_id(file_id, n)}).deleted_count or n < count:
            n += 1
        return doc is not None

    def close(self) -> None:
        self.client.close()


def settings_jobs(mongo: Mongo) -> str:
    return mongo.settings.jobs_collection


def chunk_id(files_id: ObjectId, n: int) -> str:
    """The ``_id`` storage gives chunk ``n`` of a file it writes (see ``GridWriter``)."""
    return f"{files_id}:{n}"


def now() -> datetime:
    """Current UTC time at the millisecond precision BSON keeps."""
    current = datetime.now(UTC)
    return current.replace(microsecond=current.microsecond // 1000 * 1000)
