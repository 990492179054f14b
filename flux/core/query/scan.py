"""The filter planner's exact scan: the k nearest of given labels, from the vector copy or the backend.

Fast float32 scores pick a shortlist of ``2k + 8`` (with the crowding cap applied in score order),
which is ranked on float64 distances as the ``exact`` backend ranks (``flux.core.query.ranking``);
equal distances go to the smaller label, so a scan's answer never depends on anything but its input.
Scores are computed a block of rows at a time, or, when most items pass, by sweeping every row of
the copy in order (the planner's cost model, ``flux.core.query.costs``, says which).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flux.core.query import ranking
from flux_core.backend import Backend, Labels, Matrix
from flux_core.storage.attribute_table import NO_TAG, Mask, Table

#: The crowded shortlist grows by this factor until it holds enough items under the cap.
_GROWTH = 4


class ExactScan:
    """Exact k-nearest over given labels of one index version. Thread-safe.

    ``vectors`` is the artifact's float32 copy of the vectors (or None): scans read it instead of
    ``Backend.get_vectors``, which is a call per item for hnswlib and Annoy, except for labels
    written since the artifact was loaded.
    """

    def __init__(self, backend: Backend, vectors: Matrix | None) -> None:
        self._backend = backend
        self._vectors = vectors
        self._norms: Matrix | None = None

    def __call__(self, query: Matrix, labels: Labels, k: int, cap: int, table: Table) -> tuple[Labels, Matrix]:
        """The k nearest of ascending ``labels`` (at most ``cap`` per crowding tag when ``cap``), nearest
        first, with their float64 distances; the labels' vectors are gathered a block at a time."""
        if not len(labels):
            return labels, np.empty(0, np.float32)
        scores = np.empty(len(labels), np.float32)
        step = ranking.block_rows(self._backend.dimension)
        for start in range(0, len(labels), step):
            vectors, squared = self.gather(labels[start : start + step], table)
            ranking.scores(vectors, squared, query, self._backend.metric, out=scores[start : start + step])
        return self._ranked(query, labels, scores, k, cap, table)

    def swept(self, query: Matrix, mask: Mask, k: int, cap: int, table: Table) -> tuple[Labels, Matrix] | None:
        """As a call with the labels ``mask`` passes (most of them), by scoring every row of the vector
        copy in order; None when the copy does not hold every label as it is now."""
        copy = self._vectors
        if copy is None or table.any_changed or len(mask) > len(copy):
            return None
        size = len(mask)
        every = ranking.blocked_scores(copy[:size], self._copy_norms(copy)[:size], query, self._backend.metric)
        np.copyto(every, np.float32(np.inf), where=~mask)  # a label that does not pass is never shortlisted
        return self._ranked(query, None, every, k, cap, table, mask)

    def _ranked(
        self,
        query: Matrix,
        labels: Labels | None,
        scores: Matrix,
        k: int,
        cap: int,
        table: Table,
        mask: Mask | None = None,
    ) -> tuple[Labels, Matrix]:
        """The k best of ``labels`` (None: every label, those ``mask`` passes) by their fast ``scores``,
        ranked on exact distances: a shortlist of ``2k + 8`` absorbs the rounding of the fast scores."""
        spare = 2 * k + 8
        tags = table.tags if labels is None else table.tags[labels]
        if cap:
            order = _crowded_order(scores, tags, cap, spare)
        elif len(scores) > spare:
            order = scores.argpartition(spare - 1)[:spare]
        else:
            order = np.arange(len(scores))
        order = np.sort(order)  # ascending labels, as ``gather`` takes them
        chosen = order if labels is None else labels[order]
        if mask is not None:  # fewer pass than the shortlist holds
            chosen = chosen[mask[chosen]]
            if not len(chosen):
                return chosen, np.empty(0, np.float32)
        vectors, _ = self.gather(chosen, table)
        exact = ranking.distances(vectors, query, self._backend.metric)
        ranked = np.lexsort((chosen, exact))[:k]  # nearest first; equal distances by label
        return chosen[ranked], exact[ranked]

    def gather(self, labels: Labels, table: Table) -> tuple[Matrix, Matrix]:
        """The vectors of ascending ``labels`` and their squared norms: from the copy where it is
        current, else from the backend."""
        copy = self._vectors
        if copy is None:
            vectors = self._backend.get_vectors(labels)
            return vectors, ranking.squared_norms(vectors)
        norms = self._copy_norms(copy)
        if not table.any_changed and labels[-1] < len(copy):
            return np.take(copy, labels, axis=0), np.take(norms, labels)  # take: faster than copy[labels]
        current = labels < len(copy)
        current[current] = ~table.changed[labels[current]]
        out = np.empty((len(labels), self._backend.dimension), np.float32)
        out[current] = np.take(copy, labels[current], axis=0)
        if not current.all():
            out[~current] = self._backend.get_vectors(labels[~current])
        squared = np.empty(len(labels), np.float32)
        squared[current] = np.take(norms, labels[current])
        squared[~current] = ranking.squared_norms(out[~current])
        return out, squared

    def _copy_norms(self, copy: Matrix) -> Matrix:
        """The squared norm of every row of the copy, computed once (two racing scans both compute it)."""
        if self._norms is None:
            self._norms = ranking.squared_norms(copy)
        return self._norms


def among(labels: Labels, ascending: Labels) -> Mask:
    """Which of ``labels`` are in the ascending array ``ascending`` (binary search)."""
    if not len(ascending):
        return np.zeros(len(labels), np.bool_)
    at = np.minimum(np.searchsorted(ascending, labels), len(ascending) - 1)
    found: Mask = ascending[at] == labels
    return found


def tags_of(table: Table, labels: Labels) -> npt.NDArray[np.int32]:
    """The crowding tag of each label; a label the table does not cover yet has none."""
    inside = labels < table.size
    if inside.all():
        return table.tags[labels]
    out = np.full(len(labels), NO_TAG, np.int32)
    out[inside] = table.tags[labels[inside]]
    return out


def _crowded_order(scores: Matrix, tags: npt.NDArray[np.int32], cap: int, wanted: int) -> Labels:
    """Positions of the ``wanted`` best ``scores`` that respect the crowding cap, best first."""
    shortlist = min(len(scores), 4 * wanted)
    while True:
        top = np.argpartition(scores, shortlist - 1)[:shortlist] if shortlist < len(scores) else np.arange(len(scores))
        top = top[np.argsort(scores[top], kind="stable")]
        kept = top[ranking.crowd(tags[top], cap)]
        if len(kept) >= wanted or shortlist == len(scores):
            return kept[:wanted]
        shortlist = min(len(scores), shortlist * _GROWTH)
