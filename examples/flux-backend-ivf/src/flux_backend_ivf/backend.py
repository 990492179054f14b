"""``ivf``: an inverted file with exact distances inside the lists it probes (IVF-flat)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from flux_core.backend import Allowed, Backend, Capabilities, Labels, Matrix, Metric, Param, Progress

# k-means sees at most this many vectors per list: more barely moves the centroids.
_TRAIN_PER_LIST = 256
# A filtered search scans the nearest lists until they hold this many times the depth Flux asks for.
_COVER = 8


class IvfBackend(Backend):
    """k-means splits the vectors into ``nlist`` lists; a query scans the ``nprobe`` lists
    whose centroids score best, and ranks what it finds there exactly.

    The lists are stored as one matrix sorted by list, ``offsets`` marking where each
    list starts, so ``load`` memory-maps it and serving processes share its pages.
    Immutable: new data means a new build. Nothing is written after construction, so
    concurrent searches need no lock.

    Filterable: ``search_filtered`` scans the nearest lists until they hold ``_COVER`` x ``depth``
    items, and ranks only the allowed ones among them (by the mask, or by the excluded labels
    when Flux sends no mask), so a query whose nearest items are left out still finds k.
    """

    name = "ivf"
    capabilities = Capabilities(filterable=True, mmap_load=True, thread_safe_search=True)
    build_params: ClassVar[Mapping[str, Param]] = {
        "nlist": Param(0, 0, 65_536, doc="number of lists; 0 means the square root of the item count"),
        "iterations": Param(10, 1, 100, doc="k-means iterations; more balances the lists better, builds slower"),
        "seed": Param(0, 0, 2**31 - 1, doc="random seed of the k-means start, for reproducible builds"),
    }
    search_params: ClassVar[Mapping[str, Param]] = {
        "nprobe": Param(
            8, 1, 65_536, doc="lists scanned per query (more if they hold under k items); more: higher recall"
        ),
    }

    def __init__(
        self, dimension: int, metric: Metric, centroids: Matrix, offsets: Labels, vectors: Matrix, labels: Labels
    ) -> None:
        super().__init__(dimension, metric)
        self._centroids = centroids  # nlist x d
        self._offsets = offsets  # list i holds rows offsets[i] .. offsets[i + 1] - 1
        self._vectors = vectors  # n x d, sorted by list; normalised for cosine
        self._labels = labels  # label of each row
        self._rows = np.empty(len(labels), np.int64)  # row of each label
        self._rows[labels] = np.arange(len(labels))

    @classmethod
    def library_version(cls) -> str:
        return f"flux-backend-ivf {version('flux-backend-ivf')} (numpy {np.__version__})"

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> IvfBackend:
        n, dimension = vectors.shape
        data = _normalised(vectors) if metric is Metric.COSINE else vectors
        nlist = min(n, int(params["nlist"]) or round(n**0.5))
        rng = np.random.default_rng(int(params["seed"]))
        centroids = _kmeans(data, nlist, int(params["iterations"]), rng)
        assignment = np.argmin(_coarse_scores(data, centroids, metric), axis=1) if n else np.empty(0, np.int64)
        order = np.argsort(assignment, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(assignment, minlength=nlist))]).astype(np.int64)
        if progress:
            progress(n, n)
        return cls(dimension, metric, centroids, offsets, np.ascontiguousarray(data[order]), order.astype(np.int64))

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "centroids.npy": self._centroids,
            "offsets.npy": self._offsets,
            "vectors.npy": self._vectors,
            "labels.npy": self._labels,
        }

    def save(self, directory: Path) -> list[str]:
        arrays = self._arrays()
        for name, array in arrays.items():
            np.save(directory / name, array, allow_pickle=False)
        return list(arrays)

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> IvfBackend:
        centroids = _load_npy(directory / "centroids.npy")
        offsets = _load_npy(directory / "offsets.npy")
        vectors = _load_npy(directory / "vectors.npy", mmap=True)
        labels = _load_npy(directory / "labels.npy")
        nlist = len(centroids)
        if (
            centroids.shape != (nlist, dimension)
            or offsets.shape != (nlist + 1,)
            or offsets[-1] != count
            or vectors.shape != (count, dimension)
            or labels.shape != (count,)
        ):
            raise ValueError(
                f"the lists hold {vectors.shape[0]} vectors of dimension {vectors.shape[1:]}, or are "
                f"inconsistent; expected {count} of dimension {dimension} in {nlist} lists"
            )
        return cls(dimension, metric, centroids, offsets, vectors, labels)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        return self._search(queries, k, int(params["nprobe"]), k, None)

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Allowed, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        return self._search(queries, k, int(params["nprobe"]), _COVER * depth, allowed)

    def _search(
        self, queries: Matrix, k: int, nprobe: int, reach: int, allowed: Allowed | None
    ) -> tuple[Labels, Matrix]:
        """Per query, the ``nprobe`` nearest lists and the next ones until they hold ``reach`` items;
        then more, while fewer than k of what they hold are allowed (and more are allowed)."""
        labels = np.full((len(queries), k), -1, np.int64)
        distances = np.full((len(queries), k), np.inf, np.float32)
        nlist = len(self._centroids)
        if nlist == 0:
            return labels, distances
        if self.metric is Metric.COSINE:
            queries = _normalised(queries)
        wanted = min(k, len(self) if allowed is None else _allowed_count(allowed, len(self)))
        sizes = np.diff(self._offsets)
        nearest = np.argsort(_coarse_scores(queries, self._centroids, self.metric), axis=1, kind="stable")
        for row, order in enumerate(nearest):
            held = np.cumsum(sizes[order])
            probe = min(nlist, max(nprobe, int(np.searchsorted(held, max(wanted, reach))) + 1))
            while True:
                rows = np.concatenate([np.arange(self._offsets[i], self._offsets[i + 1]) for i in order[:probe]])
                if allowed is not None:
                    rows = rows[_passes(self._labels[rows], allowed)]
                if len(rows) >= wanted or probe == nlist:
                    break
                probe = min(nlist, 2 * probe)
            found = _distances(self._vectors[rows], queries[row], self.metric)
            keep = min(k, len(rows))
            best = np.argpartition(found, keep - 1)[:keep] if keep < len(rows) else np.arange(len(rows))
            best = best[np.argsort(found[best], kind="stable")]
            labels[row, :keep] = self._labels[rows[best]]
            distances[row, :keep] = found[best]
        return labels, distances

    def get_vectors(self, labels: Labels) -> Matrix:
        unknown = (labels < 0) | (labels >= len(self._rows))
        if unknown.any():
            raise KeyError(f"label {int(labels[unknown][0])} is not in the index")
        return np.array(self._vectors[self._rows[labels]], dtype=np.float32)

    def __len__(self) -> int:
        return len(self._labels)

    def stats(self) -> dict[str, Any]:
        sizes = np.diff(self._offsets)
        return {"nlist": len(self._centroids), "largest_list": int(sizes.max()) if len(sizes) else 0}


def _passes(labels: Labels, allowed: Allowed) -> npt.NDArray[np.bool_]:
    """Which of ``labels`` ``allowed`` allows: by its mask, or else not among its excluded labels."""
    if allowed.mask is not None:
        inside = labels < len(allowed.mask)  # a label past the mask's end is not allowed
        inside[inside] = allowed.mask[labels[inside]]
        return inside
    excluded = allowed.excluded
    if not len(excluded):
        return np.ones(len(labels), np.bool_)
    at = np.searchsorted(excluded, labels)
    passing: npt.NDArray[np.bool_] = (at == len(excluded)) | (excluded[np.minimum(at, len(excluded) - 1)] != labels)
    return passing


def _allowed_count(allowed: Allowed, count: int) -> int:
    """How many of the labels 0 .. count - 1 ``allowed`` allows."""
    if allowed.mask is not None:
        return int(np.count_nonzero(allowed.mask[:count]))
    return count - int(np.count_nonzero(allowed.excluded < count))


def _load_npy(path: Path, *, mmap: bool = False) -> npt.NDArray[Any]:
    """``np.load``; an empty file raises ValueError, as Flux expects, where numpy raises EOFError."""
    try:
        array: npt.NDArray[Any] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except EOFError as exc:
        raise ValueError(f"{path.name} is empty or cut short: {exc}") from exc
    return array


def _kmeans(data: Matrix, nlist: int, iterations: int, rng: np.random.Generator) -> Matrix:
    """Lloyd's k-means from ``nlist`` distinct random rows; a list left empty keeps its centroid."""
    if nlist == 0:
        return np.empty((0, data.shape[1]), np.float32)
    sample = data[rng.choice(len(data), min(len(data), nlist * _TRAIN_PER_LIST), replace=False)]
    centroids = sample[rng.choice(len(sample), nlist, replace=False)].copy()
    for _ in range(iterations):
        assignment = np.argmin(_coarse_scores(sample, centroids, Metric.L2), axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assignment, sample)
        counts = np.bincount(assignment, minlength=nlist)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def _coarse_scores(vectors: Matrix, centroids: Matrix, metric: Metric) -> Matrix:
    """How near each centroid is to each vector, smaller is nearer, up to a per-vector constant."""
    dots: Matrix = vectors @ centroids.T
    if metric is Metric.L2:
        scores: Matrix = np.einsum("ij,ij->i", centroids, centroids)[None, :] - 2 * dots
        return scores
    return np.negative(dots)


def _distances(vectors: Matrix, query: Matrix, metric: Metric) -> Matrix:
    """Flux's convention: squared L2, or 1 - dot product (on normalised vectors for cosine)."""
    if metric is Metric.L2:
        diff = vectors - query
        squared: Matrix = np.einsum("ij,ij->i", diff, diff)
        return squared
    similarity: Matrix = vectors @ query
    return 1.0 - similarity


def _normalised(vectors: Matrix) -> Matrix:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)
