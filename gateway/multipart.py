"""Reads one file field of a ``multipart/form-data`` body straight from the request stream.

werkzeug's form parser spools big files to disk; here the body is fed block by block to
werkzeug's sans-IO ``MultipartDecoder`` and the file's bytes come out as an iterator of
chunks, so an upload flows to storage while it arrives and never sits whole anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from werkzeug.exceptions import HTTPException
from werkzeug.sansio.multipart import NEED_DATA, Data, Epilogue, Event, Field, File, MultipartDecoder

from gateway.errors import ApiError

READ_BLOCK = 64 * 1024
MAX_PARTS = 16
# Small text fields sent along with the file (curl -F name=value) are skipped, within this size.
MAX_FIELD_BYTES = 64 * 1024
# Bound on the decoder's own buffer (one read block plus what it holds back near a boundary).
MAX_DECODER_BUFFER = 1024 * 1024


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message)


class BodyEndedEarly(ApiError):
    """The body stopped before the multipart end: the client went away (or cut it short)."""

    def __init__(self) -> None:
        super().__init__(400, "invalid_argument", "the multipart body ended early")


class MultipartFile:
    """``open()`` finds the part named ``field`` and returns its filename; ``chunks()`` then
    yields its bytes. Errors are ApiError (400 for a malformed body) or werkzeug's
    HTTPException (413 over the body limit, 400 when the client disconnects)."""

    def __init__(self, stream: IO[bytes], boundary: bytes, field: str = "file") -> None:
        self.stream = stream
        self.field = field
        self.decoder = MultipartDecoder(
            boundary, max_form_memory_size=MAX_DECODER_BUFFER, max_parts=MAX_PARTS
        )
        self._eof = False
        self._done = False

    def _next(self) -> Event:
        while True:
            try:
                event = self.decoder.next_event()
            except (ValueError, HTTPException) as error:
                if self._eof:  # the decoder's "unexpected end" once the body stopped short
                    raise BodyEndedEarly from error
                raise bad_request("malformed multipart body") from error
            if event is not NEED_DATA:
                return event
            if self._eof:
                raise BodyEndedEarly
            block = self.stream.read(READ_BLOCK)
            if not block:
                self._eof = True
                self.decoder.receive_data(None)
            else:
                self.decoder.receive_data(block)

    def open(self) -> str:
        skipped = 0
        while True:
            event = self._next()
            if isinstance(event, File) and event.name == self.field:
                return event.filename
            if isinstance(event, Epilogue):
                raise bad_request(f'missing multipart file field "{self.field}" (curl -F "file=@video.mp4")')
            if isinstance(event, Field | File):
                skipped += 1
            elif isinstance(event, Data):
                skipped += len(event.data)
                if skipped > MAX_FIELD_BYTES:
                    raise bad_request(f'the body has too much besides the "{self.field}" field')

    def chunks(self, size: int = 256 * 1024) -> Iterator[bytes]:
        buffer = bytearray()
        while not self._done:
            event = self._next()
            if not isinstance(event, Data):
                raise bad_request("malformed multipart body")
            buffer += event.data
            if not event.more_data:
                self._done = True
            while len(buffer) >= size:
                yield bytes(buffer[:size])
                del buffer[:size]
        if buffer:
            yield bytes(buffer)
