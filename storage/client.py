"""Small helpers for callers of StorageService (gateway, converter, tests): turn a header
and an iterator of byte chunks into the Upload request stream, and split a Download
response stream into its FileInfo and the chunks that follow."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from video2mp3.storage.v1 import storage_pb2


def upload_requests(
    header: storage_pb2.UploadHeader, chunks: Iterable[bytes]
) -> Iterator[storage_pb2.UploadRequest]:
    """Header, chunks, then the finish message with the size and SHA-256 of what was sent.
    An exception raised by ``chunks`` cancels the call, and no finish is sent."""
    yield storage_pb2.UploadRequest(header=header)
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        if chunk:
            digest.update(chunk)
            size += len(chunk)
            yield storage_pb2.UploadRequest(chunk=chunk)
    yield storage_pb2.UploadRequest(finish=storage_pb2.UploadFinish(size=size, sha256=digest.hexdigest()))


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
