"""The asyncio client: the same surface as ``FluxClient``, on ``grpc.aio``."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal, overload

import grpc
import grpc.aio
import numpy.typing as npt

from flux_api.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    vector_service_pb2,
    vector_service_pb2_grpc,
    write_service_pb2,
    write_service_pb2_grpc,
)
from flux_client import _channel, _codec, _items
from flux_client._channel import TLS
from flux_client._errors import FluxError, from_rpc_error, invalid
from flux_client._items import Items
from flux_client._types import Attributes, Filter, IndexInfo, SearchResult, ServerInfo, WriteResult


class AsyncFluxClient:
    """``FluxClient`` for asyncio code: every method is a coroutine; the arguments are the same.

    Create it inside the event loop that will use it (``async with AsyncFluxClient(...)``).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        retries: int = 4,
        wait_for_ready: bool = False,
        load_balancing: str = "round_robin",
        tls: TLS | bool = False,
        token: str | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        settings = _channel.settings(
            target,
            timeout=timeout,
            retries=retries,
            wait_for_ready=wait_for_ready,
            load_balancing=load_balancing,
            tls=tls,
            token=token,
            channel_options=channel_options,
        )
        self.target = target
        self.timeout = timeout
        if settings.credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=settings.options)
        else:
            self._channel = grpc.aio.secure_channel(target, settings.credentials, options=settings.options)
        self._metadata = settings.metadata or None
        self._vectors = vector_service_pb2_grpc.VectorServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self._writes = write_service_pb2_grpc.WriteServiceStub(self._channel)
        # Queries go out as bytes encoded by _codec.stream_queries (the shared fields once per stream).
        self._stream_search = self._channel.stream_stream(
            _codec.STREAM_SEARCH, response_deserializer=vector_service_pb2.StreamSearchResponse.FromString
        )

    async def search(
        self,
        index: str,
        vectors: npt.ArrayLike,
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        filter: Filter | None = None,
        version: int = 0,
        routing_key: str = "",
        timeout: float | None = None,
    ) -> SearchResult:
        """The k nearest neighbours of one vector (1-D) or of each row of a matrix (2-D, one call)."""
        array = _codec.as_matrix(vectors, "vectors")
        if array.ndim == 2:
            return await self.batch_search(
                index, array, k, params=params, filter=filter, version=version, routing_key=routing_key, timeout=timeout
            )
        response = await self._call(
            self._vectors.Search,
            _codec.search_request(index, array, k, params, filter=filter, version=version, routing_key=routing_key),
            timeout,
        )
        return _codec.result(response, k)

    async def batch_search(
        self,
        index: str,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        ks: Sequence[int] | None = None,
        filter: Filter | None = None,
        version: int = 0,
        routing_key: str = "",
        timeout: float | None = None,
    ) -> SearchResult:
        """The neighbours of every row of ``queries`` in one call; ``ks`` gives each row its own k."""
        matrix = _codec.as_matrix(queries, "queries")
        if matrix.ndim != 2:
            raise invalid(f"queries must be a 2-D matrix with one query per row, got shape {matrix.shape}", "queries")
        request = _codec.batch_request(
            index, matrix, k, params, ks, filter=filter, version=version, routing_key=routing_key
        )
        response = await self._call(self._vectors.BatchSearch, request, timeout)
        return _codec.batch_result(response, max([k, *(ks or ())]))

    @overload
    def stream_search(
        self,
        index: str,
        queries: _codec.Queries | AsyncIterable[npt.ArrayLike],
        k: int = ...,
        *,
        params: Mapping[str, float] | None = ...,
        filter: Filter | None = ...,
        version: int = ...,
        routing_key: str = ...,
        timeout: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncIterator[SearchResult]: ...

    @overload
    def stream_search(
        self,
        index: str,
        queries: _codec.Queries | AsyncIterable[npt.ArrayLike],
        k: int = ...,
        *,
        params: Mapping[str, float] | None = ...,
        filter: Filter | None = ...,
        version: int = ...,
        routing_key: str = ...,
        timeout: float | None = ...,
        return_exceptions: Literal[True],
    ) -> AsyncIterator[SearchResult | FluxError]: ...

    def stream_search(
        self,
        index: str,
        queries: _codec.Queries | AsyncIterable[npt.ArrayLike],
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        filter: Filter | None = None,
        version: int = 0,
        routing_key: str = "",
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> AsyncIterator[SearchResult] | AsyncIterator[SearchResult | FluxError]:
        """``FluxClient.stream_search`` as an async iterator: ``async for ids, distances in
        flux.stream_search(index, queries, k=10)``. ``queries`` may also be an async iterable."""
        template = _codec.stream_template(index, k, params, filter=filter, version=version, routing_key=routing_key)
        return self._stream_results(template, queries, k, timeout, return_exceptions)

    async def _stream_results(
        self,
        template: bytes,
        queries: _codec.Queries | AsyncIterable[npt.ArrayLike],
        k: int,
        timeout: float | None,
        return_exceptions: bool,
    ) -> AsyncIterator[SearchResult | FluxError]:
        """The answers of one stream, started on the first ``__anext__``."""
        failures: list[Exception] = []
        call = self._stream_search(_queries(template, queries, failures), timeout=timeout, metadata=self._metadata)
        try:
            number = 0
            async for response in call:
                answer = _codec.stream_result(response, k, number)
                if isinstance(answer, FluxError) and not return_exceptions:
                    raise answer
                yield answer
                number += 1
        except grpc.RpcError as error:
            if failures:
                raise failures[0] from None
            raise from_rpc_error(error) from None
        finally:
            call.cancel()  # nothing once the stream has ended; ends it when the caller stops early
        if failures:
            raise failures[0]

    async def search_by_id(
        self,
        index: str,
        item_id: str,
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        filter: Filter | None = None,
        version: int = 0,
        routing_key: str = "",
        timeout: float | None = None,
    ) -> SearchResult:
        """The k nearest neighbours of an item already in the index, the item itself excluded."""
        request = _codec.by_id_request(
            index, item_id, k, params, filter=filter, version=version, routing_key=routing_key
        )
        return _codec.result(await self._call(self._vectors.SearchById, request, timeout), k)

    async def get_items(
        self, index: str, ids: Sequence[str], *, version: int = 0, timeout: float | None = None
    ) -> Items:
        """The stored vectors of ``ids`` (VectorService.GetItems, reader role): ``(ids, vectors)``, the ids the
        index holds in request order and one vector per row. Ids it does not hold are left out, not an error."""
        request = _items.items_request(index, ids, version)
        return _items.items(await self._call(self._vectors.GetItems, request, timeout))

    async def describe(self, index: str, *, timeout: float | None = None) -> IndexInfo:
        """What the server says of ``index``: backend, dimension, metric, count, version, state."""
        response = await self._call(self._admin.GetIndex, admin_service_pb2.GetIndexRequest(name=index), timeout)
        return _codec.index_info(response.index)

    async def list_indexes(self, *, timeout: float | None = None) -> list[IndexInfo]:
        """Every index the server is configured to serve, by name."""
        response = await self._call(self._admin.ListIndexes, admin_service_pb2.ListIndexesRequest(), timeout)
        return [_codec.index_info(i) for i in response.indexes]

    async def describe_index(self, index: str, *, routing_key: str = "", timeout: float | None = None) -> IndexInfo:
        """What a caller with the reader role may know of ``index`` (VectorService.DescribeIndex): backend,
        dimension, metric, count, version, default search params, capabilities and state. ``describe`` tells
        an admin more. For an alias, the index of the arm ``routing_key`` selects (``alias`` names the alias)."""
        request = vector_service_pb2.DescribeIndexRequest(index=index, routing_key=routing_key)
        return _codec.index_description(await self._call(self._vectors.DescribeIndex, request, timeout))

    async def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """The server's contract release, software version and installed backends (reader role)."""
        request = vector_service_pb2.GetServerInfoRequest()
        return _codec.server_info(await self._call(self._vectors.GetServerInfo, request, timeout))

    async def upsert(
        self,
        index: str,
        ids: Sequence[str],
        vectors: npt.ArrayLike,
        *,
        attributes: Sequence[Attributes | None] | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        """Insert items, or replace those whose ids the index holds: one row of ``vectors`` per id (a 1-D
        vector for one id), and optionally one ``Attributes`` (or None) per id. Answers once the write is
        durable and visible to searches; ``inserted`` and ``updated`` count what it did. Never re-sent
        behind the caller's back; resending one whose answer was lost is safe (writes are idempotent)."""
        request = _codec.upsert_request(index, ids, vectors, attributes)
        return _codec.write_result(await self._call(self._writes.Upsert, request, timeout))

    async def upsert_stream(
        self,
        index: str,
        batches: Iterable[_codec.Batch] | AsyncIterable[_codec.Batch],
        *,
        timeout: float | None = None,
    ) -> WriteResult:
        """A bulk load in one call (UpsertStream): ``batches`` (an iterable or an async iterable) yields
        ``(ids, vectors)`` or ``(ids, vectors, attributes)`` tuples, encoded and sent as they come, so a
        generator can stream more than fits in memory. Answers once every batch is durable and applied;
        ``messages`` counts the batches. When a batch is refused (by the server, or here before it is sent,
        its fields named ``batches[n]...``), the batches before it may have been applied."""
        failures: list[Exception] = []
        messages = _messages(index, batches, failures)
        try:
            response = await self._call(self._writes.UpsertStream, messages, timeout)
        except FluxError:
            if failures:
                raise failures[0] from None
            raise
        if failures:
            raise failures[0]
        return _codec.write_result(response)

    async def delete(self, index: str, ids: Sequence[str], *, timeout: float | None = None) -> WriteResult:
        """Remove items so that no search returns them again; ``deleted`` and ``not_found`` count the ids."""
        return _codec.write_result(await self._call(self._writes.Delete, _codec.delete_request(index, ids), timeout))

    async def snapshot(self, index: str, *, timeout: float | None = None) -> WriteResult:
        """Write the index as it is now as its next version and shorten its log; ``version`` is that version."""
        request = write_service_pb2.SnapshotRequest(index=index)
        return _codec.write_result(await self._call(self._writes.Snapshot, request, timeout))

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncFluxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncFluxClient({self.target!r}, timeout={self.timeout})"

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


async def _messages(
    index: str, batches: Iterable[_codec.Batch] | AsyncIterable[_codec.Batch], failures: list[Exception]
) -> AsyncIterator[write_service_pb2.UpsertStreamRequest]:
    """``_codec.stream_messages`` for grpc.aio, from a plain or an async iterable of batches."""
    if not isinstance(batches, AsyncIterable):
        for message in _codec.stream_messages(index, batches, failures):
            yield message
        return
    number = 0
    try:
        async for batch in batches:
            yield _codec.stream_message(index, number, batch)
            number += 1
    except Exception as exc:  # the caller's iterator may raise anything
        failures.append(exc)


async def _queries(
    template: bytes, queries: _codec.Queries | AsyncIterable[npt.ArrayLike], failures: list[Exception]
) -> AsyncIterator[bytes]:
    """``_codec.stream_queries`` for grpc.aio, from a plain or an async iterable of vectors."""
    if not isinstance(queries, AsyncIterable):
        for message in _codec.stream_queries(template, queries, failures):
            yield message
        return
    number = 0
    try:
        async for vector in queries:
            yield _codec.query_message(template, number, vector)
            number += 1
    except Exception as exc:  # the caller's iterator may raise anything
        failures.append(exc)
