"""The filter planner: answers queries that carry a filter, choosing how per query.

A filter keeps items by their restrict tokens (allow, deny), leaves ids out, and caps how
many results share a crowding tag. An approximate index searched first and filtered after
loses recall when few items pass, so each query is planned from the number of items that
pass its filter, counted exactly from the posting lists (a boolean mask over labels):

* ``EXACT_SCAN``: distances to every passing item. Chosen when that is the cheaper way (few
  items pass), and whenever over-fetching comes back short, so recall never collapses.
* ``OVERFETCH``: ask the index for k' = 2 k / selectivity neighbours, keep those that pass
  (and the crowding cap), and ask again for four times as many until k remain.

The two strategies' costs differ by two orders of magnitude between backends (Annoy's work
grows with k', hnswlib's barely does), so each index learns them from its own searches:
seconds per scanned item and per fetched candidate, as medians of recent searches. docs/filters.md has
the measurements, and why hnswlib's own filter (a Python call per candidate) is not used.
How an exact scan ranks, and the crowding cap, are ``flux.core.query.ranking``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np
import numpy.typing as npt

from flux.core.query import deadline, ranking
from flux_core.backend import Backend, Labels, Matrix
from flux_core.errors import InvalidArgument
from flux_core.storage.attribute_table import NO_TAG, Mask, Table
from flux_core.storage.attributes import AttributeStore, parse_restricts

#: Ids one query may exclude.
MAX_EXCLUDE_IDS = 10_000
#: Over-fetch asks for this many times the neighbours that should pass, at the filter's selectivity.
MARGIN = 2.0
#: Each further over-fetch asks for this many times more.
GROWTH = 4
#: Filter masks of one batch pass stay under this many bytes; larger batches go in several passes.
_MASK_BUDGET = 1 << 26
#: When an allow namespace holds at most 1/LIST_SHARE of the labels, the passing labels are listed
#: from the posting lists instead of marked in a mask over every label.
LIST_SHARE = 16
#: Each learnt cost is the median of this many recent measurements: one slow call (a first call,
#: a pause) does not move it, a real change does within a few queries.
_WINDOW = 15
#: The window starts with the first guess counted this many times, a majority: until as many
#: measurements agree, the cold first calls of a process cannot tip the median.
_SEED = _WINDOW // 2 + 1
#: Smaller measurements are mostly fixed overhead and are not learnt from.
_MIN_SCAN_ITEMS = 256
_MIN_FETCH_CANDIDATES = 32


class Strategy(Enum):
    """How a query was answered."""

    INDEX = "index"  # no filter: the backend's index alone
    EXACT_SCAN = "exact_scan"
    OVERFETCH = "overfetch"


@dataclass(frozen=True)
class Filter:
    """One query's filter, validated; ``create`` returns None for a filter that keeps everything."""

    allow: Mapping[str, tuple[str, ...]]
    deny: Mapping[str, tuple[str, ...]]
    exclude_ids: tuple[str, ...] = ()
    max_per_tag: int = 0

    @classmethod
    def create(
        cls,
        *,
        allow: Iterable[tuple[str, Iterable[str]]] = (),
        deny: Iterable[tuple[str, Iterable[str]]] = (),
        exclude_ids: Sequence[str] = (),
        max_per_tag: int = 0,
        field: str = "filter",
    ) -> Filter | None:
        """Errors are InvalidArgument naming the field at fault, under ``field``."""
        if len(exclude_ids) > MAX_EXCLUDE_IDS:
            raise InvalidArgument(
                f"{field}.exclude_ids holds {len(exclude_ids):,} ids; at most {MAX_EXCLUDE_IDS:,} per query",
                field=f"{field}.exclude_ids",
            )
        if max_per_tag < 0:
            raise InvalidArgument(f"{field}.max_per_crowding_tag must be >= 0", field=f"{field}.max_per_crowding_tag")
        allowed = parse_restricts(allow, f"{field}.allow")
        denied = parse_restricts(deny, f"{field}.deny")
        if not (allowed or denied or exclude_ids or max_per_tag):
            return None
        return cls(allowed, denied, tuple(exclude_ids), max_per_tag)


@dataclass(frozen=True)
class Answer:
    """One query's result, nearest first, and how it was found."""

    labels: Labels
    distances: Matrix
    strategy: Strategy
    #: Fewer than k items pass the filter (with the crowding cap) in the whole index:
    #: the short answer is complete, not a recall loss.
    fewer_than_k: bool


class Nearest(Protocol):
    """The index's own search (``ServedIndex.nearest``): q x k labels and distances, padded with -1."""

    def __call__(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]: ...


@dataclass
class Costs:
    """Seconds per item exactly scanned and per candidate fetched from the index: at first the
    guesses given, then the median of this index's recent measurements. Thread-safe enough: a
    race between two searches can only lose a measurement."""

    scan: float
    fetch: float
    _scans: deque[float] = field(init=False, repr=False)
    _fetches: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._scans = deque([self.scan] * _SEED, maxlen=_WINDOW)
        self._fetches = deque([self.fetch] * _SEED, maxlen=_WINDOW)

    def learn_scan(self, seconds: float, items: int) -> None:
        if items >= _MIN_SCAN_ITEMS:
            self._scans.append(seconds / items)
            self.scan = statistics.median(self._scans)

    def learn_fetch(self, seconds: float, candidates: int) -> None:
        if candidates >= _MIN_FETCH_CANDIDATES:
            self._fetches.append(seconds / candidates)
            self.fetch = statistics.median(self._fetches)


@dataclass(frozen=True)
class _Plan:
    """What passes one query's filter: a list of labels (few pass), or a mask, or every live item."""

    labels: Labels | None  # ascending
    mask: Mask | None
    count: int  # items that pass
    cap: int  # results per crowding tag, 0 for no cap


class Planner:
    """Answers one served index version's filtered queries. Thread-safe; holds no per-query state.

    ``vectors`` is the artifact's float32 copy of the vectors (or None): exact scans read it
    instead of ``Backend.get_vectors``, which is a call per item for hnswlib and Annoy, except
    for labels written since the artifact was loaded.
    """

    def __init__(
        self,
        nearest: Nearest,
        backend: Backend,
        store: AttributeStore,
        labels_of: Callable[[Sequence[str]], Labels],
        vectors: Matrix | None = None,
    ) -> None:
        self._nearest = nearest
        self._backend = backend
        self._store = store
        self._labels_of = labels_of
        self._vectors = vectors
        self._norms: Matrix | None = None
        #: Filters whose narrowest allow namespace holds at most size / list_share postings are
        #: listed from the posting lists; public, like ``costs``, for tools and tests.
        self.list_share = LIST_SHARE
        # First guesses, from measurements at 128 dimensions (docs/filters.md); then learnt.
        per_dimension = 1e-9 if vectors is not None else 2e-7
        self.costs = Costs(scan=backend.dimension * per_dimension, fetch=backend.dimension * 1e-8)

    def search(
        self,
        queries: Matrix,
        ks: Sequence[int],
        params: Sequence[Mapping[str, float]],
        filters: Sequence[Filter | None],
        *,
        threads: int = 1,
    ) -> list[Answer]:
        """One answer per query, each with its own k, params and filter (None: no filter)."""
        table = self._store.table
        answers: list[Answer | None] = [None] * len(queries)
        plain: dict[tuple[tuple[str, float], ...], list[int]] = {}
        filtered: list[tuple[int, Filter]] = []
        for row, query_filter in enumerate(filters):
            if query_filter is None:
                plain.setdefault(_key(params[row]), []).append(row)
            else:
                filtered.append((row, query_filter))
        for rows in plain.values():  # one backend call per params shared, for the largest k among its rows
            deadline.check()
            k = max(ks[row] for row in rows)
            labels, distances = self._nearest(queries[rows], k, params[rows[0]], threads=threads)
            for row, found, dist in zip(rows, labels, distances, strict=True):
                found, dist = found[: ks[row]], dist[: ks[row]]
                keep = found >= 0
                answers[row] = Answer(found[keep], dist[keep], Strategy.INDEX, not keep.all())
        per_pass = max(1, _MASK_BUDGET // max(table.size, 1))
        for start in range(0, len(filtered), per_pass):
            plans = {row: self._plan(table, query_filter) for row, query_filter in filtered[start : start + per_pass]}
            self._filtered(queries, ks, params, plans, table, threads, answers)
        return [a for a in answers if a is not None]

    def _plan(self, table: Table, query_filter: Filter) -> _Plan:
        allow, deny, cap = query_filter.allow, query_filter.deny, query_filter.max_per_tag
        excluded = self._labels_of(query_filter.exclude_ids) if query_filter.exclude_ids else None
        listed, mask = table.select(allow, deny, table.size // self.list_share) if allow or deny else (None, None)
        if listed is not None:
            if excluded is not None:
                listed = listed[~np.isin(listed, excluded)]
            return _Plan(listed, None, len(listed), cap)
        if excluded is not None:
            if mask is None:
                mask = table.live.copy()
            mask[excluded[excluded < table.size]] = False
        count = table.live_count if mask is None else int(np.count_nonzero(mask))
        return _Plan(None, mask, count, cap)

    def _filtered(
        self,
        queries: Matrix,
        ks: Sequence[int],
        params: Sequence[Mapping[str, float]],
        plans: dict[int, _Plan],
        table: Table,
        threads: int,
        answers: list[Answer | None],
    ) -> None:
        available = len(self._backend)
        fetch: dict[int, int] = {}
        for row, plan in plans.items():
            k = ks[row]
            size = min(available, max(k, math.ceil(MARGIN * k * max(table.live_count, 1) / max(plan.count, 1))))
            if plan.count <= k or self._cheaper_to_scan(plan, size):
                deadline.check()  # each scan is a step of its own: stop when the caller has given up
                answers[row] = self._scan(queries[row], plan, k, table)
            else:
                fetch[row] = size
        while fetch:
            groups: dict[tuple[int, tuple[tuple[str, float], ...]], list[int]] = {}
            for row, size in fetch.items():
                groups.setdefault((size, _key(params[row])), []).append(row)
            fetch = {}
            for (size, _), rows in groups.items():
                deadline.check()
                started = time.perf_counter()
                labels, distances = self._nearest(queries[rows], size, params[rows[0]], threads=threads)
                self.costs.learn_fetch(time.perf_counter() - started, size * len(rows))
                for row, found, dist in zip(rows, labels, distances, strict=True):
                    plan, k = plans[row], ks[row]
                    kept, kept_distances = _passing(found, dist, plan, table)
                    if len(kept) >= k:
                        answers[row] = Answer(kept[:k], kept_distances[:k], Strategy.OVERFETCH, False)
                    elif size >= available or self._cheaper_to_scan(plan, size * GROWTH):
                        deadline.check()
                        answers[row] = self._scan(queries[row], plan, k, table)
                    else:
                        fetch[row] = min(available, size * GROWTH)

    def _cheaper_to_scan(self, plan: _Plan, fetch: int) -> bool:
        return plan.count * self.costs.scan <= fetch * self.costs.fetch

    def _scan(self, query: Matrix, plan: _Plan, k: int, table: Table) -> Answer:
        """The exact answer over every passing item."""
        if plan.labels is not None:
            labels = plan.labels
        else:
            labels = np.flatnonzero(table.live if plan.mask is None else plan.mask)
        if not len(labels):
            return Answer(labels, np.empty(0, np.float32), Strategy.EXACT_SCAN, True)
        started = time.perf_counter()
        vectors, squared_norms = self._gather(labels, table)
        scores = ranking.scores(vectors, squared_norms, query, self._backend.metric)
        # Pick a shortlist on the fast scores, then rank it on exact distances: a few spare
        # candidates absorb the rounding of the fast ones.
        spare = 2 * k + 8
        if plan.cap:
            order = _crowded_order(scores, table.tags[labels], plan.cap, spare)
        elif len(scores) > spare:
            order = scores.argpartition(spare - 1)[:spare]
        else:
            order = np.arange(len(scores))
        exact = ranking.distances(vectors[order], query, self._backend.metric)
        ranked = np.argsort(exact, kind="stable")[:k]
        self.costs.learn_scan(time.perf_counter() - started, len(labels))
        return Answer(labels[order[ranked]], exact[ranked], Strategy.EXACT_SCAN, len(ranked) < k)

    def _gather(self, labels: Labels, table: Table) -> tuple[Matrix, Matrix]:
        """The vectors of ascending ``labels`` and their squared norms: from the copy where it is
        current, else from the backend."""
        copy = self._vectors
        if copy is None:
            vectors = self._backend.get_vectors(labels)
            return vectors, ranking.squared_norms(vectors)
        norms = self._copy_norms(copy)
        if not table.any_changed and labels[-1] < len(copy):
            return np.take(copy, labels, axis=0), np.take(norms, labels)  # take: faster than copy[labels]
        current = labels < len(copy)
        current[current] = ~table.changed[labels[current]]
        out = np.empty((len(labels), self._backend.dimension), np.float32)
        out[current] = np.take(copy, labels[current], axis=0)
        if not current.all():
            out[~current] = self._backend.get_vectors(labels[~current])
        squared = np.empty(len(labels), np.float32)
        squared[current] = np.take(norms, labels[current])
        squared[~current] = ranking.squared_norms(out[~current])
        return out, squared

    def _copy_norms(self, copy: Matrix) -> Matrix:
        """The squared norm of every row of the copy, computed once (two racing scans both compute it)."""
        if self._norms is None:
            self._norms = ranking.squared_norms(copy)
        return self._norms


def _passing(labels: Labels, distances: Matrix, plan: _Plan, table: Table) -> tuple[Labels, Matrix]:
    """The candidates (nearest first) that pass the filter and the crowding cap."""
    keep = labels >= 0
    if plan.labels is not None:
        keep[keep] = _among(labels[keep], plan.labels)
    elif plan.mask is not None:
        keep &= labels < len(plan.mask)  # a label the store was not told about yet does not pass
        keep[keep] = plan.mask[labels[keep]]
    labels, distances = labels[keep], distances[keep]
    if plan.cap:
        within = ranking.crowd(_tags(table, labels), plan.cap)
        labels, distances = labels[within], distances[within]
    return labels, distances


def _among(labels: Labels, ascending: Labels) -> Mask:
    """Which of ``labels`` are in the ascending array ``ascending`` (binary search)."""
    if not len(ascending):
        return np.zeros(len(labels), np.bool_)
    at = np.minimum(np.searchsorted(ascending, labels), len(ascending) - 1)
    found: Mask = ascending[at] == labels
    return found


def _crowded_order(scores: Matrix, tags: npt.NDArray[np.int32], cap: int, wanted: int) -> Labels:
    """Positions of the ``wanted`` best ``scores`` that respect the crowding cap, best first."""
    shortlist = min(len(scores), 4 * wanted)
    while True:
        top = np.argpartition(scores, shortlist - 1)[:shortlist] if shortlist < len(scores) else np.arange(len(scores))
        top = top[np.argsort(scores[top], kind="stable")]
        kept = top[ranking.crowd(tags[top], cap)]
        if len(kept) >= wanted or shortlist == len(scores):
            return kept[:wanted]
        shortlist = min(len(scores), shortlist * GROWTH)


def _tags(table: Table, labels: Labels) -> npt.NDArray[np.int32]:
    inside = labels < table.size
    if inside.all():
        return table.tags[labels]
    out = np.full(len(labels), NO_TAG, np.int32)
    out[inside] = table.tags[labels[inside]]
    return out


def _key(params: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(params.items()))
