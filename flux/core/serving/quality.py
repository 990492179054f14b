"""Ground truth and agreement: exact nearest neighbours, recall and overlap.

``brute_force`` (float64, every distance at once) is the conformance kit's reference
(flux.testing). ``Nearest`` is the activation gate's: float32, fed one block of stored
vectors at a time, so that they never have to be in memory or read all at once."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from flux_core.backend import Metric


def distances(base: np.ndarray, queries: np.ndarray, metric: Metric | str) -> np.ndarray:
    """Every query's distance to every base vector, in Flux's convention (smaller is nearer)."""
    b, q = np.asarray(base, np.float64), np.asarray(queries, np.float64)
    metric = Metric(metric)
    if metric is Metric.L2:
        squared: np.ndarray = np.maximum((q**2).sum(1)[:, None] - 2 * q @ b.T + (b**2).sum(1)[None, :], 0.0)
        return squared
    if metric is Metric.COSINE:
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    return 1.0 - q @ b.T


def brute_force(base: np.ndarray, queries: np.ndarray, metric: Metric | str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest rows of ``base`` for each query: (rows, distances), nearest first."""
    d = distances(base, queries, metric)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


class Nearest:
    """The exact k nearest of the stored vectors seen so far, for each query; vectors arrive in
    blocks, each with its labels, in any order.

    Float32 with the norm trick (for L2, ``|b|^2 - 2 q.b``: ``|q|^2`` does not change a query's
    order), which ranks as float64 does but for near-ties: more than close enough for a recall
    gate. A block costs a partial sort only for the queries it holds something nearer for. The
    products are numpy's own loops, not BLAS: one thread, which lets go of the GIL, where BLAS
    would spin threads on every core that serving needs (and crawl when those are busy).
    """

    def __init__(self, queries: np.ndarray, metric: Metric | str, k: int) -> None:
        self.metric = Metric(metric)
        q = np.ascontiguousarray(queries, np.float32)
        self._q = _unit(q) if self.metric is Metric.COSINE else q
        self.k = k
        self._best = np.full((len(q), k), np.inf, np.float32)  # per query, unordered: the k nearest so far
        self._labels = np.full((len(q), k), -1, np.int64)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Every query's score for every row of ``vectors``: smaller is nearer (an order, not a distance)."""
        b = np.asarray(vectors, np.float32)
        if self.metric is Metric.COSINE:
            b = _unit(b)
        d: np.ndarray = -np.einsum("qd,nd->qn", self._q, b)
        if self.metric is Metric.L2:
            d = 2 * d + np.einsum("ij,ij->i", b, b)[None, :]
        return d

    def add(self, labels: np.ndarray, scores: np.ndarray) -> None:
        """Take a block: its labels and its ``scores`` (queries x labels)."""
        better = np.flatnonzero((scores < self._best.max(axis=1, keepdims=True)).any(axis=1))
        if not len(better):
            return
        sub = scores[better]
        if sub.shape[1] > self.k:
            columns = np.argpartition(sub, self.k - 1, axis=1)[:, : self.k]
            sub = np.take_along_axis(sub, columns, axis=1)
        else:
            columns = np.broadcast_to(np.arange(sub.shape[1]), sub.shape)
        both = np.concatenate([self._best[better], sub], axis=1)
        both_labels = np.concatenate([self._labels[better], np.asarray(labels, np.int64)[columns]], axis=1)
        keep = np.argpartition(both, self.k - 1, axis=1)[:, : self.k]
        self._best[better] = np.take_along_axis(both, keep, axis=1)
        self._labels[better] = np.take_along_axis(both_labels, keep, axis=1)

    def labels(self) -> np.ndarray:
        """Per query, the labels of the k nearest seen, nearest first (equal scores by label); -1 pads
        when fewer were seen."""
        padding = np.where(self._labels < 0, np.iinfo(np.int64).max, self._labels)
        order = np.lexsort((padding, self._best), axis=1)
        return np.take_along_axis(self._labels, order, axis=1)


def nearest_rows(blocks: Iterable[np.ndarray], queries: np.ndarray, metric: Metric | str, k: int) -> np.ndarray:
    """The exact k nearest rows of the stacked ``blocks`` for each query, nearest first (``Nearest``)."""
    nearest = Nearest(queries, metric, k)
    offset = 0
    for block in blocks:
        nearest.add(np.arange(offset, offset + len(block)), nearest.scores(block))
        offset += len(block)
    return nearest.labels()


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = x / np.maximum(norms, np.float32(1e-30))
    return unit


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each true neighbour row found, ignoring -1 padding in ``found``."""
    k = truth.shape[1]
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k) if len(truth) else 1.0


def overlap(a: list[list[str]], b: list[list[str]], k: int) -> float:
    """Mean share of ``k`` that two answers to the same queries have in common."""
    if not a:
        return 1.0
    return sum(len(set(x[:k]) & set(y[:k])) for x, y in zip(a, b, strict=True)) / (len(a) * k)
