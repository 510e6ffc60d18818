"""Files in and out of StorageService, for every caller (gateway, converter, tests,
benchmarks): the Upload request stream and the split of a Download response stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from video2mp3.storage.v1 import storage_pb2


class UploadStream:
    """The request stream of ``StorageService.Upload``: the header, the chunks, then the
    finish message with the size and SHA-256 of what was sent.

    When ``chunks`` raises, the stream ends *without* the finish message, so storage keeps
    nothing, and the exception is kept in ``error`` for the caller to raise once the call
    has ended (cancelling the call is not enough: a gRPC Python server may see a client's
    cancellation as a clean end of stream, grpc/grpc#33038; that is why the contract has a
    finish message). An iterator, as gRPC wants a request stream to be.
    """

    def __init__(self, header: storage_pb2.UploadHeader, chunks: Iterable[bytes]) -> None:
        self.header = header
        self.chunks = chunks
        self.size = 0
        self.error: Exception | None = None
        self._requests = self._generate()

    def __iter__(self) -> Iterator[storage_pb2.UploadRequest]:
        return self

    def __next__(self) -> storage_pb2.UploadRequest:
        return next(self._requests)

    def _generate(self) -> Iterator[storage_pb2.UploadRequest]:
        yield storage_pb2.UploadRequest(header=self.header)
        digest = hashlib.sha256()
        try:
            for chunk in self.chunks:
                if chunk:
                    digest.update(chunk)
                    self.size += len(chunk)
                    yield storage_pb2.UploadRequest(chunk=chunk)
        except Exception as error:  # noqa: BLE001 - kept for the caller, who raises it
            self.error = error
            return
        finish = storage_pb2.UploadFinish(size=self.size, sha256=digest.hexdigest())
        yield storage_pb2.UploadRequest(finish=finish)


def split_download(
    responses: Iterator[storage_pb2.DownloadResponse],
) -> tuple[storage_pb2.FileInfo, Iterator[bytes]]:
    """Read the first message (raises the call's ``grpc.RpcError`` when the server refused,
    e.g. NOT_FOUND) and return it with an iterator over the data chunks."""
    first = next(responses)
    if first.WhichOneof("payload") != "file":
        raise ValueError("a download must start with the file's description")

    def chunks() -> Iterator[bytes]:
        for response in responses:
            yield response.chunk

    return first.file, chunks()
