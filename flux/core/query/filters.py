"""The filter planner: answers queries that carry a filter, choosing how per query.

A filter keeps items by their restrict tokens (allow, deny), leaves ids out, and caps how
many results share a crowding tag. An approximate index searched first and filtered after
loses recall when few items pass, or when the items left out are the query's nearest (a
user's already-played tracks), so each query is planned from the number of items that pass
its filter, counted exactly from the posting lists (a boolean mask over labels; for tokens of
one namespace that gives each item at most one token, each label's token, so that over-fetch
looks up only its candidates):

* ``EXACT_SCAN``: distances to every passing item. Chosen when that is the cheaper way (few
  items pass, or the other ways would have to reach far), and whenever the others fail.
* ``NATIVE_FILTER``: the backend's own filtered search (``Backend.search_filtered``, for a
  backend that declares ``filterable``), given the mask (or, for a filter that only leaves ids
  out, their labels alone) and a depth: how many of the nearest items it must take in, from the
  share that passes; when its answer lies beyond excluded items (counted from their distances),
  it is asked again as deep as they reach. A query that leaves out more items than that depth
  is over-fetched once first: when k pass there (the items left out lie away from the query, as
  a listening history spread over the catalogue does) that is its answer, and when none passes
  (they fill its neighbourhood) the push-down reaches past all of them at once.
* ``OVERFETCH``: ask the index for k' = 2 k / selectivity neighbours, keep those that pass
  (and the crowding cap), and ask again, deeper, until k pass within the first three quarters
  of what it returned (the tail of an approximate list is where it misses most).

The choice compares costs that ``flux.core.query.costs`` computes from counts and measured
constants, fixed when the index loads: never from timings of the searches being served, so the
same request always takes the same path and gets the same answer. docs/filters.md has the
measurements, and why hnswlib's own filter (a Python call per candidate) is not used. How an
exact scan ranks, and the crowding cap, are ``flux.core.query.ranking``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from flux.core.query import deadline, ranking
from flux.core.query.costs import Costs
from flux.core.query.model import MAX_EXCLUDE_IDS, Answer, Filter, Nearest, Strategy
from flux.core.query.scan import ExactScan, among, tags_of
from flux_core.backend import Allowed, Backend, Labels, Matrix
from flux_core.storage.attribute_table import Mask, OneOf, Table
from flux_core.storage.attributes import AttributeStore

__all__ = ["MAX_EXCLUDE_IDS", "Answer", "Filter", "Nearest", "Planner", "Strategy"]

#: Over-fetch asks for this many times the neighbours that should pass, at the filter's selectivity.
MARGIN = 2.0
#: Each further over-fetch asks for at least this many times more, when too few passed.
GROWTH = 4
#: An over-fetch is kept when its k-th passing candidate lies within this share of what the index
#: returned; further out, it is asked again for twice that position.
DEEP = 0.75
#: When no candidate of an over-fetch passed, the next one asks for this many times the excluded items
#: plus those that hold k passing ones: the k-th passing then lands within ``DEEP`` of the list.
REACH = 1.5
#: Push-down takes in this many times the items that hold k passing ones (faiss gathers passing
#: items from every node its beam visits, not only from the beam, so less than ``MARGIN`` does).
PUSH_MARGIN = 1.5
#: Filter masks of one batch pass stay under this many bytes; larger batches go in several passes.
_MASK_BUDGET = 1 << 26
#: When an allow namespace holds at most 1/LIST_SHARE of the labels, the passing labels are listed
#: from the posting lists instead of marked in a mask over every label.
LIST_SHARE = 16


#: A row's search params as a key: rows that share it (and k, or depth) share a backend call.
_ParamsKey = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class _Plan:
    """What passes one query's filter: a list of labels (few pass), or a mask, or every live item
    but the excluded ones."""

    labels: Labels | None  # ascending
    mask: Mask | None
    count: int  # items that pass
    rest: int  # items that pass allow and deny, exclusions aside
    excluded: Labels  # excluded labels that would pass otherwise, ascending
    cap: int  # results per crowding tag, 0 for no cap
    #: Instead of ``mask``, for one single-valued namespace: who passes, asked per label (excluded aside).
    one_of: OneOf | None = None

    @property
    def restricted(self) -> bool:
        """Whether allow or deny restricts narrow the items (listed, masked or asked per label);
        without them, ``excluded`` alone tells what passes, and no mask over every label is built."""
        return self.labels is not None or self.mask is not None or self.one_of is not None


class _Probe(NamedTuple):
    """What a query's first over-fetch found: its answer, or whether no candidate passed."""

    answer: Answer | None
    crowded_out: bool


@dataclass
class _Pushed:
    """A query answered by push-down: how deep it is searched, for how many results."""

    depth: int
    want: int
    excluded_distances: Matrix | None = None  # of ``_Plan.excluded``, computed when first needed


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
        excluded_of: Callable[[Filter], Labels],
        vectors: Matrix | None = None,
    ) -> None:
        self._nearest = nearest
        self._backend = backend
        self._store = store
        self._excluded_of = excluded_of
        self._exact = ExactScan(backend, vectors)
        self._native = type(backend).capabilities.filterable
        #: A search beam (``ef``, as the backend interface names it) takes in at least the results asked for.
        self._beam = "ef" in type(backend).search_params
        #: Filters whose narrowest allow namespace holds at most size / list_share postings are
        #: listed from the posting lists; public, like ``costs``, for tools and tests.
        self.list_share = LIST_SHARE
        #: Fixed for the life of the index (flux.core.query.costs): answers never depend on timings.
        self.costs = Costs.of(backend.name, backend.dimension, copy=vectors is not None)

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
        plain: dict[tuple[int, _ParamsKey], list[int]] = {}
        filtered: list[tuple[int, Filter]] = []
        for row, query_filter in enumerate(filters):
            if query_filter is None:
                plain.setdefault((ks[row], _key(params[row])), []).append(row)
            else:
                filtered.append((row, query_filter))
        self._unfiltered(queries, params, plain, threads, answers)
        per_pass = max(1, _MASK_BUDGET // max(table.size, 1))
        for start in range(0, len(filtered), per_pass):
            shared: dict[int, _Plan] = {}  # rows of a batch that share a filter share its plan
            plans = {}
            for row, query_filter in filtered[start : start + per_pass]:
                plan = shared.get(id(query_filter))
                if plan is None:
                    plan = shared[id(query_filter)] = self._plan(table, query_filter)
                plans[row] = plan
            self._filtered(queries, ks, params, plans, table, threads, answers)
        return [a for a in answers if a is not None]

    def _unfiltered(
        self,
        queries: Matrix,
        params: Sequence[Mapping[str, float]],
        groups: Mapping[tuple[int, _ParamsKey], list[int]],
        threads: int,
        answers: list[Answer | None],
    ) -> None:
        """Answer rows with nothing to filter by the backend's plain search, one call per k and params
        shared: a graph widens its beam to k, so rows searched at another row's larger k would get
        answers Search does not give them."""
        for (k, _), rows in groups.items():
            deadline.check()
            labels, distances = self._nearest(queries[rows], k, params[rows[0]], threads=threads)
            for row, found, dist in zip(rows, labels, distances, strict=True):
                keep = found >= 0
                answers[row] = Answer(found[keep], dist[keep], Strategy.INDEX, not keep.all())

    def _plan(self, table: Table, query_filter: Filter) -> _Plan:
        allow, deny, cap = query_filter.allow, query_filter.deny, query_filter.max_per_tag
        excluded = None
        if query_filter.exclude_ids or len(query_filter.exclude_id_hashes):
            excluded = _ascending(self._excluded_of(query_filter))
        none = np.empty(0, np.int64)
        list_limit = table.size // self.list_share
        one_of = None if deny else table.one_of(allow, list_limit)
        if one_of is not None:  # many pass: over-fetch can ask per candidate, without a mask over every label
            if excluded is None:
                return _Plan(None, None, one_of.count, one_of.count, none, cap, one_of)
            excluded = excluded[excluded < table.size]
            passing = excluded[one_of.holds(excluded)]
            return _Plan(None, None, one_of.count - len(passing), one_of.count, passing, cap, one_of)
        listed, mask = table.select(allow, deny, list_limit) if allow or deny else (None, None)
        if listed is not None:
            rest = len(listed)
            if excluded is not None:
                out = among(excluded, listed)
                listed = listed[~among(listed, excluded)]
                return _Plan(listed, None, len(listed), rest, excluded[out], cap)
            return _Plan(listed, None, rest, rest, none, cap)
        rest = table.live_count if mask is None else int(np.count_nonzero(mask))
        if excluded is None:
            return _Plan(None, mask, rest, rest, none, cap)
        known = excluded[excluded < table.size]
        if mask is None:  # only ids left out: they stay a list, with no mask over every label to build
            # Labels past the table are items a write is adding now (ids, backend, then attributes):
            # left out all the same, since nothing else stops the backend returning them.
            left_out = known[table.live[known]]
            return _Plan(
                None, None, rest - len(left_out), rest, np.concatenate((left_out, excluded[len(known) :])), cap
            )
        excluded = known
        passing = excluded[mask[excluded]]  # those the restricts let through: they alone change the count
        mask[passing] = False
        return _Plan(None, mask, rest - len(passing), rest, passing, cap)

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
        live = max(table.live_count, 1)
        fetch: dict[int, int] = {}
        pushed: dict[int, _Pushed] = {}
        unfiltered: dict[tuple[int, _ParamsKey], list[int]] = {}
        for row, plan in plans.items():
            k = ks[row]
            if not (plan.restricted or len(plan.excluded) or plan.cap):  # it leaves nothing out (ids not held)
                unfiltered.setdefault((k, _key(params[row])), []).append(row)
                continue
            cheapest = self.costs.scan(plan.count, table.size)
            way: _Pushed | int | None = None  # push-down, an over-fetch of this many, or (None) the scan
            if plan.count > k and self._native:
                want = k if not plan.cap else min(available, GROWTH * k)
                depth = _depth(want, plan, live, available)
                if len(plan.excluded) > depth:
                    probed = self._probe(queries[row], k, params[row], plan, table)
                    if probed.answer is not None:  # the excluded items lie elsewhere: the over-fetch found k
                        answers[row] = probed.answer
                        continue
                    if probed.crowded_out:
                        depth = _depth(want, plan, live, available, len(plan.excluded))  # reach past them all
                if (cost := self.costs.native(depth, table.size, masked=plan.restricted)) < cheapest:
                    cheapest, way = cost, _Pushed(depth, want)
            # A filterable backend over-fetches too when nothing is excluded and that is cheaper (no
            # mask over every label to build); past excluded items only push-down reaches cheaply.
            if plan.count > k and not (self._native and len(plan.excluded)):
                size = _first_fetch(k, plan, live, available)
                if self.costs.fetch(size, table.size) < cheapest:
                    way = size
            if isinstance(way, _Pushed):
                pushed[row] = way
                continue
            if way is not None:
                fetch[row] = way
                continue
            deadline.check()  # each scan is a step of its own: stop when the caller has given up
            answers[row] = self._scan(queries[row], plan, k, table)
        self._unfiltered(queries, params, unfiltered, threads, answers)
        if pushed:
            self._push_down(queries, ks, params, plans, pushed, table, threads, answers)
        while fetch:
            fetch = self._fetch_round(queries, ks, params, plans, fetch, table, threads, answers)

    def _fetch_round(
        self,
        queries: Matrix,
        ks: Sequence[int],
        params: Sequence[Mapping[str, float]],
        plans: dict[int, _Plan],
        fetch: dict[int, int],
        table: Table,
        threads: int,
        answers: list[Answer | None],
    ) -> dict[int, int]:
        """One over-fetch for every row of ``fetch`` (row -> candidates); returns the rows to fetch again."""
        available = len(self._backend)
        groups: dict[tuple[int, _ParamsKey], list[int]] = {}
        for row, size in fetch.items():
            fetched = min(available, with_slack(size, ks[row], params[row])) if self._beam else size
            groups.setdefault((fetched, _key(params[row])), []).append(row)
        again: dict[int, int] = {}
        for (fetched, _), rows in groups.items():
            deadline.check()
            labels, distances = self._nearest(queries[rows], fetched, params[rows[0]], threads=threads)
            for row, found, dist in zip(rows, labels, distances, strict=True):
                plan, k, size = plans[row], ks[row], fetch[row]
                found, dist = found[:size], dist[:size]
                positions = _passing(found, plan, table)
                taken = _taken(found, dist, positions, k, size, available)
                if taken is not None:
                    answers[row] = taken
                    continue
                if len(positions) >= k:  # enough pass, but far down the list: ask as deep again as the k-th
                    wider = min(available, max(size + 1, math.ceil(MARGIN * (positions[k - 1] + 1))))
                elif len(positions) or not len(plan.excluded):
                    wider = min(available, size * GROWTH)
                else:  # nothing passed: excluded items fill the neighbourhood; reach past them all at once
                    reach = len(plan.excluded) + k * max(table.live_count, 1) / max(plan.rest, 1)
                    wider = min(available, max(size * GROWTH, math.ceil(REACH * reach)))
                if size >= available or self.costs.scan(plan.count, table.size) <= self.costs.fetch(wider, table.size):
                    deadline.check()
                    answers[row] = self._scan(queries[row], plan, k, table)
                else:
                    again[row] = wider
        return again

    def _push_down(
        self,
        queries: Matrix,
        ks: Sequence[int],
        params: Sequence[Mapping[str, float]],
        plans: dict[int, _Plan],
        pushed: dict[int, _Pushed],
        table: Table,
        threads: int,
        answers: list[Answer | None],
    ) -> None:
        """Answer the rows of ``pushed`` by the backend's filtered search, deeper where excluded items
        lie around the answer, or by a scan when that becomes the cheaper way."""
        available = len(self._backend)
        live = max(table.live_count, 1)
        selections: dict[int, Allowed] = {}
        while pushed:
            groups: dict[tuple[int, int, int, _ParamsKey], list[int]] = {}
            for row, state in pushed.items():
                groups.setdefault((id(plans[row]), state.depth, state.want, _key(params[row])), []).append(row)
            again: dict[int, _Pushed] = {}
            for (plan_id, depth, want, _), rows in groups.items():
                deadline.check()
                plan = plans[rows[0]]
                allowed = selections.get(plan_id)
                if allowed is None:
                    allowed = selections[plan_id] = _allowed(plan, table)
                labels, distances = self._backend.search_filtered(
                    queries[rows], want, params[rows[0]], allowed, depth, threads=threads
                )
                for row, found, dist in zip(rows, labels, distances, strict=True):
                    state, k = pushed[row], ks[row]
                    real = int(np.count_nonzero(found >= 0))
                    found, dist = found[:real], dist[:real]
                    kept = (
                        np.flatnonzero(ranking.crowd(tags_of(table, found), plan.cap)) if plan.cap else np.arange(real)
                    )
                    if len(kept) >= k:
                        # Within the k-th result's distance lie the results before it and the excluded
                        # items nearer than it: a search that took in fewer missed some of them. A
                        # search deep enough for every excluded item needs no count of them.
                        nearer = len(plan.excluded)
                        if depth < _depth(int(kept[k - 1]) + 1, plan, live, available, nearer):
                            nearer = self._excluded_within(queries[row], plan, state, float(dist[kept[k - 1]]), table)
                        needed = _depth(int(kept[k - 1]) + 1, plan, live, available, nearer)
                        if needed <= depth or depth >= available:
                            answers[row] = Answer(found[kept[:k]], dist[kept[:k]], Strategy.NATIVE_FILTER, False)
                            continue
                        state = _Pushed(max(needed, 2 * depth), want, state.excluded_distances)
                    elif real < want or want >= available:  # fewer than ``want`` pass in the whole index
                        answers[row] = Answer(found[kept], dist[kept], Strategy.NATIVE_FILTER, True)
                        continue
                    else:  # the crowding cap held too many back: ask for more results
                        wider = min(available, want * GROWTH)
                        deeper = max(depth, _depth(wider, plan, live, available))
                        state = _Pushed(deeper, wider, state.excluded_distances)
                    state.depth = min(state.depth, available)
                    if self.costs.scan(plan.count, table.size) <= self.costs.native(
                        state.depth, table.size, masked=plan.restricted
                    ):
                        deadline.check()
                        answers[row] = self._scan(queries[row], plan, k, table)
                    else:
                        again[row] = state
            pushed = again

    def _probe(self, query: Matrix, k: int, params: Mapping[str, float], plan: _Plan, table: Table) -> _Probe:
        """The first over-fetch of a query that excludes more items than a push-down would take in:
        its answer when k candidates pass (the excluded items lie away from the query, as a history
        spread over the catalogue does), else whether none passes (they fill its neighbourhood).

        A shallow filtered search would then find no passing item near the query, and a library
        that widens its beam until k pass (faiss.py does) would pay for every width on the way.
        One unfiltered search of the first over-fetch's size tells, for about its cost."""
        available = len(self._backend)
        size = _first_fetch(k, plan, max(table.live_count, 1), available)
        fetched = min(available, with_slack(size, k, params)) if self._beam else size
        deadline.check()
        labels, distances = self._nearest(query[None], fetched, params)
        found, dist = labels[0][:size], distances[0][:size]
        positions = _passing(found, plan, table)
        return _Probe(_taken(found, dist, positions, k, size, available), not len(positions))

    def _excluded_within(self, query: Matrix, plan: _Plan, state: _Pushed, radius: float, table: Table) -> int:
        """How many excluded items (that would pass otherwise) lie nearer the query than ``radius``."""
        if not len(plan.excluded):
            return 0
        if state.excluded_distances is None:
            vectors, squared = self._exact.gather(plan.excluded, table)
            state.excluded_distances = ranking.rough_distances(vectors, squared, query, self._backend.metric)
        return int(np.count_nonzero(state.excluded_distances < radius))

    def _scan(self, query: Matrix, plan: _Plan, k: int, table: Table) -> Answer:
        """The exact answer over every passing item."""
        swept = None
        if plan.labels is None and plan.count and self.costs.sweeps(plan.count, table.size):
            swept = self._exact.swept(query, _mask_of(plan, table), k, plan.cap, table)
        if swept is None:
            labels = plan.labels if plan.labels is not None else np.flatnonzero(_mask_of(plan, table))
            swept = self._exact(query, labels, k, plan.cap, table)
        found, distances = swept
        return Answer(found, distances, Strategy.EXACT_SCAN, len(found) < k)


def _depth(wanted: int, plan: _Plan, live: int, available: int, excluded: int = 0) -> int:
    """How many of the nearest items hold ``wanted`` passing ones beside ``excluded`` excluded ones,
    the restricts passing ``plan.rest`` of ``live`` items; the margin goes to the passing ones only
    (the excluded ones are counted exactly)."""
    share = live / max(plan.rest, 1)
    return min(available, max(wanted + excluded, math.ceil((excluded + PUSH_MARGIN * wanted) * share)))


def _allowed(plan: _Plan, table: Table) -> Allowed:
    """The passing items as push-down hands them to the backend: the excluded labels alone when no
    restrict applies (a user's played tracks left out), else a mask over labels."""
    if plan.restricted:
        return Allowed(_read_only(_mask_of(plan, table)))
    return Allowed(excluded=_read_only(plan.excluded))


def _read_only(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A view the backend cannot write through: the plan's arrays serve every row of its queries."""
    view = array.view()
    view.flags.writeable = False
    return view


def _mask_of(plan: _Plan, table: Table) -> Mask:
    """The passing items as a mask over labels."""
    if plan.mask is not None:
        return plan.mask
    if plan.labels is not None:
        mask = np.zeros(table.size, np.bool_)
        mask[plan.labels] = True
        return mask
    if not len(plan.excluded):
        return table.live if plan.one_of is None else plan.one_of.mask()
    mask = table.live.copy() if plan.one_of is None else plan.one_of.mask()
    mask[plan.excluded[plan.excluded < len(mask)]] = False  # labels past it do not pass anyway
    return mask


def _passing(labels: Labels, plan: _Plan, table: Table) -> npt.NDArray[np.intp]:
    """Positions of the candidates (nearest first) that pass the filter and the crowding cap."""
    keep = labels >= 0
    if plan.labels is not None:
        keep[keep] = among(labels[keep], plan.labels)
    elif plan.mask is not None:
        keep &= labels < len(plan.mask)  # a label the store was not told about yet does not pass
        keep[keep] = plan.mask[labels[keep]]
    elif plan.one_of is not None:
        keep &= labels < table.size
        keep[keep] = plan.one_of.holds(labels[keep])
    if plan.mask is None and plan.labels is None and len(plan.excluded):  # not taken out of a mask or list
        keep[keep] = ~among(labels[keep], plan.excluded)
    positions = np.flatnonzero(keep)
    if plan.cap:
        positions = positions[ranking.crowd(tags_of(table, labels[positions]), plan.cap)]
    return positions


def _first_fetch(k: int, plan: _Plan, live: int, available: int) -> int:
    """How many candidates a query's first over-fetch asks for: MARGIN x k over the share that passes."""
    return min(available, max(k, math.ceil(MARGIN * k * live / max(plan.count, 1))))


def _taken(
    found: Labels, distances: Matrix, positions: npt.NDArray[np.intp], k: int, size: int, available: int
) -> Answer | None:
    """An over-fetch's answer: its first k passing candidates (``positions``), kept when they lie
    within ``DEEP`` of the ``size`` asked for (or it asked for every item); else None."""
    if len(positions) >= k and (size >= available or positions[k - 1] < DEEP * size):
        kept = positions[:k]
        return Answer(found[kept], distances[kept], Strategy.OVERFETCH, False)
    return None


def with_slack(size: int, k: int, params: Mapping[str, float]) -> int:
    """How many candidates to ask a backend with a search beam (``ef``, which takes in at least as
    many items as are asked for) for, so that its first ``size`` are found as thoroughly as ``params``
    find k: the beam keeps the places it had beyond the k results. The tail of a list the beam barely
    holds is where it misses most: at 50% selectivity hnsw's ef 64 over 40 candidates found 0.988 of
    the exact answer, a beam of 94 found 0.994 (docs/filters.md). Asking for more, rather than
    raising ``ef``, keeps the search in the same ``ef`` as unfiltered ones: hnswlib's is one setting
    per index, and searches that differ in it take turns."""
    return size + max(0, int(params["ef"]) - k)


def _ascending(labels: Labels) -> Labels:
    """``labels`` sorted, each once (np.unique hashes first: ten times slower on 10,000 labels)."""
    labels = np.sort(labels)
    return labels[np.concatenate(([True], labels[1:] != labels[:-1]))] if len(labels) else labels


def _key(params: Mapping[str, float]) -> _ParamsKey:
    return tuple(sorted(params.items()))
