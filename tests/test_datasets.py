"""Vector files `flux build` reads: .npy, .fvecs, .jsonl; bad files get errors that say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flux.datasets import clustered, load_vectors
from flux_core.errors import InvalidArgument


def write_fvecs(path: Path, matrix: np.ndarray) -> None:
    n, d = matrix.shape
    records = np.empty((n, d + 1), "<i4")
    records[:, 0] = d
    records[:, 1:] = matrix.astype("<f4").view("<i4")
    records.tofile(path)


def test_npy_fvecs_and_jsonl_give_the_same_matrix(tmp_path: Path) -> None:
    matrix = clustered(50, 7, seed=4)
    np.save(tmp_path / "v.npy", matrix)
    write_fvecs(tmp_path / "v.fvecs", matrix)
    lines = [json.dumps({"id": f"id-{i}", "vector": row.tolist()}) for i, row in enumerate(matrix)]
    (tmp_path / "v.jsonl").write_text("\n".join(lines) + "\n\n")
    for name in ("v.npy", "v.fvecs", "v.jsonl"):
        loaded, ids = load_vectors(tmp_path / name)
        np.testing.assert_array_equal(loaded, matrix)
        assert loaded.dtype == np.float32
        assert loaded.flags.c_contiguous
        assert ids == ([f"id-{i}" for i in range(50)] if name.endswith("jsonl") else None)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.jsonl", '{"id": "a", "vector": [1, 2]}\n{"vector": [1, 2]}\n', "bad.jsonl:2: expected"),
        ("ragged.jsonl", '{"id": "a", "vector": [1, 2]}\n{"id": "b", "vector": [1]}\n', "different lengths"),
        ("nan.jsonl", '{"id": "a", "vector": [1, NaN]}\n', "row 0 contains NaN or Inf"),
        ("v.csv", "1,2,3\n", "unsupported vector file type '.csv'"),
        ("short.fvecs", b"\x03\x00\x00\x00\x00\x00\x80\x3f", "not an .fvecs file"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path: Path, name: str, content: str | bytes, fragment: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InvalidArgument, match=None) as caught:
        load_vectors(path)
    assert fragment in caught.value.message


def test_a_three_dimensional_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(InvalidArgument, match=r"expected a 2-D numeric array"):
        load_vectors(tmp_path / "cube.npy")
