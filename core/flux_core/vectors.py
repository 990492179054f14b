"""The one rule every stored or searched vector follows: finite, and small enough that no distance
overflows float32. The server checks queries and upserts with it, the builder every vector it
indexes, so no backend ever sees a vector it would compute an infinite or NaN distance for."""

from __future__ import annotations

import numpy as np

from flux_core.backend import Matrix
from flux_core.errors import InvalidArgument, Reason

#: The largest squared norm a vector may have: 2**125 (about 4.3e37). Between two such vectors every
#: distance the backends compute in float32 stays finite: an L2 distance is at most 4 * 2**125 = 2**127,
#: an inner product (and each partial sum of one) at most 2**125, both below float32's largest, about 2**128.
MAX_SQUARED_NORM = 2.0**125


def check_vectors(matrix: Matrix, field: str) -> None:
    """Refuse rows holding NaN or Inf, or a squared norm above ``MAX_SQUARED_NORM``, naming the first such row.

    One check for queries and upserts alike, before any backend sees them, so no backend ever
    computes an infinite distance (or warns about an overflow) whatever its arithmetic. The
    squared norms are computed in float32, where NaN stays NaN and an overflow becomes Inf,
    so the one comparison also catches the values that are not finite.
    """
    # Neither warns on overflow, and NaN stays NaN. One row (every Search) by vdot: einsum parses
    # its subscripts on each call, 4 µs against 1.3 for a 128-d query.
    if len(matrix) == 1 and np.vdot(matrix, matrix) <= MAX_SQUARED_NORM:  # one comparison, False for NaN too
        return
    squared = np.einsum("ij,ij->i", matrix, matrix)
    if squared.max(initial=0.0) <= MAX_SQUARED_NORM:
        return
    fine = squared <= MAX_SQUARED_NORM
    row = int(np.argmin(fine))
    if not np.isfinite(matrix[row]).all():
        raise InvalidArgument(
            f"{field} row {row} contains NaN or Inf; every value must be finite", field=field, reason=Reason.NOT_FINITE
        )
    raise InvalidArgument(
        f"{field} row {row} has a squared norm of {float(squared[row]):.3g} in float32, above the largest Flux "
        f"accepts, 2**125 (about {MAX_SQUARED_NORM:.2g}; a norm of about {MAX_SQUARED_NORM**0.5:.2g}): distances "
        "to it would overflow float32; scale the vectors down",
        field=field,
        reason=Reason.NORM_TOO_LARGE,
    )


def normalised(vectors: Matrix) -> Matrix:
    """``vectors`` as float32 rows of unit length, in a new C-contiguous array (zero rows stay zero):
    what a backend that serves ``cosine`` as inner products of unit vectors stores and searches."""
    out = np.array(vectors, np.float32, copy=True, order="C")
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-30))
    return out
