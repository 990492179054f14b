"""A batch answered step by step stops at the next step once its caller's deadline has passed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from flux.core import artifact, deadline
from flux.core.filters import Filter
from flux.core.index import ServedIndex
from flux.errors import DeadlineExceeded
from tests import support


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ServedIndex:
    base, _ = support.dataset(n=2_000, dimension=16, queries=1)
    folder = Path(tmp_path_factory.mktemp("deadline")) / "exact"
    path = support.build_artifact(folder, base, backend="exact", metric="l2")
    return ServedIndex("exact", artifact.load(path))


def test_filtered_and_per_row_batches_stop_once_the_deadline_has_passed(index: ServedIndex) -> None:
    queries = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    unwanted = Filter.create(exclude_ids=["item:000001"])
    rows = [{**index.default_params} for _ in range(8)]  # not one shared object: answered group by group
    with deadline.within(-1.0):
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            index.search_filtered(queries, [5] * 8, rows, [unwanted] * 8)
        with pytest.raises(DeadlineExceeded):
            index.search_batch(queries, [5, 3] * 4, rows)
        assert len(index.search(queries, 5, index.default_params)) == 8  # one library call: one step, not cut
    with deadline.within(math.inf):
        assert [len(a.labels) for a in index.search_filtered(queries, [5] * 8, rows, [unwanted] * 8)] == [5] * 8
    assert [len(h.ids) for h in index.search_batch(queries, [5, 3] * 4, rows)] == [5, 3] * 4  # no call, no deadline
