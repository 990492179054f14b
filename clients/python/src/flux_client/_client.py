"""The synchronous client: numpy in, numpy out, production defaults on the channel."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import grpc
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


class FluxClient:
    """A connection to a Flux server, or through a ``dns:///`` target to all its replicas.

    ``timeout`` is the default deadline of every call in seconds (each method takes its own
    ``timeout`` too); retries count against it. ``retries`` (0 to 4) re-sends calls that
    failed with UNAVAILABLE (a replica restarting, an index still loading) or that a server
    shutting down cancelled, with backoff, through gRPC's own retry support.
    ``wait_for_ready`` makes calls wait, up to their deadline, for a server to come up
    instead of failing at once when none is reachable.
    ``load_balancing`` is ``round_robin`` (spread calls over every resolved address) or
    ``pick_first``. ``tls`` turns on TLS (``True`` for the system's trust store, or a
    ``TLS``); ``token`` is sent as ``authorization: Bearer <token>`` with every call.
    ``channel_options`` are extra gRPC channel arguments, overriding the client's own.

    Failures raise ``flux_client.FluxError`` subclasses. The client is thread-safe; share one.
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
            self._channel = grpc.insecure_channel(target, options=settings.options)
        else:
            self._channel = grpc.secure_channel(target, settings.credentials, options=settings.options)
        #: The client's channel, with its TLS, token and retries, for stubs of other services
        #: (``WriteServiceStub(client.channel)``, gRPC health): every call on it carries the token.
        self.channel: grpc.Channel = (
            grpc.intercept_channel(self._channel, _channel.WithMetadata(settings.metadata))
            if settings.metadata
            else self._channel
        )
        self._vectors = vector_service_pb2_grpc.VectorServiceStub(self.channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        self._writes = write_service_pb2_grpc.WriteServiceStub(self.channel)
        # Queries go out as bytes encoded by _codec.stream_queries (the shared fields once per stream).
        self._stream_search = self.channel.stream_stream(
            _codec.STREAM_SEARCH, response_deserializer=vector_service_pb2.StreamSearchResponse.FromString
        )

    def search(
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
        """The k nearest neighbours of one vector (1-D in, 1-D out) or of each row of a matrix (2-D, one call).

        ``params`` are the backend's search knobs, e.g. ``{"ef": 128}`` for hnsw. ``filter``
        narrows the results (see ``Filter``). ``version`` answers from that loaded version
        instead of the active one. ``routing_key`` (e.g. a hash of the user id) sends requests
        with the same key to the same arm when ``index`` names an alias that splits traffic.
        The other search methods take the same keywords.
        """
        array = _codec.as_matrix(vectors, "vectors")
        if array.ndim == 2:
            return self.batch_search(
                index, array, k, params=params, filter=filter, version=version, routing_key=routing_key, timeout=timeout
            )
        response = self._call(
            self._vectors.Search,
            _codec.search_request(index, array, k, params, filter=filter, version=version, routing_key=routing_key),
            timeout,
        )
        return _codec.result(response, k)

    def batch_search(
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
        """The neighbours of every row of ``queries`` in one call; ``ks`` gives each row its own k.

        Returns 2-D arrays with one row per query, as wide as the largest k.
        """
        matrix = _codec.as_matrix(queries, "queries")
        if matrix.ndim != 2:
            raise invalid(f"queries must be a 2-D matrix with one query per row, got shape {matrix.shape}", "queries")
        request = _codec.batch_request(
            index, matrix, k, params, ks, filter=filter, version=version, routing_key=routing_key
        )
        response = self._call(self._vectors.BatchSearch, request, timeout)
        return _codec.batch_result(response, max([k, *(ks or ())]))

    @overload
    def stream_search(
        self,
        index: str,
        queries: _codec.Queries,
        k: int = ...,
        *,
        params: Mapping[str, float] | None = ...,
        filter: Filter | None = ...,
        version: int = ...,
        routing_key: str = ...,
        timeout: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> Iterator[SearchResult]: ...

    @overload
    def stream_search(
        self,
        index: str,
        queries: _codec.Queries,
        k: int = ...,
        *,
        params: Mapping[str, float] | None = ...,
        filter: Filter | None = ...,
        version: int = ...,
        routing_key: str = ...,
        timeout: float | None = ...,
        return_exceptions: Literal[True],
    ) -> Iterator[SearchResult | FluxError]: ...

    def stream_search(
        self,
        index: str,
        queries: _codec.Queries,
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        filter: Filter | None = None,
        version: int = 0,
        routing_key: str = "",
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> Iterator[SearchResult] | Iterator[SearchResult | FluxError]:
        """The k nearest neighbours of each query, over one StreamSearch call: for many queries, far
        cheaper for the server than a ``search`` each, and answers come as soon as each is found.

        ``queries`` is a 2-D array (one query per row) or any iterable of 1-D vectors, a generator
        say, read as gRPC sends them: the stream can carry more queries than fit in memory, and
        HTTP/2 flow control keeps the client from running far ahead of the answers read. Yields one
        ``SearchResult`` (1-D arrays, as ``search`` returns for one vector) per query, in the order of
        the queries. Iterate to the end, or close the iterator to cancel the stream.

        A query that fails raises, when its turn comes, the error ``search`` would raise for it
        (``DimensionMismatch``, ``KOutOfRange``, ...), which ends the iteration. With
        ``return_exceptions`` the error is yielded in its place instead and the stream goes on.
        A query that cannot be encoded raises its error once the queries before it are answered.
        ``timeout`` is the deadline of the whole stream in seconds; by default it has none (the
        client's ``timeout`` is meant for one call). The other keywords are ``search``'s, for every query.
        """
        template = _codec.stream_template(index, k, params, filter=filter, version=version, routing_key=routing_key)
        return self._stream_results(template, queries, k, timeout, return_exceptions)

    def _stream_results(
        self, template: bytes, queries: _codec.Queries, k: int, timeout: float | None, return_exceptions: bool
    ) -> Iterator[SearchResult | FluxError]:
        """The answers of one stream, started on the first ``next``."""
        failures: list[Exception] = []
        call = self._stream_search(_codec.stream_queries(template, queries, failures), timeout=timeout)
        try:
            for number, response in enumerate(call):
                answer = _codec.stream_result(response, k, number)
                if isinstance(answer, FluxError) and not return_exceptions:
                    raise answer
                yield answer
        except grpc.RpcError as error:
            if failures:
                raise failures[0] from None
            raise from_rpc_error(error) from None
        finally:
            call.cancel()  # nothing once the stream has ended; ends it when the caller stops early
        if failures:
            raise failures[0]

    def search_by_id(
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
        response = self._call(
            self._vectors.SearchById,
            _codec.by_id_request(index, item_id, k, params, filter=filter, version=version, routing_key=routing_key),
            timeout,
        )
        return _codec.result(response, k)

    def get_items(self, index: str, ids: Sequence[str], *, version: int = 0, timeout: float | None = None) -> Items:
        """The stored vectors of ``ids`` (VectorService.GetItems, reader role): ``(ids, vectors)``, the ids the
        index holds in request order and one vector per row. Ids it does not hold are left out, not an error."""
        request = _items.items_request(index, ids, version)
        return _items.items(self._call(self._vectors.GetItems, request, timeout))

    def describe(self, index: str, *, timeout: float | None = None) -> IndexInfo:
        """What the server says of ``index``: backend, dimension, metric, count, version, state."""
        response = self._call(self._admin.GetIndex, admin_service_pb2.GetIndexRequest(name=index), timeout)
        return _codec.index_info(response.index)

    def list_indexes(self, *, timeout: float | None = None) -> list[IndexInfo]:
        """Every index the server is configured to serve, by name, including loading and failed ones."""
        response = self._call(self._admin.ListIndexes, admin_service_pb2.ListIndexesRequest(), timeout)
        return [_codec.index_info(i) for i in response.indexes]

    def describe_index(self, index: str, *, routing_key: str = "", timeout: float | None = None) -> IndexInfo:
        """What a caller with the reader role may know of ``index`` (VectorService.DescribeIndex): backend,
        dimension, metric, count, version, default search params, capabilities and state. ``describe`` tells
        an admin more. For an alias, the index of the arm ``routing_key`` selects (``alias`` names the alias)."""
        request = vector_service_pb2.DescribeIndexRequest(index=index, routing_key=routing_key)
        return _codec.index_description(self._call(self._vectors.DescribeIndex, request, timeout))

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """The server's contract release, software version and installed backends (reader role)."""
        request = vector_service_pb2.GetServerInfoRequest()
        return _codec.server_info(self._call(self._vectors.GetServerInfo, request, timeout))

    def upsert(
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
        return _codec.write_result(self._call(self._writes.Upsert, request, timeout))

    def upsert_stream(
        self,
        index: str,
        batches: Iterable[_codec.Batch],
        *,
        timeout: float | None = None,
    ) -> WriteResult:
        """A bulk load in one call (UpsertStream): ``batches`` yields ``(ids, vectors)`` or ``(ids, vectors,
        attributes)`` tuples, encoded and sent as they come, so a generator can stream more than fits in
        memory. Answers once every batch is durable and applied; ``messages`` counts the batches. When a
        batch is refused (by the server, or here before it is sent, its fields named ``batches[n]...``),
        the batches before it may have been applied."""
        failures: list[Exception] = []
        messages = _codec.stream_messages(index, batches, failures)
        try:
            response = self._call(self._writes.UpsertStream, messages, timeout)
        except FluxError:
            if failures:
                raise failures[0] from None
            raise
        if failures:
            raise failures[0]
        return _codec.write_result(response)

    def delete(self, index: str, ids: Sequence[str], *, timeout: float | None = None) -> WriteResult:
        """Remove items so that no search returns them again; ``deleted`` and ``not_found`` count the ids."""
        return _codec.write_result(self._call(self._writes.Delete, _codec.delete_request(index, ids), timeout))

    def snapshot(self, index: str, *, timeout: float | None = None) -> WriteResult:
        """Write the index as it is now as its next version and shorten its log; ``version`` is that version."""
        request = write_service_pb2.SnapshotRequest(index=index)
        return _codec.write_result(self._call(self._writes.Snapshot, request, timeout))

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> FluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FluxClient({self.target!r}, timeout={self.timeout})"

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
