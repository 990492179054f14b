"""Build steps that report no progress (faiss's k-means, Annoy's trees) are logged when a build is followed."""

from __future__ import annotations

import logging

import pytest

from flux.datasets import clustered
from flux_core.backend import Metric, defaults
from flux_core.storage import registry


@pytest.mark.parametrize(
    ("backend", "said"),
    [
        ("faiss-ivf", "k-means: 63 lists from 4,000 of 4,000 vectors (10 rounds); the items are added after it"),
        ("annoy", "Annoy's trees: building 8 over 4,000 items on 2 threads"),
    ],
)
def test_a_followed_build_logs_its_silent_step(backend: str, said: str, caplog: pytest.LogCaptureFixture) -> None:
    cls = registry.get(backend)
    vectors = clustered(4_000, 16, seed=3)
    params = {**defaults(cls.build_params), **({"n_trees": 8} if backend == "annoy" else {})}
    reports: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="flux_backends"):
        cls.build(vectors, Metric.L2, params, threads=2)
        assert not caplog.records  # nobody follows it: nothing to say
        cls.build(vectors, Metric.L2, params, threads=2, progress=lambda done, n: reports.append((done, n)))
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == said
    assert messages[1].startswith(said.split(":")[0] + " took ")
    assert len(messages) == 2
    assert reports[-1] == (4_000, 4_000)
