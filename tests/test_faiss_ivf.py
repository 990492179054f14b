"""faiss-ivf's own rules, beyond the conformance kit: how many lists a build makes, and how far a
filtered search reads when the query's nearest items are left out."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from flux.datasets import clustered
from flux_backends import faiss_ivf
from flux_backends.faiss_ivf import COVER, FaissIvfBackend, default_nprobe
from flux_core.backend import Allowed, Metric, defaults


def _build(n: int, **params: float) -> FaissIvfBackend:
    vectors = clustered(n, 16, seed=3)
    return FaissIvfBackend.build(vectors, Metric.L2, {**defaults(FaissIvfBackend.build_params), **params}, threads=2)


@pytest.mark.parametrize(
    ("count", "asked", "lists"),
    [
        (10_000, 0, 100),  # the square root of the items
        (2_000, 0, 44),
        (1_000, 0, 25),  # k-means wants 39 items a list: 1,000 // 39, not 31
        (20, 0, 1),
        (500, 64, 64),  # asked for: as many as asked, even below 39 items a list
        (50, 200, 50),  # never more lists than items
    ],
)
def test_a_build_makes_as_many_lists_as_the_items_can_train(count: int, asked: int, lists: int) -> None:
    assert _build(count, nlist=asked).stats()["nlist"] == lists


def test_leaving_out_the_nearest_items_reads_lists_holding_cover_times_the_depth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the 600 nearest of 6,000 left out, the depth the planner would ask (600 excluded + 1.5k)
    finds the exact answer; a search asked for no depth misses it, unless it reads further because
    its answers came from the outer lists it read."""
    n, k = 6_000, 10
    index = _build(n)
    vectors = clustered(n, 16, seed=3)
    query = vectors[:1] + np.float32(0.01)
    order = np.argsort(((vectors - query) ** 2).sum(axis=1), kind="stable")
    allowed = Allowed(excluded=np.sort(order[:600]))
    params = defaults(FaissIvfBackend.search_params)
    labels, _ = index.search_filtered(query, k, params, allowed, depth=600 + 15)
    assert labels[0].tolist() == order[600 : 600 + k].tolist()
    assert n > COVER * (600 + 15)  # the deep search did not simply read every list
    shallow, _ = index.search_filtered(query, k, params, allowed, depth=k)
    assert shallow[0].tolist() == order[600 : 600 + k].tolist()  # it read further
    monkeypatch.setattr(faiss_ivf, "FRONTIER", float("inf"))  # answers anywhere: it stops where it is
    shallow, _ = index.search_filtered(query, k, params, allowed, depth=k)
    assert len(np.intersect1d(shallow[0], order[600 : 600 + k])) < k


@pytest.mark.parametrize(("nlist", "probes"), [(447, 8), (1_000, 13), (2_236, 19), (5_422, 29), (4, 4)])
def test_the_default_nprobe_grows_with_the_square_root_of_the_lists(nlist: int, probes: int) -> None:
    assert default_nprobe(nlist) == probes


def test_nprobe_0_scans_the_index_s_default_lists() -> None:
    """2,500 lists: nprobe 0 answers as nprobe 20 does (sqrt(2,500) / 2.5), not as the old fixed 8."""
    index = _build(20_000, nlist=2_500)  # a search for 10 reads at least the lists holding 80 items: 10
    assert index.stats()["nprobe_default"] == 20
    queries = clustered(50, 16, seed=4)
    auto, _ = index.search(queries, 10, {"nprobe": 0})
    twenty, _ = index.search(queries, 10, {"nprobe": 20})
    eight, _ = index.search(queries, 10, {"nprobe": 8})
    assert np.array_equal(auto, twenty)
    assert not np.array_equal(auto, eight)


def test_a_filtered_search_reads_nprobe_lists_past_those_that_hold_the_depth() -> None:
    """Lists of 1,000 items, each query's 500 nearest left out: the lists holding 8 x the depth
    are 5, fewer than nprobe's 8, and taking the larger of the two found 0.93 of the exact answer;
    nprobe lists past them find 0.99."""
    n, excluded = 20_000, 500
    index = _build(n, nlist=20)
    vectors = clustered(n, 16, seed=3)
    found = []
    for query in clustered(60, 16, seed=4):
        order = np.argsort(((vectors - query) ** 2).sum(axis=1), kind="stable")
        allowed = Allowed(excluded=np.sort(order[:excluded]))
        params = defaults(FaissIvfBackend.search_params)
        labels, _ = index.search_filtered(query[None], 10, params, allowed, depth=excluded + 15)
        found.append(len(np.intersect1d(labels[0], order[excluded : excluded + 10])) / 10)
    assert np.mean(found) >= 0.98


def test_past_the_nearest_lists_a_search_reads_those_at_the_edge_of_the_excluded_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each query's 2,000 nearest of 20,000 left out: of the lists that hold 8 x the depth, those
    past the nearest that hold 4 x it are read only where excluded items lie beside others. faiss
    counts the items of the lists it reads: 8,400 a query against 15,400, and the answers are found
    as well (0.997 against 1.000). A row is read again when its answers reach the outer quarter of
    the lists read in nearness, not in the order read (9,600: the edge lists come last)."""
    n, excluded = 20_000, 2_000
    index = _build(n)
    vectors = clustered(n, 16, seed=3)
    params = defaults(FaissIvfBackend.search_params)
    visited = faiss.cvar.indexIVF_stats

    def run() -> tuple[float, int]:
        found, read = [], 0
        for query in clustered(30, 16, seed=4):
            order = np.argsort(((vectors - query) ** 2).sum(axis=1), kind="stable")
            allowed = Allowed(excluded=np.sort(order[:excluded]))
            visited.reset()
            labels, _ = index.search_filtered(query[None], 10, params, allowed, depth=excluded + 15)
            read += visited.ndis
            found.append(len(np.intersect1d(labels[0], order[excluded : excluded + 10])) / 10)
        return float(np.mean(found)), read

    edge_recall, edge_read = run()
    monkeypatch.setattr(faiss_ivf, "NEAR", float("inf"))  # every list that holds 8 x the depth
    all_recall, all_read = run()
    assert edge_read < 0.6 * all_read
    assert edge_recall >= 0.98
    assert edge_recall >= all_recall - 0.01


def test_a_search_for_many_neighbours_reads_past_nprobe_lists() -> None:
    """A search for 1,500 of 20,000 (20 lists) reads nprobe lists and the 11 more that 8 x 1,500
    items fill, not the larger of 8 and 12: its last neighbours are as well found as its first."""
    n, k = 20_000, 1_500
    index = _build(n, nlist=20)
    vectors = clustered(n, 16, seed=3)
    queries = clustered(20, 16, seed=4)
    labels, _ = index.search(queries, k, defaults(FaissIvfBackend.search_params))
    found = [
        len(np.intersect1d(row, np.argpartition(((vectors - query) ** 2).sum(axis=1), k)[:k])) / k
        for row, query in zip(labels, queries, strict=True)
    ]
    assert np.mean(found) >= 0.99


def test_a_filtered_search_whose_answers_reach_its_outer_lists_reads_twice_as_many() -> None:
    """100,000 items in 50 lists, each query's 1,000 nearest left out: answers that come from the
    outer quarter of the lists read likely have more further out; reading twice the lists then
    finds 0.989 of the exact answer, where stopping found 0.970."""
    n, excluded = 100_000, 1_000
    vectors = clustered(n, 32, seed=3)
    index = FaissIvfBackend.build(vectors, Metric.L2, {**defaults(FaissIvfBackend.build_params), "nlist": 50})
    params = defaults(FaissIvfBackend.search_params)
    found = []
    for query in clustered(100, 32, seed=4):
        near = np.argpartition(((vectors - query) ** 2).sum(axis=1), excluded + 10)[: excluded + 10]
        near = near[np.argsort(((vectors[near] - query) ** 2).sum(axis=1), kind="stable")]
        allowed = Allowed(excluded=np.sort(near[:excluded]))
        labels, _ = index.search_filtered(query[None], 10, params, allowed, depth=excluded + 15)
        found.append(len(np.intersect1d(labels[0], near[excluded:])) / 10)
    assert np.mean(found) >= 0.98


def test_a_row_read_again_reads_only_the_lists_it_has_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss counts the lists a search visits: a row read again over twice the lists reads the new
    ones and merges their answers with those it had (it read its first lists again each time: 10 +
    20 + 40 = 70 list reads of these 40 lists, before), and ends with the answer one read of every
    list gives."""
    n, k = 6_000, 10
    index = _build(n, nlist=40)
    vectors = clustered(n, 16, seed=3)
    query = vectors[:1] + np.float32(0.01)
    order = np.argsort(((vectors - query) ** 2).sum(axis=1), kind="stable")
    allowed = Allowed(excluded=np.sort(order[:100]))
    params = {**defaults(FaissIvfBackend.search_params), "nprobe": 8}
    monkeypatch.setattr(faiss_ivf, "FRONTIER", 0.0)  # every answer is "outer": read again until every list is read
    visited = faiss.cvar.indexIVF_stats
    visited.reset()
    labels, distances = index.search_filtered(query, k, params, allowed, depth=k)
    assert visited.nlist == 40
    assert labels[0].tolist() == order[100 : 100 + k].tolist()
    assert np.all(np.diff(distances[0]) >= 0)


@pytest.mark.parametrize("excluded", [10, 1_000])  # bits cleared one by one / a flag per label packed
def test_the_exclusion_bitmap_lets_faiss_skip_exactly_the_excluded_labels(excluded: int) -> None:
    backend = _build(2_000)
    left_out = np.sort(np.random.default_rng(excluded).choice(2_000, excluded, replace=False))
    bits, count = backend.filter_bits(Allowed(excluded=np.concatenate((left_out, [2_000, 5_000]))))  # past the end
    selector = backend.selector(bits)
    members = np.array([selector.is_member(label) for label in range(2_000)])
    expected = np.ones(2_000, np.bool_)
    expected[left_out] = False
    assert (members == expected).all()
    assert count == 2_000 - excluded
