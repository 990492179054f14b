"""The example plugin package, pip-installed into this environment, is a backend that Flux builds and
serves with no change to Flux; its own test suite runs the conformance kit. Uninstalled afterwards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest

from flux.datasets import clustered
from flux.testing import brute_force
from tests.test_cli import ENV, flux, serving

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flux-backend-ivf"


def python(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """pip-install the example (offline, from a copy: pip builds in the source folder), uninstall it after."""
    source = tmp_path_factory.mktemp("plugin") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".*_cache"))
    python("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    try:
        yield
    finally:
        python("-m", "pip", "uninstall", "--quiet", "--yes", "flux-backend-ivf")
        with pytest.raises(PackageNotFoundError):
            distribution("flux-backend-ivf")


@pytest.mark.usefixtures("installed")
def test_the_example_passes_the_conformance_kit_in_its_own_tests() -> None:
    result = python("-m", "pytest", str(EXAMPLE / "tests"), "-v", "-p", "no:cacheprovider")
    for test in (
        "test_recall_against_the_oracle[l2-8]",
        "test_load_memory_maps_the_files",
        # the tests that catch what serving would hit: nprobe below k, ignored params, bad files
        "test_k_results_whenever_k_fits_even_at_the_smallest_search_params[l2]",
        "test_each_search_param_changes_results_without_lowering_recall",
        "test_each_build_param_is_honoured",
        "test_load_refuses_a_count_that_disagrees_with_the_files",
        "test_load_refuses_another_dimension",
        "test_load_refuses_a_truncated_file",
        "test_load_refuses_a_file_of_another_index",
        # filterable: the mask, and the excluded labels Flux sends instead of one
        "test_leaving_out_each_querys_nearest_items",
        "test_excluded_labels_without_a_mask",
    ):
        assert f"TestIvf::{test} PASSED" in result.stdout, result.stdout


@pytest.mark.usefixtures("installed")
def test_flux_builds_serves_and_queries_the_installed_backend(tmp_path: Path) -> None:
    vectors = clustered(1000, 16, clusters=8, spread=1.0, seed=5)
    np.save(tmp_path / "vectors.npy", vectors)
    np.save(tmp_path / "query.npy", vectors[7])
    (tmp_path / "ids.txt").write_text("".join(f"doc:{i}\n" for i in range(1000)))
    out = tmp_path / "docs"
    built = flux(
        "build",
        str(tmp_path / "vectors.npy"),
        "--ids",
        str(tmp_path / "ids.txt"),
        "--out",
        str(out),
        "--backend",
        "ivf",
        "-p",
        "nlist=20",
    )
    assert "1000 items" in built.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "ivf"
    assert manifest["library"].startswith("flux-backend-ivf 0.1.0")
    assert manifest["build_params"] == {"nlist": 20, "iterations": 10, "seed": 0}

    # Probing all 20 lists makes the search exact, so the answer must be the oracle's.
    (tmp_path / "flux.yaml").write_text(
        "indexes:\n  - name: docs\n    path: docs\n    backend: ivf\n    search_params: {nprobe: 20}\n"
    )
    truth, distances = brute_force(vectors, vectors[7:8], "l2", 6)
    with serving("--config", str(tmp_path / "flux.yaml")) as address:
        query = ["query", "--target", address, "--index", "docs", "-k", "5", "--json"]
        by_vector = json.loads(flux(*query, "--vector-file", str(tmp_path / "query.npy")).stdout)["neighbors"]
        by_id = json.loads(flux(*query, "--id", "doc:7").stdout)["neighbors"]
    assert [n["id"] for n in by_vector] == [f"doc:{i}" for i in truth[0, :5]]
    np.testing.assert_allclose([n["distance"] for n in by_vector], distances[0, :5], rtol=1e-4, atol=1e-5)
    assert [n["id"] for n in by_id] == [f"doc:{i}" for i in truth[0, 1:6]]


@pytest.mark.usefixtures("installed")
def test_an_unknown_backend_is_refused_naming_the_installed_ones(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones((4, 2), np.float32))
    result = flux(
        "build", str(tmp_path / "v.npy"), "--out", str(tmp_path / "x"), "--backend", "nonexistent", check=False
    )
    assert result.returncode == 2
    installed = re.search(r"no backend named 'nonexistent' is installed \(installed: (.*)\)", result.stderr)
    assert installed, result.stderr
    assert {"exact", "hnsw", "annoy", "voyager", "ivf"} <= set(installed.group(1).split(", "))
