"""The activation gate's canary, computed once, when an artifact is built.

The gate measures a new version's recall@k on sample queries against exact search, and exact
search reads every stored vector: 0.15 to 0.3 s of CPU for 100,000 x 128 on every server, on
every swap, taken from serving, and minutes at tens of millions of vectors. The builder holds
the vectors already: it samples the queries and finds their exact neighbours once, and every
server that loads the version reads them from ``canary.npz``:

    queries  float32, queries x dimension: stored vectors, each a little moved
    labels   int64, queries x neighbours: each query's exact nearest labels, nearest first

The gate uses them when they cover its configuration (``covers``) and the artifact's labels
are as built; otherwise it scans as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flux_core.backend import Labels, Matrix, Metric
from flux_core.quality import nearest_rows

#: Queries and neighbours per query a built artifact's canary holds: more than the gate asks for
#: by default and as docs/versions.md recommends (200 queries, recall@10): 192 KiB at 128 dimensions.
QUERIES = 256
NEIGHBOURS = 32
#: Vectors ranked at a time while the builder computes the canary's neighbours.
_ROWS_PER_BLOCK = 8192


@dataclass(frozen=True)
class Canary:
    queries: Matrix
    labels: Labels  # exact nearest labels per query, nearest first

    def covers(self, queries: int, k: int) -> bool:
        """Whether it holds ``queries`` queries with their ``k`` nearest each."""
        return queries <= len(self.queries) and k <= self.labels.shape[1]


def moved(vectors: Matrix, rng: np.random.Generator) -> Matrix:
    """``vectors`` with a little noise (5 % of their spread), so that no query is exactly an item."""
    scale = float(np.std(vectors)) or 1.0
    noise = rng.standard_normal(vectors.shape).astype(np.float32) * 0.05 * scale
    return np.ascontiguousarray(vectors + noise, dtype=np.float32)


def compute(vectors: Matrix, metric: Metric, *, queries: int = QUERIES, neighbours: int = NEIGHBOURS) -> Canary:
    """Sample queries from ``vectors`` (row i: label i) and find their exact nearest labels."""
    count = len(vectors)
    rng = np.random.default_rng(0)
    sample = moved(np.asarray(vectors, np.float32)[rng.choice(count, size=queries, replace=queries > count)], rng)
    blocks = (vectors[start : start + _ROWS_PER_BLOCK] for start in range(0, count, _ROWS_PER_BLOCK))
    labels = nearest_rows(blocks, sample, metric, min(neighbours, count))
    return Canary(sample, labels)


def save(canary: Canary, path: Path) -> None:
    with path.open("wb") as fh:
        np.savez(fh, queries=canary.queries, labels=canary.labels)


def load(path: Path, dimension: int, count: int) -> Canary:
    """The canary at ``path``; ValueError when it does not fit an index of ``count`` x ``dimension``."""
    with np.load(path, allow_pickle=False) as held:
        queries, labels = held["queries"], held["labels"]
    if (
        queries.dtype != np.float32
        or queries.ndim != 2
        or queries.shape[1] != dimension
        or labels.dtype != np.int64
        or labels.ndim != 2
        or len(labels) != len(queries)
        or (labels.size and (labels.min() < 0 or labels.max() >= count))
    ):
        raise ValueError(
            f"holds queries {queries.dtype} {queries.shape} and labels {labels.dtype} {labels.shape}, "
            f"which do not fit {count} items of dimension {dimension}"
        )
    return Canary(queries, labels)
