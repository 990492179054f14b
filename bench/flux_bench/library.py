"""The ceiling: the ANN library called in-process, on the very index file Flux serves.

It runs in its own process, which holds nothing but the library and the index, so
that its resident memory is the index's cost to any Python program. Calls are the
library's own (``hnswlib.Index.knn_query``, ``AnnoyIndex.get_nns_by_vector``), with no
Flux code in between. Pinned to the server's CPUs, it shows what a server could reach there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from flux_bench.procs import Child, cpu_set, rss_bytes, serve_forever

#: The search knob each library takes per query, and the name Flux gives it.
SWEEP_PARAM = {"hnsw": "ef", "annoy": "search_k"}


@dataclass(frozen=True)
class Timing:
    """Calls made in ``seconds`` of wall time, each call's latency, and the labels found per query."""

    calls: int
    seconds: float
    latencies_ms: np.ndarray
    labels: np.ndarray  # q x k for the queries answered, in query order
    answered: int
    cpu_seconds: float = 0.0  # the process's CPU time (every thread) over the timed calls


class Library:
    """The library in a child process, with one loaded index and the benchmark's queries."""

    def __init__(
        self,
        backend: str,
        artifact: Path,
        dimension: int,
        metric: str,
        queries: np.ndarray,
        cpus: Collection[int] | None = None,
    ) -> None:
        if backend not in SWEEP_PARAM:
            raise ValueError(f"no in-process runner for backend {backend!r} (have {', '.join(SWEEP_PARAM)})")
        args = (backend, str(artifact), dimension, metric, queries)
        self._child = Child(_main, *args, name=f"flux-bench-{backend}", cpus=cpus)
        self._child.recv(timeout=1800)  # loaded

    def rss(self) -> int:
        return rss_bytes(self._child.pid)

    def cpu_sets(self) -> dict[int, list[int]]:
        """The CPUs the library's process (any thread of it) may run on."""
        return {self._child.pid: cpu_set(self._child.pid)}

    def single(self, value: float, k: int, seconds: float, threads: int = 1) -> Timing:
        """One query per call from ``threads`` threads, as a unary server would call it."""
        result: Timing = self._child.call(("single", value, k, seconds, threads))
        return result

    def batch(self, value: float, k: int, seconds: float, batch: int, threads: int) -> Timing:
        """``batch`` queries per call, searched by ``threads`` threads."""
        result: Timing = self._child.call(("batch", value, k, seconds, batch, threads))
        return result

    def close(self) -> None:
        self._child.close()


def _main(conn: Connection, backend: str, artifact: str, dimension: int, metric: str, queries: np.ndarray) -> None:
    search = _hnswlib(artifact, dimension, metric) if backend == "hnsw" else _annoy(artifact, dimension, metric)
    conn.send("loaded")
    pool = ThreadPoolExecutor(max_workers=8)

    def handle(message: tuple[Any, ...]) -> Timing:
        if message[0] == "single":
            _, value, k, seconds, threads = message
            return _single(search, queries, value, k, seconds, threads, pool)
        _, value, k, seconds, batch, threads = message
        return _batch(search, queries, value, k, seconds, batch, threads, pool)

    serve_forever(conn, handle)


#: search(queries, k, value, threads) -> labels (q x k); a single query is a 1 x d matrix.
Search = Callable[[np.ndarray, int, float, int, ThreadPoolExecutor | None], np.ndarray]


def _hnswlib(artifact: str, dimension: int, metric: str) -> Search:
    import hnswlib

    space = {"l2": "l2", "cosine": "cosine", "ip": "ip"}[metric]
    index = hnswlib.Index(space=space, dim=dimension)
    index.load_index(str(Path(artifact) / "index.hnsw"))
    lock = threading.Lock()
    current = [-1.0]

    def search(q: np.ndarray, k: int, ef: float, threads: int, pool: ThreadPoolExecutor | None) -> np.ndarray:
        if current[0] != ef:
            with lock:
                index.set_ef(int(ef))
                current[0] = ef
        labels, _ = index.knn_query(q, k=k, num_threads=threads)
        return np.asarray(labels, dtype=np.int64)

    return search


def _annoy(artifact: str, dimension: int, metric: str) -> Search:
    from annoy import AnnoyIndex

    index = AnnoyIndex(dimension, {"l2": "euclidean", "cosine": "angular", "ip": "dot"}[metric])  # type: ignore[arg-type]
    index.load(str(Path(artifact) / "index.ann"))

    def rows(q: np.ndarray, k: int, search_k: int) -> np.ndarray:
        out = np.full((len(q), k), -1, np.int64)
        for row, vector in enumerate(q):
            # With distances, as a server must answer: the library's cost of a full answer.
            found, _ = index.get_nns_by_vector(vector, k, search_k, include_distances=True)
            out[row, : len(found)] = found
        return out

    def search(q: np.ndarray, k: int, search_k: float, threads: int, pool: ThreadPoolExecutor | None) -> np.ndarray:
        if threads <= 1 or pool is None or len(q) == 1:
            return rows(q, k, int(search_k))
        parts = np.array_split(q, threads)
        return np.vstack(list(pool.map(lambda part: rows(part, k, int(search_k)), parts)))

    return search


def _single(
    search: Search, queries: np.ndarray, value: float, k: int, seconds: float, threads: int, pool: ThreadPoolExecutor
) -> Timing:
    n = len(queries)
    matrices = [queries[i : i + 1] for i in range(n)]
    labels = np.full((n, k), -1, np.int64)
    for i in range(min(20, n)):  # warm-up, as the server clients do
        search(matrices[i], k, value, 1, None)

    cover = -(-n // threads)  # past the deadline until the threads have searched every query once

    def worker(offset: int) -> tuple[float, float, np.ndarray]:
        latencies = []
        clock = time.perf_counter_ns
        started = time.perf_counter()
        deadline = clock() + int(seconds * 1e9)
        calls = 0
        while True:
            before = clock()
            if before >= deadline and calls >= cover:
                break
            i = (offset + calls) % n
            found = search(matrices[i], k, value, 1, None)
            latencies.append(clock() - before)
            if calls < n:
                labels[i] = found[0]
            calls += 1
        return started, time.perf_counter(), np.array(latencies, np.int64)

    cpu = time.process_time()
    parts = list(pool.map(worker, [t * n // threads for t in range(threads)]))
    return _timing(parts, labels, cpu_seconds=time.process_time() - cpu)


def _batch(
    search: Search,
    queries: np.ndarray,
    value: float,
    k: int,
    seconds: float,
    batch: int,
    threads: int,
    pool: ThreadPoolExecutor,
) -> Timing:
    groups = batches(len(queries), batch)
    labels = np.full((len(queries), k), -1, np.int64)
    search(queries[groups[0]], k, value, threads, pool)  # warm-up
    latencies = []
    clock = time.perf_counter_ns
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = clock() + int(seconds * 1e9)
    calls = 0
    while True:
        before = clock()
        if before >= deadline and calls >= len(groups):  # every query searched once, whatever the clock
            break
        rows = groups[calls % len(groups)]
        found = search(queries[rows], k, value, threads, pool)
        latencies.append(clock() - before)
        if calls < len(groups):
            labels[rows] = found
        calls += 1
    stopped, cpu = time.perf_counter(), time.process_time() - cpu
    return _timing([(started, stopped, np.array(latencies, np.int64))], labels, per_call=batch, cpu_seconds=cpu)


def batches(n: int, size: int) -> list[np.ndarray]:
    """Row numbers of ``ceil(n / size)`` batches of exactly ``size`` queries, wrapping around at the end."""
    count = -(-n // size)
    return [np.arange(start, start + size) % n for start in range(0, count * size, size)]


def _timing(
    parts: list[tuple[float, float, np.ndarray]], labels: np.ndarray, per_call: int = 1, cpu_seconds: float = 0.0
) -> Timing:
    starts, stops, latencies = zip(*parts, strict=True)
    merged = np.concatenate(latencies).astype(np.float64) / 1e6
    answered = int((labels[:, 0] >= 0).sum())
    return Timing(len(merged) * per_call, max(stops) - min(starts), merged, labels, answered, cpu_seconds)
