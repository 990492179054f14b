"""Requests from numpy, answers to numpy: the client-side work of every call, and nothing else.

Vectors travel as little-endian float32 bytes, so encoding is one ``tobytes`` and the
server views them without touching each element. ``flux bench client`` times these
functions against the round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from flux_api.v1 import admin_service_pb2, types_pb2, vector_service_pb2
from flux_client._errors import invalid
from flux_client._types import Filter, IndexInfo, SearchResult

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
            raise invalid(f"ks has {len(ks)} entries for {len(matrix)} queries; give one per query", "ks")
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
        capabilities={f.name: getattr(info.capabilities, f.name) for f in info.capabilities.DESCRIPTOR.fields},
        stats=json_format.MessageToDict(info.stats),
    )


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
    vector_service_pb2.SearchRequest | vector_service_pb2.BatchSearchRequest | vector_service_pb2.SearchByIdRequest
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
                raise invalid(f"filter.{field}[{namespace!r}] must be a list of tokens, e.g. [{tokens!r}]", "filter")
            out.append(types_pb2.Restrict(namespace=namespace, tokens=list(tokens)))
        return out

    if isinstance(spec.exclude_ids, str):
        raise invalid("filter.exclude_ids must be a list of ids, not one string", "filter")
    return types_pb2.Filter(
        allow=restricts("allow", spec.allow),
        deny=restricts("deny", spec.deny),
        exclude_ids=list(spec.exclude_ids),
        max_per_crowding_tag=_count(spec.max_per_crowding_tag, "filter.max_per_crowding_tag"),
    )


def _count(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, _INTEGERS) or value < 0:
        raise invalid(f"{field} must be a whole number >= 0, got {value!r}", field)
    return int(value)


def _k(k: int, field: str) -> int:
    if isinstance(k, bool) or not isinstance(k, _INTEGERS) or k < 1:
        raise invalid(f"{field} must be a positive integer, got {k!r}", field)
    return int(k)


def _params(params: Mapping[str, float]) -> dict[str, float]:
    try:
        return {str(name): float(value) for name, value in params.items()}
    except (TypeError, ValueError):
        raise invalid(f"params must map names to numbers, e.g. {{'ef': 128}}, got {dict(params)!r}", "params") from None
