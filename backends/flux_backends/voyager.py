"""``voyager``: Spotify's HNSW library, Annoy's successor, as an optional backend (``flux-server[voyager]``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from voyager import Index, RecallError, Space

from flux_core.backend import Backend, Capabilities, Labels, Matrix, Metric, Param, Progress, ReadWriteGate, pad_results

_SPACES = {Metric.L2: Space.Euclidean, Metric.COSINE: Space.Cosine, Metric.IP: Space.InnerProduct}
_BUILD_CHUNK = 20_000  # rows per add_items call, so that progress can be reported
_INDEX = "index.voy"
_STATE = "voyager.json"


class VoyagerBackend(Backend):
    """A Voyager index (32-bit floats). Its distances already follow Flux's convention.

    Voyager's graph is hnswlib's: inserts rewrite neighbour lists that queries read
    without locks, so searches share a ``ReadWriteGate`` and writes hold it alone.
    ``ef`` is passed per query, so searches with different ``ef`` still run together.
    Voyager keeps deleted items in its ``len`` and cannot reload a file holding no
    item, so the deleted labels and the build parameters are saved beside the index.
    """

    name = "voyager"
    capabilities = Capabilities(mutable=True, supports_delete=True, thread_safe_search=True)
    build_params: ClassVar[Mapping[str, Param]] = {
        "M": Param(16, 2, 200, doc="graph degree; more gives higher recall and more memory"),
        "ef_construction": Param(200, 1, 10_000, doc="build-time beam; more gives a better graph, slower build"),
        "seed": Param(1, 0, 2**31 - 1, doc="random seed, for reproducible builds"),
    }
    search_params: ClassVar[Mapping[str, Param]] = {
        "ef": Param(64, 1, 100_000, doc="search beam, at least k is used; more gives higher recall, slower"),
    }

    def __init__(self, dimension: int, metric: Metric, index: Index, params: Mapping[str, float]) -> None:
        super().__init__(dimension, metric)
        self._index = index
        self._params = {name: int(params[name]) for name in self.build_params}
        self._deleted: set[int] = set()
        self._lock = ReadWriteGate()

    @classmethod
    def library_version(cls) -> str:
        return f"voyager {version('voyager')}"

    @classmethod
    def _empty(cls, dimension: int, metric: Metric, params: Mapping[str, float]) -> VoyagerBackend:
        index = Index(
            _SPACES[metric],
            num_dimensions=dimension,
            M=int(params["M"]),
            ef_construction=int(params["ef_construction"]),
            random_seed=int(params["seed"]),
        )
        return cls(dimension, metric, index, params)

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> VoyagerBackend:
        n, dimension = vectors.shape
        backend = cls._empty(dimension, metric, params)
        if n:
            backend._index.resize(n)
        for start in range(0, n, _BUILD_CHUNK):
            stop = min(n, start + _BUILD_CHUNK)
            backend._index.add_items(vectors[start:stop], list(range(start, stop)), num_threads=threads)
            if progress:
                progress(stop, n)
        return backend

    def save(self, directory: Path) -> list[str]:
        with self._lock.writing():  # no write may change the graph halfway through
            written = [_STATE]
            if self._index.num_elements:
                self._index.save(str(directory / _INDEX))
                written.append(_INDEX)
            state = {**self._params, "deleted": sorted(self._deleted)}
            (directory / _STATE).write_text(json.dumps(state))
        return written

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> VoyagerBackend:
        state = json.loads((directory / _STATE).read_text())
        backend = cls._empty(dimension, metric, state)
        if (directory / _INDEX).exists():
            index = Index.load(str(directory / _INDEX))
            if index.num_dimensions != dimension or index.space != _SPACES[metric]:
                raise ValueError(f"{_INDEX} holds a {index.space} index of dimension {index.num_dimensions}")
            backend._index = index
        backend._deleted = set(state["deleted"])
        if len(backend) != count:
            raise ValueError(f"{_INDEX} holds {len(backend)} items that are not deleted, expected {count}")
        return backend

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        queries = _writable(queries)
        with self._lock.reading():
            wanted = min(k, len(self))
            while wanted and len(queries):
                try:
                    labels, distances = self._index.query(
                        queries, k=wanted, num_threads=threads, query_ef=max(int(params["ef"]), wanted)
                    )
                    return pad_results(labels.astype(np.int64), distances, k)
                except RecallError:
                    # Tombstones can leave a query with fewer than k reachable items;
                    # Voyager then refuses the whole batch. Ask for fewer and pad.
                    wanted //= 2
        return pad_results(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), k)

    def add(self, vectors: Matrix, labels: Labels) -> None:
        with self._lock.writing():
            # add_items replaces a label's vector, and revives a deleted label
            self._index.add_items(_writable(vectors), labels.tolist(), num_threads=1)
            self._deleted.difference_update(labels.tolist())

    def delete(self, labels: Labels) -> None:
        with self._lock.writing():
            for label in labels.tolist():
                if label in self._deleted or label not in self._index:
                    raise KeyError(f"label {label} is not in the index")
                self._index.mark_deleted(label)
                self._deleted.add(label)

    def get_vectors(self, labels: Labels) -> Matrix:
        with self._lock.reading():
            try:
                return np.asarray(self._index.get_vectors(labels.tolist()), dtype=np.float32)
            except (KeyError, RuntimeError) as exc:  # Voyager raises RuntimeError for unknown and deleted labels
                raise KeyError(str(exc)) from exc

    def __len__(self) -> int:
        return int(self._index.num_elements) - len(self._deleted)

    def stats(self) -> dict[str, Any]:
        return {**self._params, "max_elements": int(self._index.max_elements), "deleted": len(self._deleted)}


def _writable(vectors: Matrix) -> Matrix:
    """Voyager's binding refuses read-only arrays, and requests arrive as read-only views: copy those."""
    return np.require(vectors, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])
