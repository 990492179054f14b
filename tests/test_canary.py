"""A built artifact carries the gate's canary: sample queries and their exact neighbours, found once
by the builder, so that a server swapping the version in reads no stored vector to check it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flux.core.serving import gate
from flux.core.serving.index import ServedIndex
from flux_core.errors import ArtifactError
from flux_core.quality import brute_force
from flux_core.storage import artifact, canary
from tests import support

N, DIM = 3000, 16
CANARY = gate.GateConfig(warmup_queries=16, canary_queries=200, k=10, min_recall=0.9, min_overlap=0.5)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path, Path]:
    """Two hnsw versions of the same items (the second a little moved) and the vectors of the second."""
    root = tmp_path_factory.mktemp("canary")
    base = support.dataset(n=N, dimension=DIM, queries=1)[0]
    moved = base + np.random.default_rng(2).standard_normal(base.shape).astype(np.float32) * 0.01
    first = support.build_artifact(root / "1", base, backend="hnsw", metric="l2", version=1)
    second = support.build_artifact(root / "2", moved, backend="hnsw", metric="l2", version=2)
    return moved, first, second


def test_a_built_artifact_holds_queries_with_their_exact_neighbours(built: tuple[np.ndarray, Path, Path]) -> None:
    vectors, _, path = built
    stored = artifact.load(path).canary
    assert stored is not None
    assert stored.queries.shape == (canary.QUERIES, DIM)
    assert stored.labels.shape == (canary.QUERIES, canary.NEIGHBOURS)
    truth, _ = brute_force(vectors, stored.queries, "l2", canary.NEIGHBOURS)  # float64: near-ties may differ
    assert np.mean(truth == stored.labels) > 0.99
    assert "canary.npz" in json.loads((path / "manifest.json").read_text())["files"]  # checksummed as any file


def test_the_gate_checks_against_the_stored_neighbours_as_a_scan_would(built: tuple[np.ndarray, Path, Path]) -> None:
    _, first, second = built
    active, candidate = ServedIndex("t", artifact.load(first)), ServedIndex("t", artifact.load(second))
    report = gate.run(candidate, active, CANARY)
    assert (report.passed, report.truth, report.canary_queries) == (True, "stored", 200)

    stored = candidate.artifact.canary
    assert stored is not None
    queries = stored.queries[:200]
    found, _ = candidate.nearest(queries, 10, candidate.default_params)
    assert report.recall == pytest.approx(gate.exact_recall(candidate, queries, found), abs=0.002)


def test_the_stored_neighbours_refuse_an_index_that_answers_badly(built: tuple[np.ndarray, Path, Path]) -> None:
    _, _, second = built
    shallow = ServedIndex("t", artifact.load(second), default_params={"ef": 10})
    report = gate.run(shallow, None, gate.GateConfig(canary_queries=200, k=10, min_recall=0.999))
    assert (report.passed, report.truth) == (False, "stored")
    assert report.reason.startswith("recall@10 0.")


@pytest.mark.parametrize("config", [{"canary_queries": canary.QUERIES + 1}, {"k": canary.NEIGHBOURS + 1}])
def test_the_gate_scans_when_the_canary_does_not_cover_it(
    built: tuple[np.ndarray, Path, Path], config: dict[str, int]
) -> None:
    _, _, second = built
    settings = gate.GateConfig(**{"canary_queries": 50, **config})
    report = gate.run(ServedIndex("t", artifact.load(second)), None, settings)
    assert (report.passed, report.truth) == (True, "scan")


def test_a_canary_that_does_not_fit_the_index_is_refused(built: tuple[np.ndarray, Path, Path], tmp_path: Path) -> None:
    _, _, second = built
    stored = artifact.load(second).canary
    assert stored is not None
    for name, bad in {
        "dimension": canary.Canary(stored.queries[:, :-1].copy(), stored.labels),
        "label": canary.Canary(stored.queries, stored.labels + N),
    }.items():
        path = support.build_artifact(tmp_path / name, np.eye(4, DIM, dtype=np.float32), backend="exact", metric="l2")
        canary.save(bad, path / "canary.npz")
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"]["canary.npz"] = artifact._describe(path / "canary.npz")  # a consistent checksum
        (path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=r"canary.npz: unreadable: holds queries .* which do not fit 4 items"):
            artifact.load(path)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_the_exact_backend_finds_every_stored_neighbour_whatever_the_metric(metric: str, tmp_path: Path) -> None:
    """The builder ranks in the metric's own order: exact search finds its neighbours, all of them."""
    vectors = support.dataset(n=2000, dimension=DIM, queries=1)[0]
    path = support.build_artifact(tmp_path / metric, vectors, backend="exact", metric=metric)
    report = gate.run(ServedIndex("t", artifact.load(path)), None, gate.GateConfig(canary_queries=200, k=10))
    assert (report.truth, report.canary_queries) == ("stored", 200)
    assert report.recall >= 0.999  # near-ties in float32 aside
