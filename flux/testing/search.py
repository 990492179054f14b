"""The kit's search tests: recall against the oracle, full and padded rows, tiny indexes, stored vectors,
and answers that survive save and load. Every backend gets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from flux.testing.harness import Harness, vectors_and_queries
from flux.testing.loading import LOAD_ERRORS
from flux.testing.oracle import brute_force, distances, recall
from flux_core.backend import Metric, Param, defaults

METRICS = tuple(Metric)
DIMENSIONS = (8, 64)
#: The k asked of a 2,000-item index: each must come back in full at every search param's smallest value.
LARGE_KS = (1, 10, 100, 500)


def smallest(param: Param) -> list[float]:
    """The values a search param is tried at for full results: its minimum, and 1 when the minimum
    is below 1 (0 and -1 often mean "automatic", so 1 is the smallest real budget)."""
    values = {param.minimum}
    if param.minimum < 1 <= param.maximum:
        values.add(1)
    return sorted(values)


def _describe(params: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in params.items()) or "no params"


class SearchTests(Harness):
    @pytest.mark.parametrize("dimension", DIMENSIONS)
    @pytest.mark.parametrize("metric", METRICS)
    def test_recall_against_the_oracle(self, metric: Metric, dimension: int) -> None:
        base, queries = vectors_and_queries(2000, dimension)
        labels, found = self.search(self.build(base, metric), queries, 10)
        truth, _ = brute_force(base, queries, metric, 10)
        got = recall(labels, truth)
        assert got >= self.min_recall, (
            f"recall@10 with default params is {got:.3f} on 2,000 clustered {metric.value} vectors of dimension "
            f"{dimension}; min_recall is {self.min_recall}"
        )
        short = int((labels < 0).any(axis=1).sum())
        assert not short, f"{short} of {len(queries)} queries got fewer than 10 results from 2,000 items"
        expected = np.take_along_axis(distances(base, queries, metric), labels, axis=1)
        np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-4, err_msg="distances break Flux's convention")
        assert (np.diff(found, axis=1) >= -1e-5).all(), "neighbours must come nearest first"

    @pytest.mark.parametrize("metric", METRICS)
    def test_k_results_whenever_k_fits_even_at_the_smallest_search_params(self, metric: Metric) -> None:
        """ef below k (or any small budget) still returns k results: the backend raises it to k."""
        base, queries = vectors_and_queries(2000, 16, queries=20)
        index = self.build(base, metric)
        settings = [defaults(self.backend.search_params)]
        for name, param in self.backend.search_params.items():
            settings += [{**settings[0], name: param.coerce(name, value)} for value in smallest(param)]
        for params in settings:
            for k in LARGE_KS:
                labels, found = self.search(index, queries, k, params)
                assert labels.shape == found.shape == (len(queries), k), (
                    f"search(k={k}) returned arrays of shape {labels.shape} and {found.shape}; "
                    f"expected ({len(queries)}, {k})"
                )
                counts = (labels >= 0).sum(axis=1)
                row = int(np.argmin(counts))
                assert counts[row] == k, (
                    f"{metric.value} index of 2,000 items, k={k}, {_describe(params)}: query {row} got "
                    f"{counts[row]} results (fewest {counts.min()}, most {counts.max()}); a backend returns k "
                    f"results whenever k <= len(index), so a search budget below k (ef < k) must be raised to k"
                )
                duplicated = [r for r in range(len(labels)) if len(set(labels[r].tolist())) < k]
                assert not duplicated, f"k={k}, {_describe(params)}: query {duplicated[0]} got a label twice"
                assert np.isfinite(found).all(), f"k={k}, {_describe(params)}: a real result has a distance of inf/nan"

    def test_k_larger_than_the_index_pads_the_rows(self) -> None:
        base, queries = vectors_and_queries(5, 8, queries=3)
        labels, found = self.search(self.build(base), queries, 8)
        assert labels.shape == found.shape == (3, 8), f"k=8 returned shapes {labels.shape}, {found.shape}; want (3, 8)"
        assert (np.sort(labels[:, :5], axis=1) == np.arange(5)).all(), (
            f"a 5-item index asked for 8 must return all 5 items first, got {labels.tolist()}"
        )
        assert (labels[:, 5:] == -1).all(), f"missing results must be label -1, got {labels[:, 5:].tolist()}"
        assert np.isinf(found[:, 5:]).all(), f"missing results must have distance +inf, got {found[:, 5:].tolist()}"

    def test_an_empty_index_answers_with_padding_and_round_trips(self, tmp_path: Path) -> None:
        index = self.build(np.empty((0, 8), np.float32))
        assert len(index) == 0, f"an index built from 0 vectors has len {len(index)}"
        labels, found = self.search(index, np.ones((2, 8)), 3)
        assert (labels == -1).all(), f"an empty index must answer label -1 only, got {labels.tolist()}"
        assert np.isinf(found).all(), f"an empty index must answer distance +inf only, got {found.tolist()}"
        index.save(tmp_path)
        reloaded = len(self.backend.load(tmp_path, 8, Metric.L2, 0))
        assert reloaded == 0, f"an empty index saved and loaded again has len {reloaded}"

    def test_a_one_item_index(self) -> None:
        index = self.build(np.full((1, 8), 0.5, np.float32))
        labels, found = self.search(index, np.zeros((2, 8)), 4)
        assert labels[:, 0].tolist() == [0, 0], f"the only item (label 0) must come first, got {labels.tolist()}"
        assert (labels[:, 1:] == -1).all(), f"the rest of the row must be label -1, got {labels.tolist()}"
        np.testing.assert_allclose(found[:, 0], 2.0, rtol=1e-4, err_msg="squared L2 of 0.5 x 8 must be 2.0")

    def test_get_vectors_returns_what_was_stored(self) -> None:
        base, _ = vectors_and_queries(100, 8)
        for metric in METRICS:
            stored = self.build(base, metric).get_vectors(np.array([3, 0, 99]))
            expected = base[[3, 0, 99]]
            if metric is Metric.COSINE:  # cosine backends may keep vectors normalised
                stored = stored / np.linalg.norm(stored, axis=1, keepdims=True)
                expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
            np.testing.assert_allclose(
                stored, expected, rtol=1e-4, atol=1e-5, err_msg=f"get_vectors of labels 3, 0, 99 ({metric.value})"
            )

    def test_a_batch_answers_alike_on_any_number_of_threads(self) -> None:
        """A BatchSearch runs on the server's search_threads, a Search on one: the same query must get
        the same answer either way (the server promises the same answer to the same request)."""
        base, queries = vectors_and_queries(2000, 16, queries=200)
        index = self.build(base)
        one = self.search(index, queries, 10, threads=1)
        for threads in (2, 3):
            many = self.search(index, queries, 10, threads=threads)
            np.testing.assert_array_equal(one[0], many[0], err_msg=f"labels differ between threads=1 and {threads}")
            np.testing.assert_array_equal(one[1], many[1], err_msg=f"distances differ between threads=1 and {threads}")

    def test_save_and_load_give_identical_results(self, tmp_path: Path) -> None:
        base, queries = vectors_and_queries(1000, 16)
        for metric in METRICS:
            index = self.build(base, metric)
            folder = tmp_path / metric.value
            folder.mkdir()
            written = index.save(folder)
            present = sorted(p.name for p in folder.iterdir())
            assert sorted(written) == present, f"save returned {sorted(written)} but wrote {present}"
            loaded = self.backend.load(folder, 16, metric, len(base))
            assert len(loaded) == len(index) == 1000, (
                f"1,000 items built: len is {len(index)} before save, {len(loaded)} after load"
            )
            before, after = self.search(index, queries, 10), self.search(loaded, queries, 10)
            np.testing.assert_array_equal(before[0], after[0], err_msg=f"labels differ after save and load ({metric})")
            np.testing.assert_allclose(
                before[1], after[1], rtol=1e-6, err_msg=f"distances differ after load ({metric})"
            )

    def test_loading_from_an_empty_directory_raises(self, tmp_path: Path) -> None:
        with pytest.raises(LOAD_ERRORS):
            self.backend.load(tmp_path, 8, Metric.L2, 10)
