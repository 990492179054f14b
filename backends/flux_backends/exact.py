"""``exact``: brute-force search with numpy, the ground truth other backends are measured against."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flux_core.backend import Backend, Capabilities, Labels, Matrix, Metric, Progress
from flux_core.vectors import normalised

# Queries are scored in chunks so that one chunk's score matrix stays near this many floats.
_SCORE_BUDGET = 1 << 24


@dataclass(frozen=True)
class _State:
    """One consistent snapshot: writers build a new one, searches read whichever is current."""

    vectors: Matrix  # normalised for cosine
    labels: Labels  # label of each row
    sq_norms: Matrix | None  # for l2
    ascending: bool  # labels ascend, so a label's row is found by binary search


@dataclass(frozen=True)
class _Room:
    """Arrays with spare rows past the current snapshot's end, for appends (never seen by searches)."""

    vectors: Matrix
    labels: Labels
    sq_norms: Matrix | None


class ExactBackend(Backend):
    """Scores every stored vector with one matrix product (BLAS releases the GIL).

    Candidates are chosen on the matrix-product scores, then their distances are
    recomputed directly in float64, so reported distances match numpy's to float32
    precision. New items with labels above every stored one (the way Flux hands them out)
    are appended into spare rows, amortised O(batch); replacing or deleting items copies
    the arrays (O(n)), so that no search ever sees a row half-written.
    """

    name = "exact"
    capabilities = Capabilities(mutable=True, supports_delete=True, mmap_load=True, thread_safe_search=True)

    def __init__(self, dimension: int, metric: Metric, vectors: Matrix, labels: Labels) -> None:
        super().__init__(dimension, metric)
        self._state = self._snapshot(vectors, labels)
        self._room: _Room | None = None  # made by the first append
        self._write_lock = threading.Lock()

    def _norms(self, vectors: Matrix) -> Matrix | None:
        return np.einsum("ij,ij->i", vectors, vectors, dtype=np.float32) if self.metric is Metric.L2 else None

    def _snapshot(self, vectors: Matrix, labels: Labels) -> _State:
        return _State(vectors, labels, self._norms(vectors), bool(np.all(labels[1:] > labels[:-1])))

    def _append(self, new: Matrix, labels: Labels) -> None:
        """Write ``new`` into spare rows past the snapshot's end, then publish the longer snapshot."""
        state, room = self._state, self._room
        n, m = len(state.labels), len(labels)
        if room is None or n + m > len(room.labels):
            capacity = max(2 * (n + m), 1024)
            vectors = np.empty((capacity, self.dimension), np.float32)
            vectors[:n] = state.vectors
            stored = np.empty(capacity, np.int64)
            stored[:n] = state.labels
            norms = None
            if state.sq_norms is not None:
                norms = np.empty(capacity, np.float32)
                norms[:n] = state.sq_norms
            room = self._room = _Room(vectors, stored, norms)
        room.vectors[n : n + m] = new
        room.labels[n : n + m] = labels
        if room.sq_norms is not None:
            room.sq_norms[n : n + m] = self._norms(new)
        self._state = _State(
            room.vectors[: n + m],
            room.labels[: n + m],
            None if room.sq_norms is None else room.sq_norms[: n + m],
            state.ascending,
        )

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
        stored = normalised(vectors) if metric is Metric.COSINE else np.array(vectors, dtype=np.float32, order="C")
        if progress:
            progress(len(stored), len(stored))
        return cls(vectors.shape[1], metric, stored, np.arange(len(stored), dtype=np.int64))

    def save(self, directory: Path) -> list[str]:
        state = self._state
        np.save(directory / "vectors.npy", state.vectors, allow_pickle=False)
        np.save(directory / "labels.npy", state.labels, allow_pickle=False)
        return ["vectors.npy", "labels.npy"]

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> ExactBackend:
        vectors = _load_npy(directory / "vectors.npy", mmap=True)
        labels = _load_npy(directory / "labels.npy")
        if vectors.dtype != np.float32 or vectors.shape != (count, dimension):
            raise ValueError(
                f"vectors.npy holds {vectors.dtype} {vectors.shape}, expected float32 ({count}, {dimension})"
            )
        if labels.dtype != np.int64 or labels.shape != (count,):
            raise ValueError(f"labels.npy holds {labels.dtype} {labels.shape}, expected int64 ({count},)")
        return cls(dimension, metric, vectors, labels)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        state = self._state
        q, n = len(queries), len(state.vectors)
        labels = np.full((q, k), -1, np.int64)
        distances = np.full((q, k), np.inf, np.float32)
        if n == 0 or q == 0:
            return labels, distances
        if self.metric is Metric.COSINE:
            queries = normalised(queries)
        keep = min(n, k)
        # A few spare candidates absorb the rounding of the matrix-product scores.
        shortlist = min(n, 2 * keep + 8)
        # Blocks of queries whose scores fit the budget; with threads, at least one block per thread.
        # numpy leaves the GIL in the products, partitions and sorts, so the blocks run side by side
        # (a server keeps numpy's BLAS on one thread per product: flux.blas).
        step = max(1, min(_SCORE_BUDGET // n, -(-q // max(1, threads))))

        def block(start: int) -> None:
            chunk = queries[start : start + step]
            # Flux refuses vectors whose distances would overflow float32 (flux_core.vectors.check_vectors);
            # an artifact built from such vectors elsewhere gets distance inf, as in the other backends, unwarned.
            with np.errstate(over="ignore", invalid="ignore"):
                scores = self._scores(state, chunk)
                if shortlist < n:
                    rows = np.argpartition(scores, shortlist - 1, axis=1)[:, :shortlist]
                else:
                    rows = np.broadcast_to(np.arange(n), (len(chunk), n))
                exact = self._exact_distances(state, chunk, rows)
            order = np.argsort(exact, axis=1, kind="stable")[:, :keep]
            labels[start : start + len(chunk), :keep] = state.labels[np.take_along_axis(rows, order, axis=1)]
            distances[start : start + len(chunk), :keep] = np.take_along_axis(exact, order, axis=1)

        starts = range(0, q, step)
        if threads > 1 and len(starts) > 1:
            with ThreadPoolExecutor(min(threads, len(starts)), thread_name_prefix="flux-exact") as pool:
                list(pool.map(block, starts))
        else:
            for start in starts:
                block(start)
        return labels, distances

    def _scores(self, state: _State, queries: Matrix) -> Matrix:
        """Smaller is nearer; equal to the distance up to a per-query constant and rounding."""
        dots: Matrix = queries @ state.vectors.T
        if state.sq_norms is not None:
            scores: Matrix = state.sq_norms - 2 * dots
            return scores
        return np.negative(dots)

    def _exact_distances(self, state: _State, queries: Matrix, rows: Labels) -> Matrix:
        stored = np.asarray(state.vectors[rows], dtype=np.float64)  # (q, c, d)
        query = queries.astype(np.float64)[:, None, :]
        if self.metric is Metric.L2:
            diff = stored - query
            squared: np.ndarray = np.einsum("qcd,qcd->qc", diff, diff)
            return squared.astype(np.float32)
        dots: np.ndarray = np.einsum("qcd,qcd->qc", stored, query)
        return (1.0 - dots).astype(np.float32)

    def add(self, vectors: Matrix, labels: Labels) -> None:
        if not len(labels):
            return
        new = normalised(vectors) if self.metric is Metric.COSINE else np.asarray(vectors, np.float32)
        # A label given twice keeps its last vector; np.unique also puts the labels in ascending order.
        last = len(labels) - 1 - np.unique(labels[::-1], return_index=True)[1]
        labels, new = labels[last], new[last]
        with self._write_lock:
            state = self._state
            if state.ascending and (not len(state.labels) or labels[0] > state.labels[-1]):
                self._append(new, labels)  # all new, all after the last stored label
                return
            rows = _rows_of(state, labels)  # -1: not stored yet
            present = rows >= 0
            stored = np.array(state.vectors)
            stored[rows[present]] = new[present]
            if not present.all():
                stored = np.vstack([stored, new[~present]])
            stored_labels = np.concatenate([state.labels, labels[~present]])
            self._state = self._snapshot(np.ascontiguousarray(stored), stored_labels)
            self._room = None  # the new snapshot has arrays of its own

    def delete(self, labels: Labels) -> None:
        with self._write_lock:
            state = self._state
            present = np.isin(labels, state.labels)
            if not present.all():
                raise KeyError(f"label {int(labels[~present][0])} is not in the index")
            keep = ~np.isin(state.labels, labels)
            self._state = self._snapshot(np.ascontiguousarray(state.vectors[keep]), state.labels[keep])
            self._room = None

    def get_vectors(self, labels: Labels) -> Matrix:
        state = self._state
        rows = _rows_of(state, labels)
        if (rows < 0).any():
            raise KeyError(f"label {int(labels[rows < 0][0])} is not in the index")
        return np.array(state.vectors[rows], dtype=np.float32)

    def __len__(self) -> int:
        return len(self._state.vectors)

    def stats(self) -> dict[str, Any]:
        return {"vector_bytes": int(self._state.vectors.nbytes)}


def _load_npy(path: Path, *, mmap: bool = False) -> Any:
    """``np.load``, with an empty file refused as ValueError (numpy raises EOFError, which Flux would not name)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except EOFError as exc:
        raise ValueError(f"{path.name} is empty or cut short: {exc}") from exc


def _rows_of(state: _State, labels: Labels) -> Labels:
    """The row of each of ``labels`` in ``state`` (labels are unique there), -1 where absent."""
    stored = state.labels
    if not len(stored):
        return np.full(len(labels), -1, np.int64)
    if state.ascending:
        rows = np.minimum(np.searchsorted(stored, labels), len(stored) - 1)
    else:
        order = np.argsort(stored, kind="stable")
        rows = order[np.minimum(np.searchsorted(stored, labels, sorter=order), len(order) - 1)]
    return np.where(stored[rows] == labels, rows, -1).astype(np.int64)
