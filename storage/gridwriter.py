"""Writes one GridFS file chunk by chunk, in the layout GridFSBucket reads.

pymongo's ``GridIn`` gathers up to 32 MiB of chunks in memory before its first insert, so
a file below that size would sit whole in the storage process. This writer keeps at most
``batch_bytes`` (1 MiB by default) plus one chunk per upload, and the chunks reach the
database while the client is still sending. The file document (which makes the file
visible) is written last, so an unfinished upload is never readable; ``abort`` removes
the chunks already written.

Each chunk's ``_id`` is made from the file's id and the chunk's number (``chunk_id``), so a
chunk can be read or removed by ``_id`` alone. GridFS readers look chunks up by
``files_id`` and ``n`` and never by ``_id``, so the files stay ordinary GridFS files; but a
lookup by ``_id`` is the one query every MongoDB-compatible server answers from its
primary key (FerretDB's SQLite back end scans the whole collection for any other filter).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import Binary, ObjectId
from pymongo.collection import Collection

from storage.mongo import chunk_id, now


class GridWriter:
    def __init__(
        self,
        files: Collection,
        chunks: Collection,
        filename: str,
        metadata: dict[str, Any],
        chunk_size: int,
        batch_bytes: int = 1024 * 1024,
    ) -> None:
        self.files = files
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

    def write(self, data: bytes) -> None:
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
        """Write what is left and the file document."""
        if self._buffer:
            self._add(bytes(self._buffer))
            self._buffer.clear()
        self._flush()
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
        self._pending.clear()
        self._buffer.clear()
        for n in range(self._n):
            self.chunks.delete_one({"_id": chunk_id(self.id, n)})

    def _add(self, data: bytes) -> None:
        self._pending.append(
            {"_id": chunk_id(self.id, self._n), "files_id": self.id, "n": self._n, "data": Binary(data)}
        )
        self._pending_bytes += len(data)
        self._n += 1

    def _flush(self) -> None:
        if self._pending:
            self.chunks.insert_many(self._pending, ordered=True)
            self._pending = []
            self._pending_bytes = 0
