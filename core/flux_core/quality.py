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


#: The most multiply-adds (m * n * k) a matrix product may take for OpenBLAS to run it in the
#: calling thread alone: its gemm does so up to 65536 * GEMM_MULTITHREAD_THRESHOLD (4 by default).
SINGLE_THREAD_PRODUCT = 65536 * 4


class Nearest:
    """The exact k nearest of the stored vectors seen so far, for each query; vectors arrive in
    blocks, each with its labels, in any order.

    Float32 with the norm trick (for L2, ``|b|^2 - 2 q.b``: ``|q|^2`` does not change a query's
    order), which ranks as float64 does but for near-ties: more than close enough for a recall
    gate. A block costs a partial sort only for the queries it holds more than k nearer vectors
    for than their k-th so far (about every query in the first block, few after it); the
    others only compare with that k-th.

    The products go to BLAS as many small products in one numpy call (``_Products``), each
    small enough for OpenBLAS to run it in the calling thread: about three times the speed of
    numpy's own loops, in the one thread that runs the gate, where one large product would
    wake OpenBLAS's threads on every core that serving needs (they spin between calls).
    """

    def __init__(self, queries: np.ndarray, metric: Metric | str, k: int) -> None:
        self.metric = Metric(metric)
        q = np.ascontiguousarray(queries, np.float32)
        q = _unit(q) if self.metric is Metric.COSINE else q
        # Scaled so that a product is the score itself (cosine, ip) or all of it but |b|^2 (l2).
        self._products = _Products(q * np.float32(-2.0 if self.metric is Metric.L2 else -1.0))
        self.k = k
        self._best = np.full((len(q), k), np.inf, np.float32)  # per query, unordered: the k nearest so far
        self._labels = np.full((len(q), k), -1, np.int64)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Every query's score for every row of ``vectors``: smaller is nearer (an order, not a distance)."""
        b = np.asarray(vectors, np.float32)
        if self.metric is Metric.COSINE:
            b = _unit(b)
        d = self._products(b)
        if self.metric is Metric.L2:
            d += np.einsum("ij,ij->i", b, b)[None, :]
        return d

    def add(self, labels: np.ndarray, scores: np.ndarray) -> None:
        """Take a block: its labels and its ``scores`` (queries x labels; fastest as the transposed
        view of a C-ordered labels x queries array, which is what ``scores`` returns)."""
        k = self.k
        by_label = np.asarray(scores).T  # labels x queries
        width = by_label.shape[1]
        limit = self._best.max(axis=1)  # per query, the k-th nearest so far: only nearer ones can enter
        near = np.flatnonzero(by_label < limit)
        if len(near) > k:
            crowded = np.bincount(near % width, minlength=width) > k
            if crowded.any():  # more than k candidates (the first block, mostly): the k nearest of them
                kth = np.partition(by_label[:, crowded], k - 1, axis=0)[k - 1]
                limit[crowded] = np.nextafter(kth, np.float32(np.inf))
                near = np.flatnonzero(by_label < limit)
        if not len(near):
            return
        rows, queries = np.divmod(near, width)
        order = np.argsort(queries, kind="stable")  # each query's candidates together
        rows, queries = rows[order], queries[order]
        touched, counts = np.unique(queries, return_counts=True)
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        at = np.repeat(np.arange(len(touched)), counts)
        new = np.full((len(touched), int(counts.max())), np.inf, np.float32)
        new[at, slot] = by_label[rows, queries]
        new_labels = np.full(new.shape, -1, np.int64)
        new_labels[at, slot] = np.asarray(labels, np.int64)[rows]
        both = np.concatenate([self._best[touched], new], axis=1)
        both_labels = np.concatenate([self._labels[touched], new_labels], axis=1)
        keep = np.argpartition(both, k - 1, axis=1)[:, :k]
        self._best[touched] = np.take_along_axis(both, keep, axis=1)
        self._labels[touched] = np.take_along_axis(both_labels, keep, axis=1)

    def merge(self, other: Nearest) -> None:
        """Take what ``other`` (the same queries and k, other blocks) has seen."""
        both = np.concatenate([self._best, other._best], axis=1)
        both_labels = np.concatenate([self._labels, other._labels], axis=1)
        keep = np.argpartition(both, self.k - 1, axis=1)[:, : self.k]
        self._best = np.take_along_axis(both, keep, axis=1)
        self._labels = np.take_along_axis(both_labels, keep, axis=1)

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


class _Products:
    """``queries @ block.T`` as products of a few rows of the block by the queries (by a group of
    them when there are many), all in one numpy call, so one release of the GIL, each product at
    most ``SINGLE_THREAD_PRODUCT`` multiply-adds.

    Computed as ``block @ queries.T`` (rows x queries, the transposed view is returned): every
    product then shares its right-hand side, which is as fast as one large product in one thread.
    """

    def __init__(self, queries: np.ndarray) -> None:
        q, d = queries.shape
        self._count = q
        per_group = max(2, SINGLE_THREAD_PRODUCT // (2 * max(d, 1)))  # queries, with at least 2 rows a product
        groups = -(-q // per_group)
        size = max(2, -(-q // groups))  # 2 at least: numpy hands a product with one column to gemv
        self._rows = max(2, SINGLE_THREAD_PRODUCT // (size * max(d, 1)))
        padded = np.zeros((groups * size, d), np.float32)
        padded[:q] = queries
        self._queries = np.ascontiguousarray(padded.reshape(groups, size, d).transpose(0, 2, 1))[:, None]

    def __call__(self, block: np.ndarray) -> np.ndarray:
        n, d = block.shape
        if n % self._rows:
            block = np.concatenate([block, np.zeros((self._rows - n % self._rows, d), np.float32)])
        out = np.matmul(block.reshape(-1, self._rows, d), self._queries)  # (groups, tiles, rows, size)
        groups, tiles, rows, size = out.shape
        products = out[0] if groups == 1 else out.transpose(1, 2, 0, 3)
        by_row: np.ndarray = products.reshape(tiles * rows, groups * size)[:n, : self._count]
        return by_row.T


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
