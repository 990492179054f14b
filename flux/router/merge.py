"""Exact top-k merge of the shards' answers: by distance, ties broken by shard then rank.

Each shard answers its own top k (restricts, exclusions and the crowding cap applied there), and
the k nearest of the whole index are among the union of those answers, so the merge is exact
whenever the shards' answers are: no shard needs to fetch more than k. The crowding cap stays
exact only when a tag's items share a shard (an index sharded by its crowding tag), which the
router checks before it forwards a cap (``flux.router.fanout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flux_api.v1 import types_pb2


@dataclass(frozen=True, slots=True)
class Row:
    """One query's neighbours as a shard (or the merge) answered them, nearest first."""

    ids: Sequence[str]
    distances: Sequence[float]
    strategy: int = types_pb2.SEARCH_STRATEGY_UNSPECIFIED
    fewer_than_k: bool = False


def row_of(neighbors: types_pb2.Neighbors) -> Row:
    return Row(list(neighbors.ids), list(neighbors.distances), neighbors.strategy, neighbors.fewer_than_k_matched)


def rows_of_packed(packed: types_pb2.PackedNeighbors) -> list[Row]:
    """A packed batch answer as one Row per query."""
    ids, distances = list(packed.ids), list(packed.distances)
    rows, start = [], 0
    for count, strategy, short in zip(packed.counts, packed.strategies, packed.fewer_than_k_matched, strict=True):
        rows.append(Row(ids[start : start + count], distances[start : start + count], strategy, short))
        start += count
    return rows


def merge(rows: Sequence[Row | None], k: int) -> Row:
    """The k nearest of the shards' rows (None: the shard did not answer), nearest first.

    Ties in distance go to the lower shard number, then to the better rank within the shard, so the
    same answers always merge the same way. The strategy is the one of the shard that holds the
    nearest neighbour; the row is short (``fewer_than_k``) when fewer than k neighbours were found.
    """
    candidates = [
        (distance, shard, rank, item)
        for shard, row in enumerate(rows)
        if row is not None
        for rank, (item, distance) in enumerate(zip(row.ids, row.distances, strict=True))
    ]
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    best = candidates[:k]
    strategy: int = types_pb2.SEARCH_STRATEGY_UNSPECIFIED
    if best:
        first = rows[best[0][1]]
        assert first is not None
        strategy = first.strategy
    else:
        strategy = next((row.strategy for row in rows if row is not None), strategy)
    return Row([c[3] for c in best], [c[0] for c in best], strategy, len(best) < k)


def fill(into: types_pb2.Neighbors, row: Row) -> None:
    into.ids.extend(row.ids)
    into.distances.extend(row.distances)
    into.strategy = row.strategy  # type: ignore[assignment]
    into.fewer_than_k_matched = row.fewer_than_k


def fill_packed(into: types_pb2.PackedNeighbors, rows: Sequence[Row]) -> None:
    for row in rows:
        into.ids.extend(row.ids)
        into.distances.extend(row.distances)
        into.counts.append(len(row.ids))
        into.strategies.append(row.strategy)  # type: ignore[arg-type]
        into.fewer_than_k_matched.append(row.fewer_than_k)
