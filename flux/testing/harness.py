"""What every mixin of the conformance kit stands on: the backend under test and the suite's options,
building and searching it as the server does (read-only float32 queries), and the data to do it with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from flux.datasets import clustered
from flux_core.backend import Backend, Metric, defaults


class Harness:
    """The base of every mixin: a generated suite sets ``backend`` and the options as class attributes."""

    #: The backend class under test. ``conformance_suite`` sets it.
    backend: ClassVar[type[Backend]]
    #: Minimum recall@10 against the oracle on 2,000 clustered vectors, with default params.
    min_recall: ClassVar[float] = 0.9
    #: Per search param, the values to try, in an order that must not lower recall (default: ``ladder``).
    search_param_values: ClassVar[Mapping[str, Sequence[float]]] = {}
    #: Per build param, values that must not all build the same index (default: ``build_values``).
    build_param_values: ClassVar[Mapping[str, Sequence[float]]] = {}

    def build(self, vectors: np.ndarray, metric: Metric = Metric.L2, *, threads: int = 2, **params: float) -> Backend:
        spec = self.backend.build_params
        return self.backend.build(
            np.ascontiguousarray(vectors, np.float32), metric, {**defaults(spec), **params}, threads=threads
        )

    def search(
        self,
        index: Backend,
        queries: np.ndarray,
        k: int,
        params: Mapping[str, float] | None = None,
        *,
        threads: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        params = defaults(self.backend.search_params) if params is None else params
        return index.search(read_only(np.atleast_2d(queries)), k, params, threads=threads)


def read_only(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as the server hands them to a backend: a read-only float32 view of a request's bytes."""
    return np.frombuffer(np.ascontiguousarray(vectors, "<f4").tobytes(), "<f4").reshape(vectors.shape)


def vectors_and_queries(n: int, dimension: int, queries: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    points = clustered(n + queries, dimension, clusters=16, spread=1.0, seed=seed)
    return points[:n], points[n:]
