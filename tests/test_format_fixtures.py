"""Committed artifacts of every format version still load and answer as they did when written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flux_core.backend import defaults
from flux_core.storage import artifact
from flux_core.storage.ids import Ids

FIXTURES = Path(__file__).parent / "fixtures" / "artifacts"
CASES = [
    (version.name, backend)
    for version in sorted(FIXTURES.iterdir())
    for backend in json.loads((version / "expected.json").read_text())["results"]
]


def test_there_is_a_fixture_for_the_current_format_and_each_in_tree_backend() -> None:
    assert {b for v, b in CASES if v == f"v{artifact.FORMAT_VERSION}"} >= {"exact", "hnsw", "annoy", "voyager"}


@pytest.mark.parametrize(("version", "backend"), CASES)
def test_a_committed_artifact_loads_and_answers_as_recorded(version: str, backend: str) -> None:
    folder = FIXTURES / version
    expected = json.loads((folder / "expected.json").read_text())
    loaded = artifact.load(folder / backend)
    assert loaded.manifest.backend == backend
    assert loaded.manifest.count == 40
    assert Ids(loaded.ids).strings(np.arange(2)) == ["fixture:00", "fixture:01"]
    queries = np.array(expected["queries"], np.float32)
    labels, distances = loaded.backend.search(queries, 5, defaults(type(loaded.backend).search_params))
    assert labels.tolist() == expected["results"][backend]["labels"]
    np.testing.assert_allclose(distances, expected["results"][backend]["distances"], rtol=1e-5)
