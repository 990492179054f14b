"""``exact``: brute-force search with numpy, the ground truth other backends are measured against."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flux.core.backend import Backend, Capabilities, Labels, Matrix, Metric, Progress

# Queries are scored in chunks so that one chunk's score matrix stays near this many floats.
_SCORE_BUDGET = 1 << 24


class ExactBackend(Backend):
    """Scores every stored vector with one matrix product (BLAS releases the GIL).

    Candidates are chosen on the matrix-product scores, then their distances are
    recomputed directly in float64, so reported distances match numpy's to float32
    precision.
    """

    name = "exact"
    capabilities = Capabilities(mmap_load=True, thread_safe_search=True)

    def __init__(self, dimension: int, metric: Metric, vectors: Matrix) -> None:
        super().__init__(dimension, metric)
        self._vectors = vectors  # normalised for cosine
        self._sq_norms = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float32) if metric is Metric.L2 else None

    @classmethod
    def library_version(cls) -> str:
        return f"numpy {np.__version__}"

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> ExactBackend:
        stored = _normalised(vectors) if metric is Metric.COSINE else np.array(vectors, dtype=np.float32, order="C")
        if progress:
            progress(len(stored), len(stored))
        return cls(vectors.shape[1], metric, stored)

    def save(self, directory: Path) -> list[str]:
        np.save(directory / "vectors.npy", self._vectors, allow_pickle=False)
        return ["vectors.npy"]

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> ExactBackend:
        vectors = np.load(directory / "vectors.npy", mmap_mode="r", allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.shape != (count, dimension):
            raise ValueError(
                f"vectors.npy holds {vectors.dtype} {vectors.shape}, expected float32 ({count}, {dimension})"
            )
        return cls(dimension, metric, vectors)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        q, n = len(queries), len(self._vectors)
        labels = np.full((q, k), -1, np.int64)
        distances = np.full((q, k), np.inf, np.float32)
        if n == 0 or q == 0:
            return labels, distances
        if self.metric is Metric.COSINE:
            queries = _normalised(queries)
        keep = min(n, k)
        # A few spare candidates absorb the rounding of the matrix-product scores.
        shortlist = min(n, 2 * keep + 8)
        step = max(1, _SCORE_BUDGET // n)
        for start in range(0, q, step):
            chunk = queries[start : start + step]
            scores = self._scores(chunk)
            if shortlist < n:
                candidates = np.argpartition(scores, shortlist - 1, axis=1)[:, :shortlist]
            else:
                candidates = np.broadcast_to(np.arange(n), (len(chunk), n))
            exact = self._exact_distances(chunk, candidates)
            order = np.argsort(exact, axis=1, kind="stable")[:, :keep]
            labels[start : start + len(chunk), :keep] = np.take_along_axis(candidates, order, axis=1)
            distances[start : start + len(chunk), :keep] = np.take_along_axis(exact, order, axis=1)
        return labels, distances

    def _scores(self, queries: Matrix) -> Matrix:
        """Smaller is nearer; equal to the distance up to a per-query constant and rounding."""
        dots: Matrix = queries @ self._vectors.T
        if self.metric is Metric.L2:
            assert self._sq_norms is not None
            scores: Matrix = self._sq_norms - 2 * dots
            return scores
        return np.negative(dots)

    def _exact_distances(self, queries: Matrix, candidates: Labels) -> Matrix:
        stored = np.asarray(self._vectors[candidates], dtype=np.float64)  # (q, c, d)
        query = queries.astype(np.float64)[:, None, :]
        if self.metric is Metric.L2:
            diff = stored - query
            squared: np.ndarray = np.einsum("qcd,qcd->qc", diff, diff)
            return squared.astype(np.float32)
        dots: np.ndarray = np.einsum("qcd,qcd->qc", stored, query)
        return (1.0 - dots).astype(np.float32)

    def get_vectors(self, labels: Labels) -> Matrix:
        return np.array(self._vectors[labels], dtype=np.float32)

    def __len__(self) -> int:
        return len(self._vectors)

    def stats(self) -> dict[str, Any]:
        return {"vector_bytes": int(self._vectors.nbytes)}


def _normalised(vectors: Matrix) -> Matrix:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)
