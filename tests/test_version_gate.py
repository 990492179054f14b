"""The activation gate's canary: exact, cheap, and no long hold of the GIL while the active version serves."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flux.core.serving import gate
from flux.core.serving.index import ServedIndex
from flux.core.serving.quality import Nearest, brute_force, nearest_rows
from flux_core.backend import Metric
from flux_core.storage import artifact, builder
from flux_core.storage.attributes import ItemAttributes
from tests import support

N, DIM = 40_000, 16
CANARY = gate.GateConfig(warmup_queries=64, canary_queries=200, k=10, min_recall=0.9, min_overlap=0.5)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServedIndex, ServedIndex]:
    """Two hnsw versions of the same items, each a little moved: the second is the candidate."""
    root = tmp_path_factory.mktemp("gate")
    base = support.dataset(n=N, dimension=DIM, queries=1)[0]
    served = []
    for version in (1, 2):
        moved = base + np.random.default_rng(version).standard_normal(base.shape).astype(np.float32) * 0.01
        path = support.build_artifact(root / str(version), moved, backend="hnsw", metric="l2", version=version)
        served.append(ServedIndex("tracks", artifact.load(path)))
    return served[0], served[1]


class GilWatch:
    """The longest this thread waited for the GIL beyond its 1 ms sleeps: what a request thread would."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> GilWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - 0.001)
            last = now


def test_the_canary_reads_stored_vectors_without_holding_the_gil_for_long(
    versions: tuple[ServedIndex, ServedIndex],
) -> None:
    active, candidate = versions
    live = candidate.ids.live()
    started = time.perf_counter()
    candidate.backend.get_vectors(live)  # what the gate did before: every vector in one call, GIL held throughout
    one_call = time.perf_counter() - started
    assert one_call > 0.05, "the index is too small for the comparison to mean anything"

    with GilWatch() as watch:
        report = gate.run(candidate, active, CANARY)
    assert report.passed, report.reason
    assert report.canary_queries == 200
    assert watch.longest < one_call / 3, (
        f"a thread waited {watch.longest * 1000:.0f} ms for the GIL while the gate ran; "
        f"reading every vector at once holds it {one_call * 1000:.0f} ms"
    )


def test_the_canary_recall_is_exact_and_cheaper_than_a_float64_sort(
    versions: tuple[ServedIndex, ServedIndex],
) -> None:
    _, candidate = versions
    queries = gate._sample(candidate, np.random.default_rng(3), 200)
    found, _ = candidate.nearest(queries, 10, candidate.default_params)
    live = candidate.ids.live()

    started = time.perf_counter()
    recall = gate.exact_recall(candidate, queries, found)
    ours = time.perf_counter() - started

    started = time.perf_counter()
    rows, _ = brute_force(candidate.backend.get_vectors(live), queries, Metric.L2, 10)  # float64, a full sort
    theirs = time.perf_counter() - started
    truth = live[rows]
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    assert recall == pytest.approx(hits / found.size, abs=0.002)
    assert recall >= 0.9
    assert ours < theirs, f"the gate's exact search took {ours:.2f}s, the float64 sort {theirs:.2f}s"


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_blockwise_float32_nearest_ranks_as_float64_brute_force(metric: str) -> None:
    base, queries = support.dataset(n=5000, dimension=24, queries=100, seed=7)
    blocks = (base[start : start + 300] for start in range(0, len(base), 300))  # blocks that do not divide n
    ours = nearest_rows(blocks, queries, metric, 10)
    truth, _ = brute_force(base, queries, metric, 10)
    shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ours.tolist(), truth.tolist(), strict=True)])
    assert shared >= 0.999


def test_nearest_takes_blocks_in_any_order_and_pads_when_short() -> None:
    vectors = np.eye(3, dtype=np.float32) * np.array([[1.0], [2.0], [3.0]], np.float32)
    nearest = Nearest(np.zeros((1, 3), np.float32), Metric.L2, 5)
    for labels in (np.array([2]), np.array([0, 1])):
        nearest.add(labels, nearest.scores(vectors[labels]))
    assert nearest.labels().tolist() == [[0, 1, 2, -1, -1]]


def test_the_canary_reads_an_artifacts_own_vector_copy(tmp_path: Path) -> None:
    base, _ = support.dataset(n=3000, dimension=DIM, queries=1, seed=5)
    path = tmp_path / "1"
    builder.build(
        path,
        base,
        support.ids_for(len(base)),
        backend="hnsw",
        metric=Metric.L2,
        name="tracks",
        attributes=[ItemAttributes()] * len(base),  # attributes make the artifact keep a float32 copy
    )
    index = ServedIndex("tracks", artifact.load(path))
    assert index.artifact.filter_vectors is not None
    queries = gate._sample(index, np.random.default_rng(1), 50)
    found, _ = index.nearest(queries, 10, index.default_params)
    truth, _ = brute_force(base, queries, Metric.L2, 10)
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    assert gate.exact_recall(index, queries, found) == pytest.approx(hits / found.size, abs=0.002)
