"""annoy's own rules, beyond the conformance kit: a file cut anywhere is refused, even where Annoy
itself would load it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from flux.datasets import clustered
from flux_backends.annoy import AnnoyBackend
from flux_core.backend import Metric, defaults

COUNT, DIMENSION = 300, 8
NODE_BYTES = 16 + 4 * DIMENSION  # Annoy's Euclidean node: descendants, offset, two children, the vector


def test_a_file_cut_just_after_a_trees_root_is_refused(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    params = defaults(AnnoyBackend.build_params)
    AnnoyBackend.build(clustered(COUNT, DIMENSION, seed=5), Metric.L2, params, threads=1).save(saved)
    data = (saved / "index.ann").read_bytes()
    descendants = np.frombuffer(data, np.int32).reshape(-1, NODE_BYTES // 4)[:, 0]
    # Annoy takes the trailing nodes that hold every item as its roots: a cut after any tree's own root
    # (not the copies of the roots at the end) leaves a file it loads as a one-tree index of every item.
    roots = np.flatnonzero(descendants == COUNT)
    cuts = [int(node + 1) * NODE_BYTES for node in roots if node + 1 < len(descendants) - params["n_trees"]]
    assert len(cuts) >= params["n_trees"] - 1, f"expected a root per tree before the copies, found {len(cuts)}"
    for cut in cuts:
        folder = tmp_path / f"cut-{cut}"
        shutil.copytree(saved, folder)
        (folder / "index.ann").write_bytes(data[:cut])
        raw = AnnoyIndex(DIMENSION, "euclidean")
        raw.load(str(folder / "index.ann"))
        assert raw.get_n_items() == COUNT, f"cut at {cut}: the case this test exists for is gone"
        with pytest.raises(ValueError, match=re.escape(f"index.ann is {cut:,} bytes, annoy.json says {len(data):,}")):
            AnnoyBackend.load(folder, DIMENSION, Metric.L2, COUNT)


@pytest.mark.parametrize("shape", ['{"bytes": "143,904", "n_trees": 32}', '{"n_trees": 32}', "[143904, 32]"])
def test_a_record_of_the_file_without_its_numbers_is_refused(tmp_path: Path, shape: str) -> None:
    AnnoyBackend.build(clustered(COUNT, DIMENSION, seed=5), Metric.L2, defaults(AnnoyBackend.build_params)).save(
        tmp_path
    )
    (tmp_path / "annoy.json").write_text(shape)
    with pytest.raises(ValueError, match=re.escape("not the bytes and n_trees of index.ann")):
        AnnoyBackend.load(tmp_path, DIMENSION, Metric.L2, COUNT)
