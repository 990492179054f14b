"""faiss-ivf's own rules, beyond the conformance kit: how many lists a build makes, and how far a
filtered search reads when the query's nearest items are left out."""

from __future__ import annotations

import numpy as np
import pytest

from flux.datasets import clustered
from flux_backends.faiss_ivf import COVER, FaissIvfBackend
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


def test_leaving_out_the_nearest_items_reads_lists_holding_cover_times_the_depth() -> None:
    """With the 600 nearest of 6,000 left out, the depth the planner would ask (600 excluded + 1.5k)
    finds the exact answer; a search limited to the default lists finds none of it."""
    n, k = 6_000, 10
    index = _build(n)
    vectors = clustered(n, 16, seed=3)
    query = vectors[:1] + np.float32(0.01)
    order = np.argsort(((vectors - query) ** 2).sum(axis=1), kind="stable")
    allowed = Allowed(excluded=np.sort(order[:600]))
    params = defaults(FaissIvfBackend.search_params)
    labels, _ = index.search_filtered(query, k, params, allowed, depth=600 + 15)
    assert labels[0].tolist() == order[600 : 600 + k].tolist()
    shallow, _ = index.search_filtered(query, k, params, allowed, depth=k)
    assert len(np.intersect1d(shallow[0], order[600 : 600 + k])) < k
    assert n > COVER * (600 + 15)  # the deep search did not simply read every list
