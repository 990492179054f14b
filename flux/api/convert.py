"""Pure conversions between wire messages and numpy / core values; the only module that knows both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from flux.core.backend import Capabilities, Labels, Matrix, Metric
from flux.core.catalog import IndexState
from flux.core.filters import Answer, Filter, Strategy
from flux.core.index import Hits, ServedIndex
from flux.core.versions import State
from flux.errors import InvalidArgument
from flux_api.v1 import admin_service_pb2, types_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

_LITTLE_ENDIAN_F32 = np.dtype("<f4")

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

    Rejects a missing dimension, a byte length that is not a whole number of rows,
    an empty matrix, and NaN or Inf values, each naming ``field``.
    """
    dimension = message.dimension
    if dimension == 0:
        raise InvalidArgument(f"{field}.dimension must be set to the vector dimension", field=f"{field}.dimension")
    data = message.data
    row_bytes = 4 * dimension
    if len(data) % row_bytes:
        raise InvalidArgument(
            f"{field}.data holds {len(data)} bytes, which is not a whole number of "
            f"{dimension}-dimensional float32 vectors ({row_bytes} bytes each)",
            field=f"{field}.data",
        )
    if not data:
        raise InvalidArgument(f"{field} holds no vectors; send at least one", field=f"{field}.data")
    matrix = np.frombuffer(data, dtype=_LITTLE_ENDIAN_F32).reshape(-1, dimension)
    finite = np.isfinite(matrix)
    if not finite.all():
        row = int(np.argmin(finite.all(axis=1)))
        raise InvalidArgument(f"{field} row {row} contains NaN or Inf; every value must be finite", field=field)
    return matrix


def encode_vectors(matrix: np.ndarray) -> types_pb2.FloatVectors:
    """The wire form of a float matrix (one vector is a 1 x d matrix)."""
    matrix = np.atleast_2d(np.asarray(matrix, dtype=_LITTLE_ENDIAN_F32))
    return types_pb2.FloatVectors(dimension=matrix.shape[1], data=matrix.tobytes())


_INDEX = types_pb2.SEARCH_STRATEGY_INDEX
STRATEGIES = {
    Strategy.INDEX: _INDEX,
    Strategy.EXACT_SCAN: types_pb2.SEARCH_STRATEGY_EXACT_SCAN,
    Strategy.OVERFETCH: types_pb2.SEARCH_STRATEGY_OVERFETCH,
}


def neighbors(hits: Hits, k: int = 0) -> types_pb2.Neighbors:
    """An unfiltered answer; ``k`` (when known) tells whether it came back short."""
    return types_pb2.Neighbors(
        ids=hits.ids, distances=hits.distances.tolist(), strategy=_INDEX, fewer_than_k_matched=len(hits.ids) < k
    )


def neighbors_rows(index: ServedIndex, labels: Labels, distances: Matrix) -> list[types_pb2.Neighbors]:
    """One Neighbors per row of the backend's answer, padding (label -1) dropped."""
    return [
        types_pb2.Neighbors(ids=ids, distances=dists, strategy=_INDEX, fewer_than_k_matched=short)
        for ids, dists, short in _rows(index, labels, distances)
    ]


def add_rows(
    into: RepeatedCompositeFieldContainer[types_pb2.Neighbors], index: ServedIndex, labels: Labels, distances: Matrix
) -> None:
    """``neighbors_rows``, appended to a response's repeated field: for batches, filling messages
    in place costs about half as much as building them and copying them in."""
    add = into.add
    for ids, dists, short in _rows(index, labels, distances):
        row = add()
        row.ids.extend(ids)
        row.distances.extend(dists)
        row.strategy = _INDEX
        if short:
            row.fewer_than_k_matched = True


def pack_rows(into: types_pb2.PackedNeighbors, index: ServedIndex, labels: Labels, distances: Matrix) -> None:
    """The backend's answer as one PackedNeighbors: a few vectorised calls, whatever the batch size."""
    queries, k = labels.shape
    if _all_full(labels):
        into.ids.extend(index.ids_of(labels.ravel()).tolist())
        into.distances.extend(distances.ravel().tolist())
        into.counts.extend([k] * queries)
        into.fewer_than_k_matched.extend([False] * queries)
    else:
        found = labels >= 0
        counts = found.sum(axis=1)
        into.ids.extend(index.ids_of(labels[found]).tolist())
        into.distances.extend(distances[found].tolist())
        into.counts.extend(counts.tolist())
        into.fewer_than_k_matched.extend((counts < k).tolist())
    into.strategies.extend([_INDEX] * queries)


def pack(into: types_pb2.PackedNeighbors, rows: list[types_pb2.Neighbors]) -> None:
    """Rows already answered one by one (filters, per-query overrides), as one PackedNeighbors."""
    for row in rows:
        into.ids.extend(row.ids)
        into.distances.extend(row.distances)
        into.counts.append(len(row.ids))
        into.strategies.append(row.strategy)
        into.fewer_than_k_matched.append(row.fewer_than_k_matched)


def _rows(index: ServedIndex, labels: Labels, distances: Matrix) -> Iterator[tuple[list[str], list[float], bool]]:
    """Each row's ids, distances and whether padding was dropped from it.

    The ids of every row come from one vectorised lookup, and every row converts to
    Python objects in one ``tolist``; only rows with padding take a slower path.
    """
    if _all_full(labels):
        for ids, dists in zip(index.ids_of(labels).tolist(), distances.tolist(), strict=True):
            yield ids, dists, False
        return
    for row, dist in zip(labels, distances, strict=True):
        found = row >= 0
        ids = index.ids_of(row[found]).tolist()
        yield ids, dist[found].tolist(), len(ids) < len(row)


def _all_full(labels: Labels) -> bool:
    """Whether every row holds k results (no padding label -1): the usual case, and the fast one."""
    return bool(labels.size) and min(labels[:, -1].tolist()) >= 0


def decode_filter(message: types_pb2.Filter, field: str) -> Filter | None:
    """A request's filter in core form, validated; None when it filters nothing."""
    return Filter.create(
        allow=[(r.namespace, r.tokens) for r in message.allow],
        deny=[(r.namespace, r.tokens) for r in message.deny],
        exclude_ids=message.exclude_ids,
        max_per_tag=message.max_per_crowding_tag,
        field=field,
    )


def answers(index: ServedIndex, found: list[Answer]) -> list[types_pb2.Neighbors]:
    """Filtered answers, with the strategy that found each."""
    return [
        types_pb2.Neighbors(
            ids=index.ids_of(a.labels).tolist(),
            distances=a.distances.tolist(),
            strategy=STRATEGIES[a.strategy],
            fewer_than_k_matched=a.fewer_than_k,
        )
        for a in found
    ]


def capabilities(caps: Capabilities) -> admin_service_pb2.Capabilities:
    return admin_service_pb2.Capabilities(
        mutable=caps.mutable,
        supports_delete=caps.supports_delete,
        filterable=caps.filterable,
        mmap_load=caps.mmap_load,
        thread_safe_search=caps.thread_safe_search,
    )
