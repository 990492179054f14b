"""Requests from numpy, answers to numpy: the client-side work of every call, and nothing else.

Vectors travel as little-endian float32 bytes, so encoding is one ``tobytes`` and the
server views them without touching each element. ``flux bench client`` times these
functions against the round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from flux_api.v1 import admin_service_pb2, types_pb2, vector_service_pb2, write_service_pb2
from flux_client._errors import FluxError, Internal, from_status, invalid
from flux_client._types import Attributes, BackendInfo, Filter, IndexInfo, SearchResult, ServerInfo, WriteResult

_F32 = np.dtype("<f4")
_INTEGERS = (int, np.integer)
_METRICS = {types_pb2.METRIC_L2: "l2", types_pb2.METRIC_COSINE: "cosine", types_pb2.METRIC_INNER_PRODUCT: "ip"}


def as_matrix(vectors: npt.ArrayLike, field: str) -> npt.NDArray[np.float32]:
    """``vectors`` as a float32 array of one (1-D) or several (2-D) vectors; no copy when already so."""
    try:
        array = np.asarray(vectors, dtype=_F32)
    except (TypeError, ValueError) as exc:
        raise invalid(f"{field} must be numbers, one vector or one vector per row ({exc})", field) from None
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise invalid(f"{field} must be one vector (1-D) or a matrix of vectors (2-D), got shape {array.shape}", field)
    return array


def search_request(
    index: str,
    vector: npt.NDArray[np.float32],
    k: int,
    params: Mapping[str, float] | None = None,
    *,
    filter: Filter | None = None,
    version: int = 0,
    routing_key: str = "",
) -> vector_service_pb2.SearchRequest:
    """A Search for one 1-D float32 vector."""
    request = vector_service_pb2.SearchRequest(index=index, vector=_vectors(vector), k=_k(k, "k"))
    _options(request, params, filter, version, routing_key)
    return request


def batch_request(
    index: str,
    matrix: npt.NDArray[np.float32],
    k: int,
    params: Mapping[str, float] | None = None,
    ks: Sequence[int] | None = None,
    *,
    filter: Filter | None = None,
    version: int = 0,
    routing_key: str = "",
) -> vector_service_pb2.BatchSearchRequest:
    """A BatchSearch for the rows of a 2-D float32 matrix; ``ks`` gives each row its own k."""
    request = vector_service_pb2.BatchSearchRequest(index=index, queries=_vectors(matrix), k=_k(k, "k"), packed=True)
    _options(request, params, filter, version, routing_key)
    if ks is not None:
        if len(ks) != len(matrix):
            raise invalid(
                f"ks has {len(ks)} entries for {len(matrix)} queries; give one per query", "ks", "COUNT_MISMATCH"
            )
        request.overrides.extend(
            vector_service_pb2.QueryOverride(k=_k(row_k, f"ks[{row}]")) for row, row_k in enumerate(ks)
        )
    return request


def by_id_request(
    index: str,
    item_id: str,
    k: int,
    params: Mapping[str, float] | None = None,
    *,
    filter: Filter | None = None,
    version: int = 0,
    routing_key: str = "",
) -> vector_service_pb2.SearchByIdRequest:
    request = vector_service_pb2.SearchByIdRequest(index=index, id=item_id, k=_k(k, "k"))
    _options(request, params, filter, version, routing_key)
    return request


def result(response: vector_service_pb2.SearchResponse | vector_service_pb2.SearchByIdResponse, k: int) -> SearchResult:
    """One query's neighbours as 1-D arrays of length k."""
    ids, distances = _row(response.neighbors, k)
    return SearchResult(
        np.array(ids, dtype=object), np.array(distances, dtype=_F32), response.index, response.version, response.alias
    )


def batch_result(response: vector_service_pb2.BatchSearchResponse, width: int) -> SearchResult:
    """A batch's neighbours as 2-D arrays, one row per query, ``width`` columns."""
    if response.HasField("packed"):
        ids, distances = _unpacked(response.packed, width)
    else:  # a server older than packed answers ignores the request's flag
        rows = [_row(neighbors, width) for neighbors in response.results]
        shape = (len(rows), width)
        ids = np.array([r[0] for r in rows], dtype=object).reshape(shape)
        distances = np.array([r[1] for r in rows], dtype=_F32).reshape(shape)
    return SearchResult(ids, distances, response.index, response.version, response.alias)


def _unpacked(packed: types_pb2.PackedNeighbors, width: int) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]:
    """Flat arrays back into rows of ``width``, short rows padded with "" and inf."""
    counts = np.array(packed.counts, dtype=np.int64)
    flat_ids = np.array(packed.ids, dtype=object)
    flat_distances = np.array(packed.distances, dtype=_F32)
    if len(counts) and (counts == width).all():  # every row full: the usual case
        return flat_ids.reshape(len(counts), width), flat_distances.reshape(len(counts), width)
    ids = np.full((len(counts), width), "", dtype=object)
    distances = np.full((len(counts), width), np.inf, dtype=_F32)
    columns = np.arange(width)
    filled = columns < counts[:, None]
    ids[filled] = flat_ids
    distances[filled] = flat_distances
    return ids, distances


def index_info(info: admin_service_pb2.IndexInfo) -> IndexInfo:
    return IndexInfo(
        name=info.name,
        backend=info.backend,
        dimension=info.dimension,
        metric=_METRICS.get(info.metric, ""),
        count=info.count,
        version=info.version,
        state=admin_service_pb2.IndexState.Name(info.state).removeprefix("INDEX_STATE_").lower(),
        error=info.error,
        build_params=json_format.MessageToDict(info.build_params),
        default_search_params=dict(info.default_search_params),
        capabilities=_capabilities(info.capabilities),
        stats=json_format.MessageToDict(info.stats),
    )


def index_description(response: vector_service_pb2.DescribeIndexResponse) -> IndexInfo:
    """What DescribeIndex tells a reader, as an IndexInfo (without what only GetIndex tells an admin)."""
    info = response.index
    return IndexInfo(
        name=info.name,
        backend=info.backend,
        dimension=info.dimension,
        metric=_METRICS.get(info.metric, ""),
        count=info.count,
        version=info.version,
        state=admin_service_pb2.IndexState.Name(info.state).removeprefix("INDEX_STATE_").lower(),
        default_search_params=dict(info.default_search_params),
        capabilities=_capabilities(info.capabilities),
        alias=response.alias,
    )


def server_info(response: vector_service_pb2.GetServerInfoResponse) -> ServerInfo:
    return ServerInfo(
        contract_version=response.contract_version,
        server_version=response.server_version,
        backends=tuple(
            BackendInfo(b.name, _capabilities(b.capabilities), dict(b.default_search_params)) for b in response.backends
        ),
    )


def _capabilities(caps: admin_service_pb2.Capabilities) -> dict[str, bool]:
    return {f.name: getattr(caps, f.name) for f in caps.DESCRIPTOR.fields}


# -- StreamSearch -----------------------------------------------------------------------------------

#: The full name of StreamSearch, for a multi-callable that sends bytes encoded here.
STREAM_SEARCH = "/flux_api.v1.VectorService/StreamSearch"
Queries = npt.ArrayLike | Iterable[npt.ArrayLike]


def stream_template(
    index: str,
    k: int,
    params: Mapping[str, float] | None = None,
    *,
    filter: Filter | None = None,
    version: int = 0,
    routing_key: str = "",
) -> bytes:
    """What every query of one stream shares, encoded once. Each message is these bytes followed by
    the query's own vector and request_id: protobuf parses concatenated messages as one, merged."""
    request = vector_service_pb2.StreamSearchRequest(index=index, k=_k(k, "k"))
    _options(request, params, filter, version, routing_key)
    return request.SerializeToString()


def stream_queries(template: bytes, queries: Queries, failures: list[Exception]) -> Iterator[bytes]:
    """The messages of a StreamSearch, encoded as gRPC asks for them: query ``n`` (a row of a 2-D
    array, or the n-th vector an iterable yields) with request_id ``n``. A query that cannot be
    encoded (or an iterator that raises) ends the stream there and lands in ``failures``, for the
    caller to raise once the queries before it are answered."""
    try:
        if isinstance(queries, np.ndarray):
            rows: Iterable[npt.ArrayLike] = as_matrix(queries, "queries")  # one conversion for the whole matrix
            if queries.ndim != 2:
                raise invalid(
                    f"queries must be a 2-D matrix with one query per row (or an iterable of vectors), "
                    f"got shape {queries.shape}",
                    "queries",
                )
        else:
            rows = queries  # type: ignore[assignment]  # an iterable of vectors
        for number, row in enumerate(rows):
            yield query_message(template, number, row)
    except Exception as exc:  # the caller's iterator may raise anything
        failures.append(exc)


def query_message(template: bytes, number: int, vector: npt.ArrayLike) -> bytes:
    """Query ``number`` of a stream: ``template`` followed by its vector and ``request_id`` ``number``."""
    array = as_matrix(vector, f"queries[{number}]")
    if array.ndim != 1:
        raise invalid(f"queries[{number}] must be one vector (1-D), got shape {array.shape}", f"queries[{number}]")
    return (
        template + vector_service_pb2.StreamSearchRequest(vector=_vectors(array), request_id=number).SerializeToString()
    )


def stream_result(response: vector_service_pb2.StreamSearchResponse, k: int, number: int) -> SearchResult | FluxError:
    """Query ``number``'s answer as ``result`` gives it, or the typed error a Search with it would raise."""
    if response.request_id != number:  # the contract says answers come in the order of the queries
        return Internal(
            grpc.StatusCode.INTERNAL,
            f"StreamSearch answered request_id {response.request_id} where query {number} was due",
            reason="INTERNAL",
        )
    if response.HasField("error"):
        error = response.error
        return from_status(error.code, error.message, error.SerializeToString())
    return result(response.search, k)


# -- writes -----------------------------------------------------------------------------------------


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
    request.vectors.CopyFrom(_vectors(matrix))
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


def _vectors(matrix: npt.NDArray[np.float32]) -> types_pb2.FloatVectors:
    return types_pb2.FloatVectors(dimension=matrix.shape[-1], data=matrix.tobytes())


def _row(neighbors: types_pb2.Neighbors, width: int) -> tuple[list[str], list[float]]:
    # Plain lists first and one numpy call each: far cheaper than filling preallocated arrays.
    ids, distances = list(neighbors.ids), list(neighbors.distances)
    if len(ids) < width:
        missing = width - len(ids)
        ids += [""] * missing
        distances += [np.inf] * missing
    return ids, distances


_Request = (
    vector_service_pb2.SearchRequest
    | vector_service_pb2.BatchSearchRequest
    | vector_service_pb2.SearchByIdRequest
    | vector_service_pb2.StreamSearchRequest
)


def _options(
    request: _Request, params: Mapping[str, float] | None, filter: Filter | None, version: int, routing_key: str
) -> None:
    """Set what every kind of search may carry; unset fields cost nothing on the wire."""
    if params:
        request.params.update(_params(params))
    if filter is not None:
        request.filter.CopyFrom(_filter(filter))
    if version:
        if isinstance(version, bool) or not isinstance(version, _INTEGERS) or version < 0:
            raise invalid(f"version must be a version number, or 0 for the active one; got {version!r}", "version")
        request.version = int(version)
    if routing_key:
        request.routing_key = routing_key


def _filter(spec: Filter) -> types_pb2.Filter:
    def restricts(field: str, namespaces: Mapping[str, Sequence[str]]) -> list[types_pb2.Restrict]:
        out = []
        for namespace, tokens in namespaces.items():
            if isinstance(tokens, str):
                raise invalid(
                    f"filter.{field}[{namespace!r}] must be a list of tokens, e.g. [{tokens!r}]",
                    "filter",
                    "INVALID_FILTER",
                )
            out.append(types_pb2.Restrict(namespace=namespace, tokens=list(tokens)))
        return out

    if isinstance(spec.exclude_ids, str):
        raise invalid("filter.exclude_ids must be a list of ids, not one string", "filter", "INVALID_FILTER")
    return types_pb2.Filter(
        allow=restricts("allow", spec.allow),
        deny=restricts("deny", spec.deny),
        exclude_ids=list(spec.exclude_ids),
        max_per_crowding_tag=_count(spec.max_per_crowding_tag, "filter.max_per_crowding_tag", "INVALID_FILTER"),
    )


def _count(value: int, field: str, reason: str = "INVALID_ARGUMENT") -> int:
    if isinstance(value, bool) or not isinstance(value, _INTEGERS) or value < 0:
        raise invalid(f"{field} must be a whole number >= 0, got {value!r}", field, reason)
    return int(value)


def _k(k: int, field: str) -> int:
    if isinstance(k, bool) or not isinstance(k, _INTEGERS) or k < 1:
        raise invalid(f"{field} must be a positive integer, got {k!r}", field, "K_OUT_OF_RANGE")
    return int(k)


def _params(params: Mapping[str, float]) -> dict[str, float]:
    try:
        return {str(name): float(value) for name, value in params.items()}
    except (TypeError, ValueError):
        raise invalid(f"params must map names to numbers, e.g. {{'ef': 128}}, got {dict(params)!r}", "params") from None
