"""Reads a ``multipart/form-data`` upload straight from the request stream: small text
fields in any order, and one file field whose bytes are streamed.

werkzeug's form parser spools big files to disk; here the body is fed block by block to
werkzeug's sans-IO ``MultipartDecoder``: ``open()`` reads up to the file part (collecting
the text fields before it), ``chunks()`` yields the file's bytes as they arrive (so an
upload flows to storage and never sits whole anywhere), ``finish()`` reads the text fields
after it. Unknown field names and repeated fields are refused.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import IO

from werkzeug.exceptions import HTTPException
from werkzeug.sansio.multipart import NEED_DATA, Data, Epilogue, Event, Field, File, MultipartDecoder

from gateway.errors import ApiError

READ_BLOCK = 64 * 1024
MAX_PARTS = 32
# Text fields sent along with the file (curl -F name=value): each, and all together.
MAX_FIELD_BYTES = 4 * 1024
MAX_FIELDS_BYTES = 64 * 1024
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
    yields its bytes; ``finish()`` reads the rest of the body. ``fields`` holds the text
    fields read so far. Errors are ApiError (400 for a malformed body or a field not in
    ``allowed``) or werkzeug's HTTPException (413 over the body limit, 400 when the
    client disconnects)."""

    def __init__(
        self, stream: IO[bytes], boundary: bytes, field: str = "file", allowed: Collection[str] = ()
    ) -> None:
        self.stream = stream
        self.field = field
        self.allowed = frozenset(allowed)
        self.fields: dict[str, str] = {}
        self.decoder = MultipartDecoder(
            boundary, max_form_memory_size=MAX_DECODER_BUFFER, max_parts=MAX_PARTS
        )
        self._eof = False
        self._done = False
        self._field_bytes = 0

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

    def _unknown(self, name: str) -> ApiError:
        known = ", ".join(sorted(self.allowed | {self.field}))
        return bad_request(f'unknown field "{name}": the fields are {known}')

    def _read_field(self, name: str) -> None:
        """The text field whose part just began (its Data events follow)."""
        if name not in self.allowed:
            raise self._unknown(name)
        if name in self.fields:
            raise bad_request(f'the field "{name}" is given twice')
        value = bytearray()
        while True:
            event = self._next()
            if not isinstance(event, Data):
                raise bad_request("malformed multipart body")
            value += event.data
            self._field_bytes += len(event.data)
            if len(value) > MAX_FIELD_BYTES or self._field_bytes > MAX_FIELDS_BYTES:
                raise bad_request(f'the field "{name}" is too long')
            if not event.more_data:
                break
        try:
            self.fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f'the field "{name}" is not UTF-8 text') from None

    def open(self) -> str:
        while True:
            event = self._next()
            if isinstance(event, File):
                if event.name != self.field:
                    raise self._unknown(event.name)
                return event.filename
            if isinstance(event, Field):
                self._read_field(event.name)
            elif isinstance(event, Epilogue):
                raise bad_request(f'missing multipart file field "{self.field}" (curl -F "file=@video.mp4")')

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

    def finish(self) -> dict[str, str]:
        """After the file: the text fields that follow it, to the end of the body."""
        if not self._done:
            raise RuntimeError("finish() before the file was read")
        while True:
            event = self._next()
            if isinstance(event, Epilogue):
                return self.fields
            if isinstance(event, File):
                raise bad_request(f'only one file may be sent (a second one came as "{event.name}")')
            if isinstance(event, Field):
                self._read_field(event.name)
