"""``hnsw``: graph search with hnswlib, the default backend for low-latency serving."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import hnswlib
import numpy as np

from flux.core.backend import Backend, Capabilities, Labels, Matrix, Metric, Param, Progress, pad_results

_SPACES = {Metric.L2: "l2", Metric.COSINE: "cosine", Metric.IP: "ip"}
_BUILD_CHUNK = 20_000  # rows per add_items call, so that progress can be reported


class HnswBackend(Backend):
    """hnswlib's HNSW graph. Its distances already follow Flux's convention.

    hnswlib keeps ``ef`` as index-wide state, so per-query ``ef`` goes through an
    ``_EfGate``: searches with the same ``ef`` run together (hnswlib releases the GIL),
    and a search asking for another ``ef`` waits until those in flight finish.
    """

    name = "hnsw"
    capabilities = Capabilities(thread_safe_search=True)
    build_params: ClassVar[Mapping[str, Param]] = {
        "M": Param(16, 2, 200, doc="graph degree; more gives higher recall and more memory"),
        "ef_construction": Param(200, 1, 10_000, doc="build-time beam; more gives a better graph, slower build"),
        "seed": Param(100, 0, 2**31 - 1, doc="random seed, for reproducible builds"),
    }
    search_params: ClassVar[Mapping[str, Param]] = {
        "ef": Param(64, 1, 100_000, doc="search beam, at least k is used; more gives higher recall, slower"),
    }

    def __init__(self, dimension: int, metric: Metric, index: hnswlib.Index) -> None:
        super().__init__(dimension, metric)
        self._index = index
        self._gate = _EfGate(index)

    @classmethod
    def library_version(cls) -> str:
        return f"hnswlib {version('hnswlib')}"

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> HnswBackend:
        n, dimension = vectors.shape
        index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        index.init_index(
            max_elements=max(n, 1),
            M=int(params["M"]),
            ef_construction=int(params["ef_construction"]),
            random_seed=int(params["seed"]),
        )
        for start in range(0, n, _BUILD_CHUNK):
            stop = min(n, start + _BUILD_CHUNK)
            index.add_items(vectors[start:stop], np.arange(start, stop), num_threads=threads)
            if progress:
                progress(stop, n)
        return cls(dimension, metric, index)

    def save(self, directory: Path) -> list[str]:
        self._index.save_index(str(directory / "index.hnsw"))
        return ["index.hnsw"]

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> HnswBackend:
        index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        index.load_index(str(directory / "index.hnsw"), max_elements=max(count, 1))
        if index.get_current_count() != count:
            raise ValueError(f"index.hnsw holds {index.get_current_count()} items, expected {count}")
        return cls(dimension, metric, index)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        available = len(self)
        if available == 0 or len(queries) == 0:
            return pad_results(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), k)
        with self._gate.using(int(params["ef"])):
            labels, distances = self._index.knn_query(queries, k=min(k, available), num_threads=threads)
        return pad_results(labels.astype(np.int64, copy=False), distances, k)

    def get_vectors(self, labels: Labels) -> Matrix:
        return np.asarray(self._index.get_items(labels, return_type="numpy"), dtype=np.float32)

    def __len__(self) -> int:
        return int(self._index.get_current_count())

    def stats(self) -> dict[str, Any]:
        return {
            "M": int(self._index.M),
            "ef_construction": int(self._index.ef_construction),
            "max_elements": int(self._index.max_elements),
        }


class _EfGate:
    """Lets searches that share an ``ef`` run concurrently; changes ``ef`` only when none run."""

    def __init__(self, index: hnswlib.Index) -> None:
        self._index = index
        self._cond = threading.Condition()
        self._ef = -1
        self._active = 0

    @contextmanager
    def using(self, ef: int) -> Iterator[None]:
        with self._cond:
            while self._ef != ef and self._active:
                self._cond.wait()
            if self._ef != ef:
                self._index.set_ef(ef)
                self._ef = ef
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()
