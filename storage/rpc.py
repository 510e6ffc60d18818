"""The gRPC face of storage's MongoDB data, shared by StorageService and JobService: ids
from requests, MongoDB errors as UNAVAILABLE, datetimes as protobuf Timestamps."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pymongo.errors
from bson import ObjectId
from bson.errors import InvalidId
from google.protobuf.timestamp_pb2 import Timestamp

log = logging.getLogger("storage.rpc")


def timestamp(value: datetime | None) -> Timestamp:
    result = Timestamp()
    if value is not None:
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        result.FromDatetime(value)
    return result


def parse_id(value: str, what: str, context: grpc.ServicerContext) -> ObjectId:
    """An ObjectId from its 24-character hex form; INVALID_ARGUMENT otherwise."""
    if not value:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is required")
    try:
        if len(value) != 24:
            raise InvalidId(value)
        return ObjectId(value)
    except (InvalidId, TypeError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is malformed")
        raise  # unreachable: abort raises


@contextlib.contextmanager
def unavailable_on_mongo_error(context: grpc.ServicerContext) -> Iterator[None]:
    """MongoDB errors leave as UNAVAILABLE (a transient outage), never as INTERNAL."""
    try:
        yield
    except (pymongo.errors.ConnectionFailure, pymongo.errors.ExecutionTimeout) as error:
        log.warning("MongoDB unavailable", extra={"error": repr(error)})
        context.abort(grpc.StatusCode.UNAVAILABLE, "storage database unavailable")
