"""The planner's own distances: the rough float32 ones it counts excluded items with agree with the
float64 ones it ranks by, in every metric."""

from __future__ import annotations

import numpy as np
import pytest

from flux.core.query import ranking
from flux_core.backend import Metric


@pytest.mark.parametrize("metric", list(Metric))
def test_rough_distances_agree_with_exact_ones(metric: Metric) -> None:
    rng = np.random.default_rng(3)
    # Off-centre (large norms), and in three blocks of products (2,048 rows at 64 dimensions).
    vectors = (rng.standard_normal((5_000, 64)) + 4).astype(np.float32)
    assert len(vectors) > 2 * ranking.block_rows(64)
    query = (rng.standard_normal(64) + 4).astype(np.float32)
    exact = ranking.distances(vectors, query, metric)
    rough = ranking.rough_distances(vectors, ranking.squared_norms(vectors), query, metric)
    assert rough.dtype == np.float32
    scale = float(np.abs(exact).max())
    np.testing.assert_allclose(rough, exact, rtol=0, atol=1e-5 * scale)
    # Counting within a radius: only items on its edge may be counted differently.
    radius = float(np.quantile(exact, 0.1))
    assert abs(int(np.count_nonzero(rough < radius)) - int(np.count_nonzero(exact < radius))) <= 2
