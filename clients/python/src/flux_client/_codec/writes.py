"""Upsert, UpsertStream, Delete and Snapshot: ids, vectors and attributes checked and encoded, and
the counts a write answers with as a ``WriteResult``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy.typing as npt

from flux_api.v1 import types_pb2, write_service_pb2
from flux_client._codec.fields import as_matrix, float_vectors
from flux_client._errors import invalid
from flux_client._types import Attributes, WriteResult


def upsert_request(
    index: str,
    ids: Sequence[str],
    vectors: npt.ArrayLike,
    attributes: Sequence[Attributes | None] | None,
    prefix: str = "",
) -> write_service_pb2.UpsertRequest:
    """An Upsert of ``ids`` with one vector (a row of ``vectors``) and, optionally, ``attributes`` each;
    ``prefix`` starts the field names of errors (``batches[3].``, for a stream)."""
    request = write_service_pb2.UpsertRequest(index=index, ids=_ids(ids, f"{prefix}ids"))
    matrix = as_matrix(vectors, f"{prefix}vectors")
    matrix = matrix.reshape(1, -1) if matrix.ndim == 1 else matrix
    if len(matrix) != len(request.ids):
        raise invalid(
            f"{prefix}vectors holds {len(matrix)} vectors for {len(request.ids)} ids; give one vector per id",
            f"{prefix}vectors",
            "COUNT_MISMATCH",
        )
    request.vectors.CopyFrom(float_vectors(matrix))
    if attributes is not None:
        if isinstance(attributes, Attributes) or len(attributes) != len(request.ids):
            raise invalid(
                f"{prefix}attributes must hold one entry (an Attributes or None) per id",
                f"{prefix}attributes",
                "COUNT_MISMATCH",
            )
        request.attributes.extend(_attributes(a, f"{prefix}attributes[{row}]") for row, a in enumerate(attributes))
    return request


Batch = tuple[Sequence[str], npt.ArrayLike] | tuple[Sequence[str], npt.ArrayLike, Any]


def stream_message(index: str, number: int, batch: Batch) -> write_service_pb2.UpsertStreamRequest:
    """Message ``number`` of an UpsertStream; errors name ``batches[number]...``."""
    if not isinstance(batch, tuple) or len(batch) not in (2, 3):
        raise invalid(f"batches[{number}] must be a tuple (ids, vectors) or (ids, vectors, attributes)", "batches")
    ids, vectors, *rest = batch
    request = upsert_request(index, ids, vectors, rest[0] if rest else None, f"batches[{number}].")
    return write_service_pb2.UpsertStreamRequest(
        index=request.index, ids=request.ids, vectors=request.vectors, attributes=request.attributes
    )


def stream_messages(
    index: str, batches: Iterable[Batch], failures: list[Exception]
) -> Iterator[write_service_pb2.UpsertStreamRequest]:
    """The messages of an UpsertStream, encoded as gRPC asks for them. A batch that cannot be encoded (or
    an iterator that raises) ends the stream there and lands in ``failures``, for the caller to raise once
    the call has ended: gRPC would otherwise cancel the call and hide why."""
    try:
        for number, batch in enumerate(batches):
            yield stream_message(index, number, batch)
    except Exception as exc:  # the caller's iterator may raise anything
        failures.append(exc)


def delete_request(index: str, ids: Sequence[str]) -> write_service_pb2.DeleteRequest:
    return write_service_pb2.DeleteRequest(index=index, ids=_ids(ids, "ids"))


def write_result(
    response: write_service_pb2.UpsertResponse
    | write_service_pb2.UpsertStreamResponse
    | write_service_pb2.DeleteResponse
    | write_service_pb2.SnapshotResponse,
) -> WriteResult:
    counts = {
        name: getattr(response, name)
        for name in ("inserted", "updated", "deleted", "not_found", "messages")
        if name in response.DESCRIPTOR.fields_by_name
    }
    return WriteResult(index=response.index, version=response.version, log_sequence=response.log_sequence, **counts)


def _ids(ids: Sequence[str], field: str) -> list[str]:
    if isinstance(ids, str | bytes):
        raise invalid(f"{field} must be a list of ids, not one string", field)
    listed = list(ids)
    for row, item in enumerate(listed):
        if not isinstance(item, str):
            raise invalid(
                f"{field}[{row}] must be a string, got {type(item).__name__}", f"{field}[{row}]", "INVALID_ID"
            )
    return listed


def _attributes(attributes: Attributes | None, field: str) -> types_pb2.ItemAttributes:
    if attributes is None:
        return types_pb2.ItemAttributes()
    if not isinstance(attributes, Attributes):
        raise invalid(f"{field} must be an Attributes or None", field, "INVALID_ATTRIBUTES")
    restricts = []
    for namespace, tokens in attributes.restricts.items():
        if isinstance(tokens, str):
            raise invalid(
                f"{field}.restricts[{namespace!r}] must be a list of tokens, e.g. [{tokens!r}]",
                field,
                "INVALID_ATTRIBUTES",
            )
        restricts.append(types_pb2.Restrict(namespace=namespace, tokens=list(tokens)))
    return types_pb2.ItemAttributes(restricts=restricts, crowding_tag=attributes.crowding_tag)
