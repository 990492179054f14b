"""How the filter planner ranks candidates it computes itself, and caps how many share a crowding tag.

An exact scan shortlists on cheap float32 scores (``scores``), then ranks the shortlist on
float64 distances in Flux's convention (``distances``), as the ``exact`` backend does; a few
spare candidates absorb the rounding of the fast scores. ``crowd`` applies the crowding cap to
any nearest-first sequence, whether scanned or fetched from the index.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flux_core.backend import Matrix, Metric
from flux_core.storage.attribute_table import NO_TAG, Mask


def crowd(tags: npt.NDArray[np.int32], cap: int) -> Mask:
    """Which of a nearest-first sequence to keep so that at most ``cap`` share a tag; untagged items always stay."""
    order = np.argsort(tags, kind="stable")
    grouped = tags[order]
    starts = np.ones(len(grouped), np.bool_)
    starts[1:] = grouped[1:] != grouped[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(grouped)), 0))
    seen = np.empty(len(tags), np.int64)
    seen[order] = np.arange(len(grouped)) - first  # how many earlier items share the tag
    keep: Mask = (seen < cap) | (tags == NO_TAG)
    return keep


def scores(vectors: Matrix, squared_norms: Matrix, query: Matrix, metric: Metric, out: Matrix | None = None) -> Matrix:
    """Float32 scores that order items as their distances do (up to rounding), cheaply; into ``out`` if given."""
    if metric is Metric.L2:  # |v|^2 - 2 v.q, in place: -2q is exact, so the result is as ``- 2 * dots``
        squared: Matrix = np.matmul(vectors, np.float32(-2) * query, out=out)
        squared += squared_norms
        return squared
    dots: Matrix = vectors @ query
    if metric is Metric.COSINE:
        return np.negative(dots / np.maximum(np.sqrt(squared_norms), np.float32(1e-30)), out=out)
    return np.negative(dots, out=out)


#: Values (rows x dimension) scored per matrix product: small enough for OpenBLAS to run each in the
#: calling thread. One product over 16,000 x 64 values woke its threads, and on a loaded 2-CPU machine
#: took 16 ms where 4,000 rows took 0.2 ms (docs/filters.md).
BLOCK_VALUES = 1 << 17


def block_rows(dimension: int) -> int:
    """Rows per scored block at this dimension."""
    return max(64, BLOCK_VALUES // max(dimension, 1))


def blocked_scores(vectors: Matrix, squared_norms: Matrix, query: Matrix, metric: Metric) -> Matrix:
    """``scores`` of every row, a block of rows at a time (see ``BLOCK_VALUES``)."""
    out = np.empty(len(vectors), np.float32)
    step = block_rows(vectors.shape[1] if vectors.ndim == 2 else 1)
    for start in range(0, len(vectors), step):
        end = start + step
        scores(vectors[start:end], squared_norms[start:end], query, metric, out=out[start:end])
    return out


def squared_norms(vectors: Matrix) -> Matrix:
    squared: Matrix = np.einsum("ij,ij->i", vectors, vectors)
    return squared


def rough_distances(vectors: Matrix, squared_norms: Matrix, query: Matrix, metric: Metric) -> Matrix:
    """Distances in Flux's convention from float32 products: for counting items within a radius
    (rounding moves only those on its edge), at a fifth of the cost of ``distances``. The products
    run a block at a time: 10,000 excluded items at 64 dimensions in one product woke OpenBLAS's
    threads, and a server on one CPU spent 7 ms on them where blocks take 0.1 ms."""
    dots = np.empty(len(vectors), np.float32)
    step = block_rows(vectors.shape[1])
    for start in range(0, len(vectors), step):
        np.matmul(vectors[start : start + step], query, out=dots[start : start + step])
    if metric is Metric.L2:
        squared: Matrix = squared_norms - 2 * dots + np.float32(query @ query)
        return squared
    if metric is Metric.COSINE:
        dots /= np.maximum(np.sqrt(squared_norms), np.float32(1e-30)) * np.float32(
            max(float(np.linalg.norm(query)), 1e-30)
        )
    out: Matrix = np.float32(1.0) - dots
    return out


def distances(vectors: Matrix, query: Matrix, metric: Metric) -> Matrix:
    """Distances in Flux's convention, computed in float64."""
    v, q = vectors.astype(np.float64), query.astype(np.float64)
    if metric is Metric.L2:
        diff = v - q
        squared: Matrix = np.einsum("ij,ij->i", diff, diff).astype(np.float32)
        return squared
    dots = v @ q
    if metric is Metric.COSINE:
        dots = dots / (np.maximum(np.linalg.norm(v, axis=1), 1e-30) * max(float(np.linalg.norm(q)), 1e-30))
    out: Matrix = (1.0 - dots).astype(np.float32)
    return out
