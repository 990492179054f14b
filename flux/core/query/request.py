"""What a search asks (``Query``) and what it gets (``Result``): the one shape of every search in the core.

Search, BatchSearch and SearchById are each decoded into a ``Query``; the served index answers
it (``ServedIndex.answer``), choosing between the plain path, rows with their own k or params,
and the filter planner; the answer is a ``Result`` whose ids are already resolved, so encoding
it never calls back into the core. A router that merges shards' answers, or a streaming search,
is one more producer or consumer of these two types.

Nothing here is validated: a ``Query`` carries what the caller sent, and the index checks it
(against its dimension, limits and parameters) in one place, naming the request field at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from flux.core.query.filters import Answer, Strategy
from flux_core.backend import Labels, Matrix

#: Ids as an index hands them out: str, or UTF-8 bytes (``flux_core.storage.ids.packed``), one per neighbour.
IdArray = npt.NDArray[np.object_] | npt.NDArray[np.bytes_]
#: The id of each label (all >= 0), in the shape of the labels: ``ServedIndex.ids_of``.
IdLookup = Callable[[Labels], IdArray]


@dataclass(frozen=True)
class FilterSpec:
    """A filter as the caller sent it; the index validates it (``Filter.create``)."""

    allow: Sequence[tuple[str, Sequence[str]]] = ()
    deny: Sequence[tuple[str, Sequence[str]]] = ()
    exclude_ids: Sequence[str] = ()
    max_per_tag: int = 0
    exclude_id_hashes: Sequence[int] = ()


@dataclass(frozen=True)
class RowOverride:
    """One batch row's own k, params or filter; unset parts take the query's."""

    k: int = 0
    params: Mapping[str, float] = field(default_factory=dict)
    filter: FilterSpec | None = None


@dataclass(slots=True)  # not frozen: frozen fields cost a call each, on every request
class Query:
    """One search request, decoded but not yet validated.

    ``vectors`` holds the query rows as sent (``dimension`` is the dimension the caller declared);
    a search by id has none and names a stored item in ``item_id`` instead. ``batch`` marks a
    BatchSearch: its rows may number up to ``max_batch`` and it searches with the batch threads.
    ``vectors_field`` is the request field the vectors came from, for error messages.
    """

    index: str
    k: int
    vectors: Matrix | None = None
    dimension: int = 0
    vectors_field: str = "vector"
    params: Mapping[str, float] = field(default_factory=dict)
    filter: FilterSpec | None = None
    overrides: Sequence[RowOverride] = ()
    item_id: str | None = None
    batch: bool = False
    version: int = 0
    routing_key: str = ""


@dataclass(slots=True)  # not frozen, for the same reason; the catalog names the alias on it
class Result:
    """The answer to a ``Query``: every row's neighbours, nearest first, in flat arrays.

    Row i holds ``counts[i]`` neighbours: its ids and distances follow those of the rows before
    it. ``full_k`` is k when every row holds exactly k neighbours found by the index (the usual
    case), so encoders may treat the arrays as rows x k; 0 otherwise.
    """

    ids: IdArray
    distances: Matrix
    counts: Sequence[int]
    strategies: Sequence[Strategy]
    fewer_than_k: Sequence[bool]
    full_k: int = 0
    index: str = ""
    version: int = 0
    alias: str = ""

    @classmethod
    def from_padded(
        cls, labels: Labels, distances: Matrix, ids_of: IdLookup, k: int, index: str, version: int
    ) -> Result:
        """The backend's q x k answer, padded with label -1 where fewer were found."""
        rows = len(labels)
        if labels.size and min(labels[:, -1].tolist()) >= 0:
            strategies, short = [Strategy.INDEX] * rows, [False] * rows
            return cls(ids_of(labels.ravel()), distances.ravel(), [k] * rows, strategies, short, k, index, version)
        found = labels >= 0
        counts = found.sum(axis=1).tolist()
        short = [count < k for count in counts]
        return cls(ids_of(labels[found]), distances[found], counts, [Strategy.INDEX] * rows, short, 0, index, version)

    @classmethod
    def from_answers(cls, answers: Sequence[Answer], ids_of: IdLookup, index: str, version: int) -> Result:
        """Answers found row by row (the planner), with one id lookup for all of them."""
        labels = np.concatenate([a.labels for a in answers]) if answers else np.empty(0, np.int64)
        distances = np.concatenate([a.distances for a in answers]) if answers else np.empty(0, np.float32)
        return cls(
            ids_of(labels),
            distances.astype(np.float32, copy=False),
            [len(a.labels) for a in answers],
            [a.strategy for a in answers],
            [a.fewer_than_k for a in answers],
            index=index,
            version=version,
        )
