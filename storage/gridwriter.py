"""Writes one GridFS file chunk by chunk, in the layout GridFSBucket reads.

pymongo's ``GridIn`` gathers up to 32 MiB of chunks in memory before its first insert, so
a file below that size would sit whole in the storage process. This writer keeps at most
``IN_FLIGHT`` + 1 batches of ``batch_bytes`` (1 MiB by default) plus one chunk per upload,
and the chunks reach the database while the client is still sending (on threads of their
own, so receiving and writing overlap). The file document (which makes the file visible)
is written last, so an unfinished upload is never readable; ``abort`` removes
the chunks already written.

A writer given an ``uploads`` collection keeps a marker there while it writes
(``{_id: file id, chunks: collection, touched_at}``, refreshed with every batch). A storage
process killed mid-upload leaves its marker behind, and the sweeper (storage/sweeper.py)
removes the chunks of markers left untouched for ``ORPHAN_UPLOAD_GRACE_SECONDS``. Whoever
deletes the marker (``delete_one`` counts exactly, on FerretDB too) owns the file: ``close``
writes the file document only if it deleted its marker itself, so a file whose chunks a
sweeper took never becomes visible.

Each chunk's ``_id`` is made from the file's id and the chunk's number (``chunk_id``), so a
chunk can be read or removed by ``_id`` alone. GridFS readers look chunks up by
``files_id`` and ``n`` and never by ``_id``, so the files stay ordinary GridFS files; but a
lookup by ``_id`` is the one query every MongoDB-compatible server answers from its
primary key (FerretDB's SQLite back end scans the whole collection for any other filter).
"""

from __future__ import annotations

import queue
import threading
from datetime import datetime
from typing import Any

from bson import Binary, ObjectId
from pymongo.collection import Collection

from storage.mongo import chunk_id, now

IN_FLIGHT = 2  # batches handed to the writing threads and not yet written
WRITERS = 2  # threads writing batches at once (the server decodes them in parallel)


class OrphanedUpload(Exception):
    """The sweeper took this upload for abandoned and removed its chunks."""


class GridWriter:
    """One file being written. The database writes run on ``WRITERS`` threads of their own,
    at most ``IN_FLIGHT`` batches behind ``write``: receiving the next bytes overlaps
    writing the last ones (and the server decodes two batches at once), and a database
    error surfaces at the next ``write`` or at ``close``. Chunks are independent documents,
    so the order in which batches land does not matter; the file document comes last."""

    def __init__(
        self,
        files: Collection,
        chunks: Collection,
        filename: str,
        metadata: dict[str, Any],
        chunk_size: int,
        batch_bytes: int = 1024 * 1024,
        uploads: Collection | None = None,
    ) -> None:
        self.files = files
        self.uploads = uploads
        self.chunks = chunks
        self.filename = filename
        self.metadata = metadata
        self.chunk_size = chunk_size
        self.batch_bytes = max(batch_bytes, chunk_size)
        self.id = ObjectId()
        self.length = 0
        self.upload_date: datetime | None = None
        self._buffer = bytearray()
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._n = 0
        self._batches: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=IN_FLIGHT)
        self._writers: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._aborting = False
        if uploads is not None:
            uploads.insert_one({"_id": self.id, "chunks": chunks.name, "touched_at": now()})

    def write(self, data: bytes) -> None:
        self._raise_if_failed()
        self._buffer += data
        self.length += len(data)
        if len(self._buffer) >= self.chunk_size:
            view = memoryview(self._buffer)
            full = len(self._buffer) // self.chunk_size * self.chunk_size
            for start in range(0, full, self.chunk_size):
                self._add(bytes(view[start : start + self.chunk_size]))
            view.release()
            del self._buffer[:full]
        if self._pending_bytes >= self.batch_bytes:
            self._flush()

    def close(self) -> None:
        """Write what is left, wait for every chunk to be written, then the file document."""
        if self._buffer:
            self._add(bytes(self._buffer))
            self._buffer.clear()
        self._flush()
        self._stop_writers()
        self._raise_if_failed()
        if self.uploads is not None and self.uploads.delete_one({"_id": self.id}).deleted_count != 1:
            raise OrphanedUpload(f"upload {self.id} was left untouched too long and its chunks removed")
        self.upload_date = now()
        self.files.insert_one(
            {
                "_id": self.id,
                "length": self.length,
                "chunkSize": self.chunk_size,
                "uploadDate": self.upload_date,
                "filename": self.filename,
                "metadata": self.metadata,
            }
        )

    def abort(self) -> None:
        """Remove every chunk written so far (the file document was never written)."""
        self._aborting = True  # batches still queued are dropped, not written
        self._pending.clear()
        self._buffer.clear()
        self._stop_writers()
        for n in range(self._n):
            self.chunks.delete_one({"_id": chunk_id(self.id, n)})
        if self.uploads is not None:
            self.uploads.delete_one({"_id": self.id})

    def _add(self, data: bytes) -> None:
        self._pending.append(
            {"_id": chunk_id(self.id, self._n), "files_id": self.id, "n": self._n, "data": Binary(data)}
        )
        self._pending_bytes += len(data)
        self._n += 1

    def _flush(self) -> None:
        if not self._pending:
            return
        if not self._writers:
            self._writers = [
                threading.Thread(target=self._write_batches, name="gridfs-writer", daemon=True)
                for _ in range(WRITERS)
            ]
            for writer in self._writers:
                writer.start()
        if self.uploads is not None:
            self.uploads.update_one({"_id": self.id}, {"$set": {"touched_at": now()}})
        self._batches.put(self._pending)  # waits while IN_FLIGHT batches are not written yet
        self._pending = []
        self._pending_bytes = 0

    def _write_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._error is None and not self._aborting:
                try:
                    self.chunks.insert_many(batch, ordered=True)
                except BaseException as error:  # noqa: BLE001 - raised on the caller's thread
                    self._error = error

    def _stop_writers(self) -> None:
        for _ in self._writers:
            self._batches.put(None)
        for writer in self._writers:
            writer.join()
        self._writers = []

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
