"""A batch answered step by step stops at the next step once its caller's deadline has passed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flux.core.query import deadline
from flux.core.query.request import FilterSpec, Query, RowOverride
from flux.core.serving.index import ServedIndex
from flux_core.errors import DeadlineExceeded
from flux_core.storage import artifact
from tests import support


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ServedIndex:
    base, _ = support.dataset(n=2_000, dimension=16, queries=1)
    folder = Path(tmp_path_factory.mktemp("deadline")) / "exact"
    path = support.build_artifact(folder, base, backend="exact", metric="l2")
    return ServedIndex("exact", artifact.load(path))


def test_filtered_and_per_row_batches_stop_once_the_deadline_has_passed(index: ServedIndex) -> None:
    queries = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)

    def batch(**fields: Any) -> Query:
        return Query("exact", 5, vectors=queries, dimension=16, vectors_field="queries", batch=True, **fields)

    unwanted = batch(filter=FilterSpec(exclude_ids=["item:000001"]))
    per_row = batch(overrides=[RowOverride(k=k) for k in [5, 3] * 4])  # rows with their own k
    with deadline.within(-1.0):
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            index.answer(unwanted)
        with pytest.raises(DeadlineExceeded):
            index.answer(per_row)
        assert index.answer(batch()).counts == [5] * 8  # one library call: one step, not cut
    with deadline.within(math.inf):
        assert index.answer(unwanted).counts == [5] * 8
    assert index.answer(per_row).counts == [5, 3] * 4  # no call, no deadline
