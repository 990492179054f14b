"""The write path over gRPC: decode, hand to the index's Writer, encode what it did. No error handling here."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import grpc

from flux.api import convert
from flux.core.serving.catalog import Catalog
from flux.core.writes.checks import immutable_message
from flux.core.writes.commit import Ticket
from flux.core.writes.writer import Applied, Writer
from flux_api.v1 import types_pb2, write_service_pb2_grpc
from flux_api.v1 import write_service_pb2 as pb
from flux_core.backend import Matrix
from flux_core.errors import FailedPrecondition, InvalidArgument, Reason
from flux_core.storage.attributes import ItemAttributes

#: Batches of one stream in the log's queue at once: enough to fill group commits, bounded memory.
_Answer = TypeVar("_Answer")
_WINDOW = 64

Batch = pb.UpsertRequest | pb.UpsertStreamRequest


class WriteServicer(write_service_pb2_grpc.WriteServiceServicer):
    def __init__(self, catalog: Catalog, writers: Mapping[str, Writer]) -> None:
        self._catalog = catalog
        self._writers = writers

    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> pb.UpsertResponse:
        writer = self._writer(request.index)
        done: Applied = writer.submit_upsert(*_items(request, "")).wait()
        return _written(pb.UpsertResponse, writer, done, inserted=done.inserted, updated=done.updated)

    def UpsertStream(
        self, request_iterator: Iterator[pb.UpsertStreamRequest], context: grpc.ServicerContext
    ) -> pb.UpsertStreamResponse:
        writer: Writer | None = None
        pending: deque[Ticket] = deque()
        answer = pb.UpsertStreamResponse()

        def settle(ticket: Ticket) -> None:
            done: Applied = ticket.wait()
            answer.version, answer.log_sequence = done.version, done.sequence
            answer.inserted += done.inserted
            answer.updated += done.updated
            answer.messages += 1

        try:
            for number, message in enumerate(request_iterator):
                field = f"messages[{number}]."
                if writer is None:
                    writer = self._writer(message.index)
                elif message.index != writer.name:
                    raise InvalidArgument(
                        f"{field}index is {message.index!r}, but this stream writes to {writer.name!r}; "
                        "one stream writes one index",
                        field=f"{field}index",
                        reason=Reason.STREAM_INDEX_MISMATCH,
                    )
                pending.append(writer.submit_upsert(*_items(message, field), field=field))
                if len(pending) >= _WINDOW:
                    settle(pending.popleft())
        except grpc.RpcError:  # the client cancelled or its deadline passed: nobody waits for an answer
            return answer  # (the batches it sent are committed all the same)
        if writer is None:
            raise InvalidArgument(
                "the stream held no message; send at least one batch", field="messages", reason=Reason.EMPTY_BATCH
            )
        while pending:
            settle(pending.popleft())
        answer.index = writer.name
        return answer

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        writer = self._writer(request.index)
        done = writer.delete(list(request.ids))
        return _written(pb.DeleteResponse, writer, done, deleted=done.deleted, not_found=done.missing)

    def Snapshot(self, request: pb.SnapshotRequest, context: grpc.ServicerContext) -> pb.SnapshotResponse:
        writer = self._writer(request.index)
        version, sequence = writer.snapshot()
        return pb.SnapshotResponse(index=writer.name, version=version, log_sequence=sequence)

    def _writer(self, name: str) -> Writer:
        writer = self._writers.get(name)
        if writer is not None:
            return writer
        with self._catalog.manager(name).acquire() as index:  # NOT_FOUND, UNAVAILABLE, ... as for a search
            backend = index.backend
        if not type(backend).capabilities.mutable:
            raise FailedPrecondition(
                immutable_message(name, backend.name), field="index", reason=Reason.INDEX_IMMUTABLE
            )
        raise FailedPrecondition(
            f"index {name!r} does not take writes; set writes.enabled: true in its config",
            field="index",
            reason=Reason.WRITES_DISABLED,
        )


def _items(request: Batch, field: str) -> tuple[list[str], Matrix, list[ItemAttributes] | None]:
    """The ids, vectors and attributes of one batch; ``field`` prefixes the field names in errors."""
    if not request.ids:  # before the vectors, which are then empty too
        raise InvalidArgument(
            f"{field}ids is empty; send at least one id", field=f"{field}ids", reason=Reason.EMPTY_BATCH
        )
    vectors = convert.decode_vectors(request.vectors, f"{field}vectors")
    attributes = (
        [_attributes(a, f"{field}attributes[{n}]") for n, a in enumerate(request.attributes)]
        if request.attributes
        else None
    )
    return list(request.ids), vectors, attributes


def _attributes(message: types_pb2.ItemAttributes, field: str) -> ItemAttributes:
    return ItemAttributes.create(
        [(r.namespace, r.tokens) for r in message.restricts], message.crowding_tag, field=field
    )


def _written(response: Callable[..., _Answer], writer: Writer, done: Applied, **counts: int) -> _Answer:
    """A write's answer: the index, the version and the log record that hold it, and what it did."""
    return response(index=writer.name, version=done.version, log_sequence=done.sequence, **counts)
