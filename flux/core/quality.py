"""Ground truth and agreement: brute force in float64, recall and overlap.

Used by the activation gate and by the conformance kit (flux.testing)."""

from __future__ import annotations

import numpy as np

from flux.core.backend import Metric


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
