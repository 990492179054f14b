"""Benchmark data: seeded synthetic sets, files a user already has, exact ground truth, recall.

Real embeddings are not isotropic noise: each cluster of them lies near a subspace of far
lower dimension than the vectors have. ``embeddings`` generates such data, so that an index
meets the difficulty it will meet in production: the standard set has 128 dimensions with
16 intrinsic ones per cluster; the hard set has 384 dimensions, 64 intrinsic ones, more
isotropic noise and clusters that overlap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flux.datasets import load_vectors
from flux_core.backend import Labels, Matrix, Metric
from flux_core.errors import InvalidArgument
from flux_core.storage import registry


@dataclass(frozen=True)
class Dataset:
    """Base vectors, held-out queries and the true neighbours of each query (labels, nearest first)."""

    name: str
    base: Matrix
    queries: Matrix
    truth: Labels
    metric: Metric

    @property
    def dimension(self) -> int:
        return int(self.base.shape[1])


@dataclass(frozen=True)
class Synthetic:
    """A seeded set from ``embeddings``; queries come from the same clusters but are not in the base."""

    name: str
    count: int
    dimension: int
    latent: int = 16
    spread: float = 0.5
    noise: float = 0.05
    queries: int = 1000
    clusters: int = 64
    seed: int = 0

    def key(self) -> str:
        return (
            f"{self.name}-{self.count}x{self.dimension}-l{self.latent}-s{self.spread}-n{self.noise}"
            f"-c{self.clusters}-q{self.queries}-{self.seed}"
        )

    def generate(self) -> tuple[Matrix, Matrix]:
        data = embeddings(
            self.count + self.queries,
            self.dimension,
            clusters=self.clusters,
            latent=self.latent,
            spread=self.spread,
            noise=self.noise,
            seed=self.seed,
        )
        return data[: self.count], data[self.count :]


def embeddings(
    n: int,
    dimension: int,
    *,
    clusters: int = 64,
    latent: int = 16,
    spread: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
) -> Matrix:
    """``n`` vectors in uneven clusters around random centres; each cluster spans its own random
    ``latent``-dimensional subspace (scaled by ``spread``) plus isotropic ``noise * spread``.

    A ``spread`` near 1 makes clusters overlap; more ``latent`` dimensions or noise make
    neighbours harder to find.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension)).astype(np.float32)
    assignment = rng.choice(clusters, size=n, p=rng.dirichlet(np.full(clusters, 2.0)))
    out = np.empty((n, dimension), np.float32)
    for cluster in range(clusters):
        rows = np.flatnonzero(assignment == cluster)
        basis = rng.standard_normal((latent, dimension)).astype(np.float32) / np.float32(np.sqrt(latent))
        inside = rng.standard_normal((len(rows), latent)).astype(np.float32) @ basis
        jitter = rng.standard_normal((len(rows), dimension)).astype(np.float32) * np.float32(noise)
        out[rows] = centres[cluster] + np.float32(spread) * (inside + jitter)
    return out


def synthetic(spec: Synthetic, k: int, cache: Path | None = None) -> Dataset:
    """Generate ``spec``; queries come from the same clusters as the base but are not part of it.

    The ground truth is the slow part, so it is kept in ``cache`` (when given) between runs.
    """
    base, queries = spec.generate()
    if cache is None:
        return Dataset(spec.name, base, queries, ground_truth(base, queries, Metric.L2, k), Metric.L2)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"truth-{hashlib.sha256(f'{spec.key()}-k{k}'.encode()).hexdigest()[:16]}.npy"
    if path.exists():
        truth = np.load(path, allow_pickle=False)
    else:
        truth = ground_truth(base, queries, Metric.L2, k)
        np.save(path, truth, allow_pickle=False)
    return Dataset(spec.name, base, queries, truth, Metric.L2)


def from_files(path: Path, queries_path: Path | None, metric: Metric, k: int, holdout: int = 1000) -> Dataset:
    """Read a user's vectors: an ann-benchmarks ``.hdf5`` file, or ``.npy``/``.fvecs`` base vectors.

    Without a queries file, the last ``holdout`` rows of the base file become the queries.
    """
    if path.suffix.lower() in {".hdf5", ".h5"}:
        return read_hdf5(path, k)
    base, _ = load_vectors(path)
    if queries_path is not None:
        queries, _ = load_vectors(queries_path)
    else:
        if len(base) <= holdout:
            raise InvalidArgument(f"{path}: {len(base)} vectors are too few to hold out {holdout} queries")
        base, queries = base[:-holdout], base[-holdout:]
    if queries.shape[1] != base.shape[1]:
        raise InvalidArgument(f"queries have dimension {queries.shape[1]}, the base vectors {base.shape[1]}")
    return Dataset(path.stem, base, queries, ground_truth(base, queries, metric, k), metric)


_HDF5_METRICS = {"euclidean": Metric.L2, "angular": Metric.COSINE, "ip": Metric.IP, "dot": Metric.IP}


def read_hdf5(path: Path, k: int) -> Dataset:
    """An ann-benchmarks file: ``train`` and ``test`` matrices, ``neighbors`` and a ``distance`` attribute."""
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError:
        raise InvalidArgument("reading .hdf5 files needs h5py: pip install 'flux-server[bench]'") from None
    with h5py.File(path, "r") as f:
        missing = [name for name in ("train", "test") if name not in f]
        if missing:
            raise InvalidArgument(f"{path}: not an ann-benchmarks file, it has no {' or '.join(missing)} dataset")
        distance = str(f.attrs.get("distance", "euclidean"))
        if distance not in _HDF5_METRICS:
            raise InvalidArgument(
                f"{path}: distance {distance!r} is not supported (use one of {sorted(_HDF5_METRICS)})"
            )
        metric = _HDF5_METRICS[distance]
        base = np.ascontiguousarray(f["train"][:], dtype=np.float32)
        queries = np.ascontiguousarray(f["test"][:], dtype=np.float32)
        stored = np.asarray(f["neighbors"][:], dtype=np.int64) if "neighbors" in f else None
    truth = stored[:, :k] if stored is not None and stored.shape[1] >= k else ground_truth(base, queries, metric, k)
    return Dataset(path.stem, base, queries, truth, metric)


def ground_truth(base: Matrix, queries: Matrix, metric: Metric, k: int) -> Labels:
    """The exact k nearest labels of each query, by Flux's own brute-force backend."""
    exact = registry.get("exact").build(base, metric, {})
    labels, _ = exact.search(queries, k, {})
    return labels


def recall(found: Labels, truth: Labels, k: int) -> float:
    """Mean fraction of each query's true k nearest that were found (recall@k)."""
    hits = [len(np.intersect1d(f[:k], t[:k], assume_unique=False)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k if hits else 0.0
