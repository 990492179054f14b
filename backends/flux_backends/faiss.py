"""``faiss``: faiss's HNSW graph (``IndexHNSWFlat``), with filters pushed down into the search; and
``FaissIndex``, what it shares with ``faiss-ivf`` (faiss_ivf.py)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, Self

import faiss
import numpy as np

from flux_core.backend import Allowed, Backend, Capabilities, Labels, Matrix, Metric, Param, Progress
from flux_core.vectors import normalised

#: faiss's metric for each of Flux's (cosine: inner products of normalised vectors).
METRICS = {
    Metric.L2: faiss.METRIC_L2,
    Metric.COSINE: faiss.METRIC_INNER_PRODUCT,
    Metric.IP: faiss.METRIC_INNER_PRODUCT,
}
#: Builds with progress add the vectors in this many parts (each part runs on every thread).
_PARTS = 20
#: filter_bits packs a flag per label when the index holds fewer than this many labels per excluded one.
_PACKED_BELOW = 64
_FILE = "index.faiss"


class FaissIndex(Backend):
    """What faiss's backends share: one faiss index of ``kind`` in one file, label i = row i.

    faiss reports squared L2 distances and, for inner product, the dot product: ``ip`` returns
    1 - dot, and ``cosine`` stores normalised vectors and returns 1 - cosine.
    """

    kind: ClassVar[type]

    def __init__(self, dimension: int, metric: Metric, index: Any) -> None:
        super().__init__(dimension, metric)
        self._index = index

    @classmethod
    def library_version(cls) -> str:
        return f"faiss-cpu {version('faiss-cpu')}"

    def save(self, directory: Path) -> list[str]:
        faiss.write_index(self._index, str(directory / _FILE))
        return [_FILE]

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> Self:
        path = directory / _FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        index = faiss.read_index(str(path))  # of its own class (faiss downcasts what it reads)
        if not isinstance(index, cls.kind):
            raise ValueError(f"{_FILE} holds a {type(index).__name__}, not an {cls.kind.__name__}")
        if index.d != dimension:
            raise ValueError(f"{_FILE} holds {index.d}-dimensional vectors, expected {dimension}")
        if index.ntotal != count:
            raise ValueError(f"{_FILE} holds {index.ntotal} items, expected {count}")
        if index.metric_type != METRICS[metric]:
            raise ValueError(f"{_FILE} was built for another metric than {metric.value}")
        return cls(dimension, metric, index)

    def filter_bits(self, allowed: Allowed) -> tuple[np.ndarray, int]:
        """``allowed`` as the bitmap faiss's ``IDSelectorBitmap`` reads, and how many labels it allows.

        faiss reads bit (label & 7) of byte (label >> 3). Without a mask every bit starts set and
        the excluded labels' bits are cleared one by one: a byte per 8 labels to fill (0.1 ms at 30
        million) instead of a flag per label to pack (20 ms). Clearing costs about 80 times as much
        per label as packing does, so where the excluded labels are more than a 64th of the index
        (10,000 of 200,000: 0.05 against 0.19 ms) a flag per label is packed instead."""
        n = len(self)
        if allowed.mask is not None:
            flags = allowed.flags(n)
            return np.packbits(flags, bitorder="little"), int(np.count_nonzero(flags))
        excluded = allowed.excluded[allowed.excluded < n]
        if n < _PACKED_BELOW * len(excluded):
            flags = np.ones(n, np.bool_)
            flags[excluded] = False
            return np.packbits(flags, bitorder="little"), n - len(excluded)
        bits = np.full(-(-n // 8), 0xFF, np.uint8)
        np.bitwise_and.at(bits, excluded >> 3, ~np.left_shift(np.uint8(1), (excluded & 7).astype(np.uint8)))
        return bits, n - len(excluded)

    def selector(self, bits: np.ndarray | None) -> Any:
        """faiss's selector over ``bits``; it reads them in place, so keep them referenced until the search returns."""
        return None if bits is None else faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bits))

    def to_flux(self, found: Matrix) -> Matrix:
        """faiss's distances as Flux's."""
        if self.metric is Metric.L2:
            return found
        out: Matrix = (np.float32(1.0) - found).astype(np.float32)
        return out

    def get_vectors(self, labels: Labels) -> Matrix:
        labels = np.asarray(labels, np.int64)
        outside = (labels < 0) | (labels >= len(self))
        if outside.any():
            raise KeyError(f"label {int(labels[outside][0])} is not in the index")
        if not len(labels):
            return np.empty((0, self.dimension), np.float32)
        return np.asarray(self._index.reconstruct_batch(labels), np.float32)

    def __len__(self) -> int:
        return int(self._index.ntotal)


class FaissBackend(FaissIndex):
    """faiss's HNSW graph over the vectors as given (``IndexHNSWFlat``); label i is row i.

    Filterable: ``search_filtered`` hands faiss an ``IDSelectorBitmap`` over the labels, so the
    graph is walked as without a filter while only allowed items enter the results; ``depth``
    raises ``efSearch``, the beam, so that the walk reaches past items that are not allowed
    (the query's nearest items excluded, or a rare restrict). faiss raises neither ``efSearch``
    to k nor returns k results whenever k exist; this backend searches a row again with twice
    the beam until it has them, or the beam covers the whole index.

    Immutable: faiss's HNSW cannot remove items, and adds after build would need an id map and
    locking; build a new version instead. ``search`` releases the GIL and runs on OpenMP
    threads bounded per call (``omp_set_num_threads`` holds per calling thread).
    """

    name = "faiss"
    kind = faiss.IndexHNSWFlat
    capabilities = Capabilities(filterable=True, thread_safe_search=True)
    build_params: ClassVar[Mapping[str, Param]] = {
        "M": Param(16, 2, 200, doc="graph degree; more gives higher recall and more memory"),
        "ef_construction": Param(200, 1, 10_000, doc="build-time beam; more gives a better graph, slower build"),
        "seed": Param(12345, 0, 2**31 - 1, doc="random seed of the graph's levels, for reproducible builds"),
    }
    search_params: ClassVar[Mapping[str, Param]] = {
        "ef": Param(64, 1, 100_000, doc="search beam (efSearch), at least k is used; more gives higher recall, slower"),
    }

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> FaissBackend:
        dimension = vectors.shape[1]
        index = faiss.IndexHNSWFlat(dimension, int(params["M"]), METRICS[metric])
        index.hnsw.efConstruction = int(params["ef_construction"])
        index.hnsw.rng = faiss.RandomGenerator(int(params["seed"]))  # type: ignore[attr-defined]  # not in faiss's stubs
        faiss.omp_set_num_threads(max(1, threads))
        add(index, stored(vectors, metric), progress)
        return cls(dimension, metric, index)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        return self._search(queries, k, int(params["ef"]), None, min(k, len(self)), threads)

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Allowed, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        bits, count = self.filter_bits(allowed)
        return self._search(queries, k, max(int(params["ef"]), depth), bits, min(k, count), threads)

    def _search(
        self, queries: Matrix, k: int, ef: int, bits: np.ndarray | None, wanted: int, threads: int
    ) -> tuple[Labels, Matrix]:
        """Every row with ``wanted`` results: rows that came back short are searched again with
        twice the beam, until a beam as large as the index walks every item it can reach."""
        q = len(queries)
        labels = np.full((q, k), -1, np.int64)
        distances = np.full((q, k), np.inf, np.float32)
        n = len(self)
        if not q or not n or not wanted:
            return labels, distances
        rows = np.arange(q)
        matrix = stored(queries, self.metric)
        faiss.omp_set_num_threads(max(1, threads))
        ef = max(ef, k)
        while True:
            found_distances, found = self._index.search(
                matrix[rows],
                k,
                params=faiss.SearchParametersHNSW(efSearch=ef, sel=self.selector(bits)),  # type: ignore[attr-defined]
            )
            labels[rows], distances[rows] = found, self.to_flux(found_distances)
            short = (found >= 0).sum(axis=1) < wanted
            if not short.any() or ef >= 2 * n:
                break
            rows, ef = rows[short], min(2 * ef, 2 * n)
        distances[labels < 0] = np.inf
        return labels, distances

    def stats(self) -> dict[str, Any]:
        hnsw = self._index.hnsw
        return {
            "M": int(hnsw.nb_neighbors(1)),
            "ef_construction": int(hnsw.efConstruction),
            "levels": int(hnsw.max_level),
        }


def stored(vectors: Matrix, metric: Metric) -> Matrix:
    """Vectors (items or queries) as faiss takes them for ``metric``: float32 rows, normalised for cosine."""
    return normalised(vectors) if metric is Metric.COSINE else np.ascontiguousarray(vectors, np.float32)


def add(index: Any, vectors: Matrix, progress: Progress | None) -> None:
    """Add ``vectors`` to ``index``: with progress, in ``_PARTS`` parts (each part runs on every thread)."""
    n = len(vectors)
    step = max(1, -(-n // _PARTS)) if progress else max(n, 1)
    for start in range(0, n, step):
        index.add(vectors[start : start + step])
        if progress:
            progress(min(start + step, n), n)
    if progress and not n:
        progress(0, 0)
