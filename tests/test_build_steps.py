"""How builds report: progress on the thread that called build, and the steps that report no progress
(faiss's k-means, Annoy's trees) logged when a build is followed."""

from __future__ import annotations

import logging
import threading

import pytest

from flux.datasets import clustered
from flux_backends import hnsw
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


def test_hnsw_reports_its_progress_on_the_thread_that_called_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """hnswlib adds on a thread of its own; the reports come from the caller's, which may keep state
    per thread (Beam's metrics do: reports from another thread were lost to its counters)."""
    monkeypatch.setattr(hnsw, "_PROGRESS_SECONDS", 0.001)
    vectors = clustered(30_000, 16, seed=3)
    calls: list[tuple[int, int, int]] = []
    hnsw.HnswBackend.build(
        vectors,
        Metric.L2,
        defaults(hnsw.HnswBackend.build_params),
        threads=2,
        progress=lambda done, n: calls.append((threading.get_ident(), done, n)),
    )
    assert len(calls) >= 3  # reports while adding, not only the last
    assert {thread for thread, _, _ in calls} == {threading.get_ident()}
    done = [d for _, d, _ in calls]
    assert done == sorted(done)
    assert calls[-1][1:] == (30_000, 30_000)
