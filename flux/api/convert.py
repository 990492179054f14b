"""Pure conversions between wire messages and numpy / core values; the only module that knows both."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flux.core.query.filters import Strategy
from flux.core.query.request import FilterSpec, Query, Result, RowOverride
from flux.core.serving.catalog import IndexState
from flux.core.serving.versions import State
from flux_api.v1 import admin_service_pb2, types_pb2, vector_service_pb2
from flux_core.backend import Capabilities, Matrix, Metric
from flux_core.errors import InvalidArgument, Reason

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
    from google.rpc import status_pb2

_LITTLE_ENDIAN_F32 = np.dtype("<f4")
#: One query of a StreamSearch carries the fields of a SearchRequest (the same names and numbers).
OneQuery = vector_service_pb2.SearchRequest | vector_service_pb2.StreamSearchRequest
SearchRequests = OneQuery | vector_service_pb2.BatchSearchRequest | vector_service_pb2.SearchByIdRequest

METRICS = {
    Metric.L2: types_pb2.METRIC_L2,
    Metric.COSINE: types_pb2.METRIC_COSINE,
    Metric.IP: types_pb2.METRIC_INNER_PRODUCT,
}
VERSION_STATES = {
    State.AVAILABLE: admin_service_pb2.VERSION_STATE_AVAILABLE,
    State.LOADING: admin_service_pb2.VERSION_STATE_LOADING,
    State.READY: admin_service_pb2.VERSION_STATE_READY,
    State.ACTIVE: admin_service_pb2.VERSION_STATE_ACTIVE,
    State.FAILED: admin_service_pb2.VERSION_STATE_FAILED,
}
STATES = {
    IndexState.LOADING: admin_service_pb2.INDEX_STATE_LOADING,
    IndexState.SERVING: admin_service_pb2.INDEX_STATE_SERVING,
    IndexState.FAILED: admin_service_pb2.INDEX_STATE_FAILED,
}


def decode_vectors(message: types_pb2.FloatVectors, field: str) -> Matrix:
    """View the message's bytes as a rows x dimension float32 matrix: no copy, no per-element work.

    Rejects a missing dimension, a byte length that is not a whole number of rows and an empty
    matrix, each naming ``field``. The values are the core's to check (``flux_core.vectors.check_vectors``).
    """
    dimension = message.dimension
    if dimension == 0:
        raise InvalidArgument(
            f"{field}.dimension is 0; set it to the vector dimension",
            field=f"{field}.dimension",
            reason=Reason.MALFORMED_VECTORS,
        )
    data = message.data
    row_bytes = 4 * dimension
    if len(data) % row_bytes:
        raise InvalidArgument(
            f"{field}.data holds {len(data)} bytes, which is not a whole number of "
            f"{dimension}-dimensional float32 vectors ({row_bytes} bytes each)",
            field=f"{field}.data",
            reason=Reason.MALFORMED_VECTORS,
        )
    if not data:
        raise InvalidArgument(
            f"{field} holds no vectors; send at least one", field=f"{field}.data", reason=Reason.EMPTY_BATCH
        )
    return np.frombuffer(data, dtype=_LITTLE_ENDIAN_F32).reshape(-1, dimension)


def encode_vectors(matrix: np.ndarray) -> types_pb2.FloatVectors:
    """The wire form of a float matrix (one vector is a 1 x d matrix)."""
    matrix = np.atleast_2d(np.asarray(matrix, dtype=_LITTLE_ENDIAN_F32))
    return types_pb2.FloatVectors(dimension=matrix.shape[1], data=matrix.tobytes())


# -- searches: one decoder per request, one encoder per response ---------------------------------


def search_query(request: OneQuery) -> Query:
    """A Search, or one query of a StreamSearch: its errors name the same fields either way."""
    vectors = decode_vectors(request.vector, "vector")
    return Query(request.index, request.k, vectors, request.vector.dimension, **_shared(request))


def batch_query(request: vector_service_pb2.BatchSearchRequest) -> Query:
    vectors = decode_vectors(request.queries, "queries")
    overrides = [
        RowOverride(o.k, o.params, _filter(o.filter) if o.HasField("filter") else None) for o in request.overrides
    ]
    query = Query(request.index, request.k, vectors, request.queries.dimension, "queries", **_shared(request))
    query.overrides, query.batch = overrides, True
    return query


def by_id_query(request: vector_service_pb2.SearchByIdRequest) -> Query:
    return Query(request.index, request.k, item_id=request.id, **_shared(request))


def _shared(request: SearchRequests) -> dict[str, Any]:
    """What every search request carries alike: params, filter, version and routing key."""
    return {
        "params": request.params,
        "filter": _filter(request.filter) if request.HasField("filter") else None,
        "version": request.version,
        "routing_key": request.routing_key,
    }


def search_response(result: Result) -> vector_service_pb2.SearchResponse:
    response = vector_service_pb2.SearchResponse()
    _search(response, result)
    return response


def stream_response(request_id: int, result: Result) -> vector_service_pb2.StreamSearchResponse:
    """One answer of a StreamSearch: the query's id and, in ``search``, the SearchResponse Search would give."""
    response = vector_service_pb2.StreamSearchResponse(request_id=request_id)
    _search(response.search, result)  # filled where it stays: no copy of the neighbours
    return response


def stream_error(request_id: int, status: status_pb2.Status) -> vector_service_pb2.StreamSearchResponse:
    """The answer of a StreamSearch query that failed: its id and ``status`` (a google.rpc.Status, field for field)."""
    response = vector_service_pb2.StreamSearchResponse(request_id=request_id)
    error = response.error
    error.code, error.message = status.code, status.message
    error.details.extend(status.details)
    return response


def _search(into: vector_service_pb2.SearchResponse, result: Result) -> None:
    into.index, into.version = result.index, result.version
    if result.alias:
        into.alias = result.alias
    _neighbors(into.neighbors, result)


def by_id_response(result: Result) -> vector_service_pb2.SearchByIdResponse:
    response = vector_service_pb2.SearchByIdResponse(index=result.index, version=result.version, alias=result.alias)
    _neighbors(response.neighbors, result)
    return response


def batch_response(result: Result, *, packed: bool) -> vector_service_pb2.BatchSearchResponse:
    """Rows (one Neighbors per query), or with ``packed`` the same neighbours in flat arrays."""
    response = vector_service_pb2.BatchSearchResponse(index=result.index, version=result.version, alias=result.alias)
    if packed:
        _packed(response.packed, result)
    else:
        _rows(response.results, result)
    return response


def items_response(
    index: str, version: int, ids: Sequence[str], vectors: Matrix, found: Sequence[bool]
) -> vector_service_pb2.GetItemsResponse:
    """GetItems' answer: each id with its stored vector (one row, as queries send it) when found."""
    response = vector_service_pb2.GetItemsResponse(index=index, version=version)
    add = response.items.add
    dimension = vectors.shape[1]
    rows = np.asarray(vectors, dtype=_LITTLE_ENDIAN_F32)
    for item_id, row, ok in zip(ids, rows, found, strict=True):
        entry = add(id=item_id)
        if ok:
            entry.found = True
            entry.vector.dimension, entry.vector.data = dimension, row.tobytes()
    return response


STRATEGIES = {
    Strategy.INDEX: types_pb2.SEARCH_STRATEGY_INDEX,
    Strategy.EXACT_SCAN: types_pb2.SEARCH_STRATEGY_EXACT_SCAN,
    Strategy.OVERFETCH: types_pb2.SEARCH_STRATEGY_OVERFETCH,
    Strategy.NATIVE_FILTER: types_pb2.SEARCH_STRATEGY_NATIVE_FILTER,
}


def _filter(message: types_pb2.Filter) -> FilterSpec:
    return FilterSpec(
        allow=[(r.namespace, r.tokens) for r in message.allow],
        deny=[(r.namespace, r.tokens) for r in message.deny],
        exclude_ids=message.exclude_ids,
        max_per_tag=message.max_per_crowding_tag,
        exclude_id_hashes=message.exclude_id_hashes,
    )


def _neighbors(into: types_pb2.Neighbors, result: Result) -> None:
    """The one row of a Search or SearchById answer, filled in place."""
    into.ids.extend(result.ids.tolist())
    into.distances.extend(result.distances.tolist())
    into.strategy = STRATEGIES[result.strategies[0]]
    into.fewer_than_k_matched = result.fewer_than_k[0]


def _rows(into: RepeatedCompositeFieldContainer[types_pb2.Neighbors], result: Result) -> None:
    """One Neighbors per row, appended in place: for batches, filling messages where they will
    stay costs about half as much as building them and copying them in."""
    add = into.add
    for ids, distances, strategy, short in _row_lists(result):
        row = add()
        row.ids.extend(ids)
        row.distances.extend(distances)
        row.strategy = STRATEGIES[strategy]
        if short:
            row.fewer_than_k_matched = True


def _row_lists(result: Result) -> Iterator[tuple[list[Any], list[float], Strategy, bool]]:
    """Each row as Python lists: ids, distances, strategy, and whether it holds fewer than k."""
    if result.full_k:  # every row holds k: one conversion of each array, reshaped
        k = result.full_k
        ids, distances = result.ids.reshape(-1, k).tolist(), result.distances.reshape(-1, k).tolist()
        yield from zip(ids, distances, result.strategies, result.fewer_than_k, strict=True)
        return
    ids, distances = result.ids.tolist(), result.distances.tolist()
    start = 0
    for count, strategy, short in zip(result.counts, result.strategies, result.fewer_than_k, strict=True):
        yield ids[start : start + count], distances[start : start + count], strategy, short
        start += count


def _packed(into: types_pb2.PackedNeighbors, result: Result) -> None:
    """Every row in flat arrays: a few vectorised calls, whatever the batch size."""
    into.ids.extend(result.ids.tolist())
    into.distances.extend(result.distances.tolist())
    into.counts.extend(result.counts)
    into.strategies.extend([STRATEGIES[s] for s in result.strategies])
    into.fewer_than_k_matched.extend(result.fewer_than_k)


def capabilities(caps: Capabilities) -> admin_service_pb2.Capabilities:
    return admin_service_pb2.Capabilities(
        mutable=caps.mutable,
        supports_delete=caps.supports_delete,
        filterable=caps.filterable,
        mmap_load=caps.mmap_load,
        thread_safe_search=caps.thread_safe_search,
    )
