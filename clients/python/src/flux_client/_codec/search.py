"""Search, BatchSearch and SearchById: their requests from numpy, their answers back to numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from flux_api.v1 import types_pb2, vector_service_pb2
from flux_client._codec.fields import F32, checked_k, float_vectors, set_options
from flux_client._errors import invalid
from flux_client._types import Filter, SearchResult


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
    request = vector_service_pb2.SearchRequest(index=index, vector=float_vectors(vector), k=checked_k(k, "k"))
    set_options(request, params, filter, version, routing_key)
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
    request = vector_service_pb2.BatchSearchRequest(
        index=index, queries=float_vectors(matrix), k=checked_k(k, "k"), packed=True
    )
    set_options(request, params, filter, version, routing_key)
    if ks is not None:
        if len(ks) != len(matrix):
            raise invalid(
                f"ks has {len(ks)} entries for {len(matrix)} queries; give one per query", "ks", "COUNT_MISMATCH"
            )
        request.overrides.extend(
            vector_service_pb2.QueryOverride(k=checked_k(row_k, f"ks[{row}]")) for row, row_k in enumerate(ks)
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
    request = vector_service_pb2.SearchByIdRequest(index=index, id=item_id, k=checked_k(k, "k"))
    set_options(request, params, filter, version, routing_key)
    return request


def result(response: vector_service_pb2.SearchResponse | vector_service_pb2.SearchByIdResponse, k: int) -> SearchResult:
    """One query's neighbours as 1-D arrays of length k."""
    ids, distances = _row(response.neighbors, k)
    return SearchResult(
        np.array(ids, dtype=object), np.array(distances, dtype=F32), response.index, response.version, response.alias
    )


def batch_result(response: vector_service_pb2.BatchSearchResponse, width: int) -> SearchResult:
    """A batch's neighbours as 2-D arrays, one row per query, ``width`` columns."""
    if response.HasField("packed"):
        ids, distances = _unpacked(response.packed, width)
    else:  # a server older than packed answers ignores the request's flag
        rows = [_row(neighbors, width) for neighbors in response.results]
        shape = (len(rows), width)
        ids = np.array([r[0] for r in rows], dtype=object).reshape(shape)
        distances = np.array([r[1] for r in rows], dtype=F32).reshape(shape)
    return SearchResult(ids, distances, response.index, response.version, response.alias)


def _unpacked(packed: types_pb2.PackedNeighbors, width: int) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]:
    """Flat arrays back into rows of ``width``, short rows padded with "" and inf."""
    counts = np.array(packed.counts, dtype=np.int64)
    flat_ids = np.array(packed.ids, dtype=object)
    flat_distances = np.array(packed.distances, dtype=F32)
    if len(counts) and (counts == width).all():  # every row full: the usual case
        return flat_ids.reshape(len(counts), width), flat_distances.reshape(len(counts), width)
    ids = np.full((len(counts), width), "", dtype=object)
    distances = np.full((len(counts), width), np.inf, dtype=F32)
    columns = np.arange(width)
    filled = columns < counts[:, None]
    ids[filled] = flat_ids
    distances[filled] = flat_distances
    return ids, distances


def _row(neighbors: types_pb2.Neighbors, width: int) -> tuple[list[str], list[float]]:
    # Plain lists first and one numpy call each: far cheaper than filling preallocated arrays.
    ids, distances = list(neighbors.ids), list(neighbors.distances)
    if len(ids) < width:
        missing = width - len(ids)
        ids += [""] * missing
        distances += [np.inf] * missing
    return ids, distances
