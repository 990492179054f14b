"""The conformance tests of ``capabilities.filterable``: ``search_filtered`` against exact filtered search.

A filterable backend takes what it may return (``allowed``: a boolean mask over labels, or the
labels left out of every item) and a ``depth`` (how many of the nearest items, allowed or not,
its search must take in) and returns only allowed items. These tests hold it to that: never an
item left out, rows as full as ``allowed`` allows, Flux's distances, the exact answer once
``depth`` covers the whole index, and recall against exact filtered search (float64 brute force
over the allowed items) with random masks and with each query's nearest items left out, the
case of a user's already-played tracks, both as a mask and as a list of labels.
``conformance_suite`` (flux.testing.kit) adds them for a backend that declares ``filterable``,
and checks that any other backend refuses ``search_filtered``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

from flux.datasets import clustered
from flux.testing.oracle import distances
from flux_core.backend import Allowed, Backend, Labels, Mask, Matrix, Metric, defaults

K = 10
#: Shares of the items a random mask allows, and the ``depth`` asked for each: as Flux's planner
#: sizes it, twice the items it takes to meet k allowed ones.
SHARES = (0.5, 0.1, 0.02)
MARGIN = 2
#: Each query's nearest items left out by the exclusion test, and the depth asked: all of them, plus 2k.
EXCLUDED_NEAREST = 150


class FilterableTests:
    """Mixed into the suite of a backend whose capabilities declare ``filterable``."""

    backend: ClassVar[type[Backend]]
    min_recall: ClassVar[float] = 0.9

    def _index(self, base: np.ndarray, metric: Metric = Metric.L2) -> Backend:
        params = defaults(self.backend.build_params)
        return self.backend.build(np.ascontiguousarray(base, np.float32), metric, params, threads=2)

    def _filtered(
        self, index: Backend, queries: np.ndarray, mask: Mask | Allowed, depth: int, k: int = K
    ) -> tuple[Labels, Matrix]:
        """``index.search_filtered``, given a mask (read-only, as Flux's) or an ``Allowed`` as it is."""
        allowed = mask if isinstance(mask, Allowed) else Allowed(_read_only(mask, np.bool_))
        params = defaults(self.backend.search_params)
        labels, found = index.search_filtered(_read_only(queries), k, params, allowed, depth)
        assert labels.shape == found.shape == (len(queries), k), (
            f"search_filtered(k={k}) returned shapes {labels.shape} and {found.shape}; expected ({len(queries)}, {k})"
        )
        return labels, found

    def _check(
        self,
        what: str,
        base: np.ndarray,
        queries: np.ndarray,
        metric: Metric,
        masks: list[Mask],
        answer: Labels,
        found: Matrix,
    ) -> float:
        """Every row obeys its mask, is full, nearest first, with Flux's distances; returns recall@k."""
        every = distances(base, queries, metric)
        hits = wanted = 0
        for row, (labels, dist, mask) in enumerate(zip(answer, found, masks, strict=True)):
            allowed = np.flatnonzero(mask[: len(base)])
            real = labels[labels >= 0]
            outside = real[~mask[real]] if len(real) else real
            assert not len(outside), f"{what}: query {row} got label {int(outside[0])}, which the mask leaves out"
            assert len(set(real.tolist())) == len(real), f"{what}: query {row} got a label twice: {labels.tolist()}"
            expected = min(K, len(allowed))
            assert len(real) == expected, (
                f"{what}: query {row} got {len(real)} results where {len(allowed)} items are allowed; a row holds "
                f"min(k, allowed) results"
            )
            assert (labels[:expected] >= 0).all(), f"{what}: query {row}'s padding comes before results: {labels}"
            assert np.isinf(dist[expected:]).all(), f"{what}: padding must have distance +inf, got {dist.tolist()}"
            np.testing.assert_allclose(
                dist[:expected], every[row, real], rtol=1e-3, atol=1e-4, err_msg=f"{what}: distances of query {row}"
            )
            assert (np.diff(dist[:expected]) >= -1e-5).all(), f"{what}: query {row}'s results are not nearest first"
            truth = allowed[np.argsort(every[row, allowed], kind="stable")[:expected]]
            hits += len(np.intersect1d(real, truth))
            wanted += expected
        return hits / max(wanted, 1)

    @pytest.mark.parametrize("metric", tuple(Metric))
    def test_filtered_search_keeps_to_the_mask_with_recall(self, metric: Metric) -> None:
        base, queries = _data(2000, 16)
        index = self._index(base, metric)
        rng = np.random.default_rng(1)
        for share in SHARES:
            masks = [rng.random(len(base)) < share for _ in queries]
            depth = math.ceil(MARGIN * K / share)
            rows = [self._filtered(index, q[None], m, depth) for q, m in zip(queries, masks, strict=True)]
            answer, found = np.vstack([r[0] for r in rows]), np.vstack([r[1] for r in rows])
            what = f"{metric.value}, random masks allowing {share:.0%} of 2,000 items, depth {depth}"
            got = self._check(what, base, queries, metric, masks, answer, found)
            assert got >= self.min_recall, (
                f"{what}: recall@{K} against exact filtered search is {got:.3f}; min_recall is {self.min_recall}"
            )

    def test_one_mask_is_shared_by_every_row_of_a_batch(self) -> None:
        base, queries = _data(2000, 16)
        index = self._index(base)
        mask = np.random.default_rng(2).random(len(base)) < 0.1
        labels, found = self._filtered(index, queries, mask, 2 * K * 10)
        got = self._check(
            "a batch of 50 queries, one mask allowing 10%",
            base,
            queries,
            Metric.L2,
            [mask] * len(queries),
            labels,
            found,
        )
        assert got >= self.min_recall, (
            f"a batch with one mask: recall@{K} is {got:.3f}; min_recall is {self.min_recall}"
        )

    def test_leaving_out_each_querys_nearest_items(self) -> None:
        """The items a user has already played sit right around the query: the search must walk past
        them, whether they come as a mask or, with no restrict to apply, as a list of labels."""
        base, queries = _data(2000, 16)
        index = self._index(base)
        nearest = np.argsort(distances(base, queries, Metric.L2), axis=1)[:, :EXCLUDED_NEAREST]
        masks = []
        for row in nearest:
            mask = np.ones(len(base), np.bool_)
            mask[row] = False
            masks.append(mask)
        depth = EXCLUDED_NEAREST + MARGIN * K
        lists = [Allowed(excluded=_read_only(np.sort(row), np.int64)) for row in nearest]
        forms: tuple[tuple[str, Sequence[Mask | Allowed]], ...] = (("a mask", masks), ("excluded labels", lists))
        for form, given in forms:
            rows = [self._filtered(index, q[None], a, depth) for q, a in zip(queries, given, strict=True)]
            answer, found = np.vstack([r[0] for r in rows]), np.vstack([r[1] for r in rows])
            what = f"each query's {EXCLUDED_NEAREST} nearest of 2,000 items left out as {form}, depth {depth}"
            got = self._check(what, base, queries, Metric.L2, masks, answer, found)
            assert got >= self.min_recall, (
                f"{what}: recall@{K} against exact filtered search is {got:.3f}; min_recall is {self.min_recall}. "
                "The search must take in at least `depth` items: the k nearest allowed ones lie past the excluded"
            )

    def test_a_depth_covering_the_index_gives_the_exact_answer(self) -> None:
        base, queries = _data(1000, 8, queries=20)
        index = self._index(base)
        rng = np.random.default_rng(3)
        masks = [rng.random(len(base)) < share for share in (0.3, 0.03) for _ in range(10)]
        rows = [self._filtered(index, q[None], m, len(base)) for q, m in zip(queries, masks, strict=True)]
        answer, found = np.vstack([r[0] for r in rows]), np.vstack([r[1] for r in rows])
        got = self._check("depth = len(index)", base, queries, Metric.L2, masks, answer, found)
        assert got == 1.0, (
            f"with depth = len(index) (1,000) the search takes in every item, so the answer must be the exact "
            f"filtered one; recall@{K} is {got:.3f}"
        )

    def test_empty_full_short_and_tiny_masks(self) -> None:
        base, queries = _data(1000, 8, queries=10)
        index = self._index(base)
        labels, found = self._filtered(index, queries, np.zeros(len(base), np.bool_), K)
        assert (labels == -1).all(), f"a mask allowing nothing must give label -1 only, got {labels[0].tolist()}"
        assert np.isinf(found).all(), f"a mask allowing nothing must give distance +inf only, got {found[0].tolist()}"
        full = np.ones(len(base), np.bool_)
        labels, found = self._filtered(index, queries, full, K)
        got = self._check("a mask allowing every item", base, queries, Metric.L2, [full] * len(queries), labels, found)
        assert got >= self.min_recall, (
            f"a mask allowing every item: recall@{K} is {got:.3f}; min_recall is {self.min_recall}"
        )
        short = np.ones(len(base) // 2, np.bool_)  # labels at or past its end are not allowed
        labels, found = self._filtered(index, queries, short, MARGIN * K * 2)
        padded = np.concatenate([short, np.zeros(len(base) - len(short), np.bool_)])
        self._check(
            "a mask covering only labels 0-499", base, queries, Metric.L2, [padded] * len(queries), labels, found
        )
        few = np.zeros(len(base), np.bool_)
        few[[3, 500, 999]] = True
        labels, found = self._filtered(index, queries, few, len(base))
        self._check("a mask allowing 3 items", base, queries, Metric.L2, [few] * len(queries), labels, found)
        assert (np.sort(labels[:, :3], axis=1) == [3, 500, 999]).all(), (
            f"a mask allowing labels 3, 500 and 999 must return exactly those, got {labels[0].tolist()}"
        )

    def test_excluded_labels_without_a_mask(self) -> None:
        """Without a mask every item is allowed but the excluded labels; labels past the index are no items."""
        base, queries = _data(1000, 8, queries=10)
        index = self._index(base)
        labels, found = self._filtered(index, queries, Allowed(), K)
        full = np.ones(len(base), np.bool_)
        got = self._check("nothing excluded, no mask", base, queries, Metric.L2, [full] * len(queries), labels, found)
        assert got >= self.min_recall, f"nothing excluded: recall@{K} is {got:.3f}; min_recall is {self.min_recall}"
        every = Allowed(excluded=_read_only(np.arange(len(base) + 5), np.int64))
        labels, found = self._filtered(index, queries, every, K)
        assert (labels == -1).all(), f"every label excluded must give label -1 only, got {labels[0].tolist()}"
        assert np.isinf(found).all(), f"every label excluded must give distance +inf only, got {found[0].tolist()}"
        kept = np.array([3, 500, 999])
        others = np.setdiff1d(np.arange(len(base) + 5), kept)
        labels, found = self._filtered(index, queries, Allowed(excluded=_read_only(others, np.int64)), len(base))
        few = np.isin(np.arange(len(base)), kept)
        self._check("all but 3 labels excluded", base, queries, Metric.L2, [few] * len(queries), labels, found)
        assert (np.sort(labels[:, :3], axis=1) == kept).all(), (
            f"all labels but 3, 500 and 999 excluded must return exactly those, got {labels[0].tolist()}"
        )


class NotFilterableTests:
    """Mixed into the suite of a backend that does not declare ``filterable``."""

    backend: ClassVar[type[Backend]]

    def test_search_filtered_is_refused(self) -> None:
        params = defaults(self.backend.build_params)
        index = self.backend.build(np.ones((3, 8), np.float32), Metric.L2, params)
        with pytest.raises(NotImplementedError):
            index.search_filtered(np.ones((1, 8), np.float32), 1, defaults(self.backend.search_params), Allowed(), 1)


def _data(n: int, dimension: int, queries: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    points = clustered(n + queries, dimension, clusters=16, spread=1.0, seed=seed)
    return points[:n], points[n:]


def _read_only(values: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """A read-only copy, as Flux hands arrays to a backend."""
    return np.frombuffer(np.ascontiguousarray(values, dtype).tobytes(), dtype).reshape(values.shape)
