"""Property: over random data, attributes and filters, a filtered answer never breaks its filter.

Whatever strategy answers (the planner's own choice, or each one forced through its costs;
faiss pushes the filter down into its search),
and however the passing items are held (listed from the posting lists, in a mask, or for a
namespace that gives each item one token at most, looked up per candidate),
no excluded id, no item outside the allow/deny restricts, and never more than the cap per
crowding tag comes back; the answer holds min(k, what can be returned) items, nearest first,
and ``fewer_than_k`` says exactly when fewer than k could be returned at all. The exact
backend must also give the exact filtered answer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux.core.query.costs import Costs
from flux.core.query.filters import Filter, Strategy
from flux.core.serving.index import ServedIndex
from flux_core.backend import Metric
from flux_core.storage import artifact, builder
from flux_core.storage.attributes import ItemAttributes

NAMESPACES = {"market": ["US", "SE", "DE"], "genre": ["rock", "jazz", "pop", "folk"], "bucket": ["b0", "b1", "b2"]}
#: Namespaces in which an item holds at most one token: the planner asks those per candidate, without a mask.
SINGLE_VALUED = {"bucket"}
TAGS = ["a", "b", "c", "d", ""]
COSTS = {
    "planner": None,
    "exact": Costs(4, gather=0.0, sweep=0.0, scan_fixed=0.0, fetch_fixed=1.0),  # scanning always looks cheaper
    # fetching (or pushing the filter down, for faiss) always looks cheaper
    "index": Costs(4, gather=1.0, sweep=1.0, fetch_fixed=0.0, fetch_per_value=0.0, fetch_squared=0.0),
}


@st.composite
def item_attributes(draw: st.DrawFn) -> ItemAttributes:
    restricts = {}
    for namespace, tokens in NAMESPACES.items():
        held = draw(st.lists(st.sampled_from(tokens), max_size=1 if namespace in SINGLE_VALUED else 2, unique=True))
        if held:
            restricts[namespace] = tuple(held)
    return ItemAttributes(restricts, draw(st.sampled_from(TAGS)))


@st.composite
def filters(draw: st.DrawFn, n: int) -> Filter:
    def restricts() -> list[tuple[str, list[str]]]:
        chosen = draw(st.lists(st.sampled_from(sorted(NAMESPACES)), max_size=2, unique=True))
        # Tokens may repeat, as a caller may send them: the filter keeps them, the table reads each once.
        return [(ns, draw(st.lists(st.sampled_from(NAMESPACES[ns]), min_size=1, max_size=6))) for ns in chosen]

    excluded = draw(st.lists(st.integers(0, n + 5), max_size=n))  # some ids the index does not hold
    made = Filter.create(
        allow=restricts(),
        deny=restricts(),
        exclude_ids=[f"id{i}" for i in excluded],
        max_per_tag=draw(st.integers(0, 3)),
    )
    return made if made is not None else Filter(allow={}, deny={}, exclude_ids=("id0",))


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, list[ItemAttributes], np.ndarray, Filter, int, tuple[str, bool]]:
    n = draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # Few distinct values, so that exact ties in distance occur.
    base = rng.integers(-3, 4, (n, 4)).astype(np.float32)
    query = rng.integers(-3, 4, 4).astype(np.float32)
    items = draw(st.lists(item_attributes(), min_size=n, max_size=n))
    planner = (draw(st.sampled_from(sorted(COSTS))), draw(st.booleans()))
    return base, items, query, draw(filters(n)), draw(st.integers(1, 25)), planner


def passes(items: list[ItemAttributes], query_filter: Filter) -> np.ndarray:
    excluded = set(query_filter.exclude_ids)
    return np.array(
        [
            f"id{label}" not in excluded
            and all(set(item.restricts.get(ns, ())) & set(tokens) for ns, tokens in query_filter.allow.items())
            and not any(set(item.restricts.get(ns, ())) & set(tokens) for ns, tokens in query_filter.deny.items())
            for label, item in enumerate(items)
        ],
        dtype=bool,
    )


def returnable(items: list[ItemAttributes], passing: np.ndarray, cap: int) -> int:
    """How many items one answer can hold at most: all that pass, at most ``cap`` per tag."""
    if not cap:
        return int(passing.sum())
    counts: dict[str, int] = {}
    for label in np.flatnonzero(passing).tolist():
        counts[items[label].crowding_tag] = counts.get(items[label].crowding_tag, 0) + 1
    return sum(c if tag == "" else min(c, cap) for tag, c in counts.items())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_filtered_answers_never_break_their_filter(
    case: tuple[np.ndarray, list[ItemAttributes], np.ndarray, Filter, int, tuple[str, bool]],
) -> None:
    base, items, query, query_filter, k, (costs, listed) = case
    passing = passes(items, query_filter)
    expected = min(k, returnable(items, passing, query_filter.max_per_tag))
    squared = ((base.astype(np.float64) - query) ** 2).sum(axis=1)
    held = {f"id{i}" for i in range(len(base))}
    leaves_nothing_out = not (query_filter.allow or query_filter.deny or query_filter.max_per_tag) and not (
        held & set(query_filter.exclude_ids)
    )
    with tempfile.TemporaryDirectory() as folder:
        for backend in ("exact", "hnsw", "faiss", "faiss-ivf"):
            path = Path(folder) / backend
            ids = [f"id{i}" for i in range(len(base))]
            builder.build(path, base, ids, backend=backend, metric=Metric.L2, name="p", attributes=items)
            index = ServedIndex("p", artifact.load(path))
            if COSTS[costs] is not None:
                index.planner.costs = COSTS[costs]  # type: ignore[assignment]
            index.planner.list_share = 1 if listed else 2**62  # passing items listed, or always in a mask
            answer = index.planner.search(query[None, :], [k], [index.default_params], [query_filter])[0]
            found = answer.labels.tolist()

            if leaves_nothing_out:  # only ids the index does not hold: answered as no filter
                assert answer.strategy == Strategy.INDEX
            else:
                assert answer.strategy in (Strategy.EXACT_SCAN, Strategy.OVERFETCH, Strategy.NATIVE_FILTER)
            assert len(set(found)) == len(found)
            assert passing[found].all(), "an excluded or restricted item came back"
            if query_filter.max_per_tag:
                tags = [items[label].crowding_tag for label in found if items[label].crowding_tag]
                assert all(tags.count(tag) <= query_filter.max_per_tag for tag in tags)
            assert len(found) == expected
            assert answer.fewer_than_k == (expected < k)
            np.testing.assert_allclose(answer.distances, squared[found], rtol=1e-5, atol=1e-4)
            assert (np.diff(answer.distances) >= 0).all()
            if backend == "exact":
                assert_exact(items, passing, squared, query_filter.max_per_tag, expected, answer.distances)


def assert_exact(
    items: list[ItemAttributes], passing: np.ndarray, squared: np.ndarray, cap: int, k: int, found: np.ndarray
) -> None:
    """The distances of the exact filtered answer (labels may differ between equally distant items)."""
    candidates = np.flatnonzero(passing)
    per_tag: dict[str, int] = {}
    best: list[float] = []
    for label in candidates[np.argsort(squared[candidates], kind="stable")].tolist():
        tag = items[label].crowding_tag
        if cap and tag and per_tag.get(tag, 0) >= cap:
            continue
        per_tag[tag] = per_tag.get(tag, 0) + 1
        best.append(float(squared[label]))
        if len(best) == k:
            break
    np.testing.assert_allclose(found, best, rtol=1e-5, atol=1e-4)
