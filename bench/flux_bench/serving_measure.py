"""How ``flux bench serving`` measures one backend on one data set: the ceilings and Flux, as report rows.

The ceilings are the library in-process, an echo gRPC server answering Flux-sized messages and
a bare Python search server; each is measured beside Flux at every swept search value, so
that a ratio compares runs made seconds apart on a machine whose load may drift. Where Flux's
Search is measured under the many-client load, its StreamSearch is too, one stream per client
(``flux_bench.serving_stream``), beside the echo answering a stream.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_bench import report
from flux_bench.data import Dataset, Synthetic, recall
from flux_bench.library import SWEEP_PARAM, Library, batches
from flux_bench.load import Job, LoadClients
from flux_bench.placement import Placement
from flux_bench.procs import cpu_seconds
from flux_bench.servers import SEARCH_METHOD, ServerProcess, bare_server, echo_server, flux_server
from flux_bench.serving_stream import (
    STREAM_SEARCH,
    StreamClients,
    StreamJob,
    echo_stream_answer,
    identical,
    stream_requests,
)
from flux_bench.serving_stream import found as stream_found
from flux_core.storage import artifact, builder

SEARCH = SEARCH_METHOD
BATCH_SEARCH = "/flux_api.v1.VectorService/BatchSearch"
INDEX = "bench"
#: Each batch measurement runs in this many turns, alternating with the others (``Bench._batch_phases``).
BATCH_SLICES = 4
#: Warm-up calls per client before each turn: the first turn has warmed the server and the connection.
BATCH_WARMUP = 2


@dataclass(frozen=True)
class Setting:
    """One data set, the backends to serve it with, their build parameters and search sweeps."""

    data: Synthetic
    backends: tuple[str, ...] = ("hnsw", "annoy")
    build: dict[str, dict[str, float]] = field(default_factory=dict)
    sweep: dict[str, tuple[float, ...]] = field(default_factory=dict)


class Bench:
    """One backend on one data set: library, echo and Flux runs, as rows."""

    def __init__(
        self,
        args: argparse.Namespace,
        setting: Setting,
        dataset: Dataset,
        backend: str,
        pool: LoadClients,
        progress: Callable[[str], None],
        seconds: float,
        clients: int,
        batch: int,
        preset_repeat: int = 1,
        placement: Placement | None = None,
        streams: StreamClients | None = None,
    ) -> None:
        if backend not in SWEEP_PARAM:
            raise SystemExit(f"flux bench serving: backend {backend!r} has no in-process runner")
        self.args, self.setting, self.data, self.backend = args, setting, dataset, backend
        self.pool, self.progress = pool, progress
        self.seconds, self.clients, self.batch, self.threads = seconds, clients, batch, args.threads
        self.workers = args.workers
        self.repeat = args.repeat or preset_repeat
        self.k = args.k
        self.param = SWEEP_PARAM[backend]
        self.values = setting.sweep.get(backend) or (-1.0,)
        self.rows: list[report.Row] = []
        self.library_found: dict[float, np.ndarray] = {}
        self.placement = placement or Placement(None, None, frozenset(os.sched_getaffinity(0)))
        self.cpus = self.placement.server  # the servers' and the library's
        self.streams = streams  # None: no StreamSearch runs
        #: Flux's memory (MiB, proportional: summed over its processes, shared pages counted once) by
        #: worker count, each after the server answered the queries.
        self.worker_memory: dict[int, float] = {}
        #: By swept value: Search's answer to each query (index -> bytes), under the many-client load.
        self.unary_answers: dict[float, dict[int, bytes]] = {}
        #: Over every StreamSearch run: queries answered by both Search and the stream, and how many alike.
        self.compared = (0, 0)
        #: The load clients' own CPU per query (µs, their warm-up included), by (mode, value), for Flux's
        #: Search and StreamSearch under the many-client load: whether the clients or the server set the QPS.
        self.client_cpu: dict[tuple[str, float], list[float]] = {}

    def run(self, echo_models: Sequence[tuple[str, int]] = ()) -> list[report.Row]:
        """Measure every swept value in two phases, each alternating between the ceilings and Flux,
        so that a ratio compares runs made seconds apart on a machine whose load may drift."""
        path = self._artifact()
        data = self.data
        library = Library(self.backend, path, data.dimension, data.metric.value, data.queries, cpus=self.cpus)
        echo, flux = self._echo_server("sync", 1), flux_server(self._config(path, 1), cpus=self.cpus)
        bare = bare_server(path, threads=self.args.server_threads, search_threads=self.threads, cpus=self.cpus)
        streaming = self._stream_servers(path, 1) if self.workers == 1 else []
        try:
            for value in self.values:  # one worker: latency, batches, and memory
                for _ in range(self.repeat):
                    self._library(library, value)
                    many = [] if self.workers > 1 else [self.clients]
                    for clients in [1, *many]:
                        self._unary(echo, "echo", value, clients, 1)
                        self._unary(bare, "bare", value, clients, 1)
                        self._unary(flux, "flux-unary", value, clients, 1)
                    self._streamed(streaming, value, 1)
                    self._batch_phases(library, bare, flux, value)
            self._rss(library.rss(), "library")
            self._rss(flux.rss(), "flux-batch")
            self._placed("library", "library", library.cpu_sets())
            for name, server in (("echo", echo), ("bare", bare), ("flux", flux)):
                self._placed("server", f"{name} (1 process)", server.cpu_sets())
            for name, server in zip(("echo-stream", "flux-stream"), streaming, strict=False):
                self._placed("server", f"{name} (1 process)", server.cpu_sets())
        finally:
            for closing in (library, echo, bare, flux):
                closing.close()
            for server in streaming:
                server.close()
        if self.workers > 1:  # many clients: each server with one process per worker
            echo = self._echo_server("processes", self.workers)
            flux = flux_server(self._config(path, self.workers), cpus=self.cpus)
            bare = bare_server(path, threads=self.args.server_threads, processes=self.workers, cpus=self.cpus)
            streaming = self._stream_servers(path, self.workers)
            try:
                for value in self.values:
                    for _ in range(self.repeat):
                        self._unary(echo, "echo", value, self.clients, self.workers)
                        self._unary(bare, "bare", value, self.clients, self.workers)
                        self._unary(flux, "flux-unary", value, self.clients, self.workers)
                        self._streamed(streaming, value, self.workers)
                self._rss(flux.rss(), "flux-unary")
                for name, server in (("echo", echo), ("bare", bare), ("flux", flux)):
                    self._placed("server", f"{name} ({self.workers} workers)", server.cpu_sets())
                for name, server in zip(("echo-stream", "flux-stream"), streaming, strict=False):
                    self._placed("server", f"{name} ({self.workers} workers)", server.cpu_sets())
            finally:
                for closing in (echo, bare, flux, *streaming):
                    closing.close()
        self._worker_memory(path)
        for model, threads in echo_models:  # the concurrency-model study
            echo = self._echo_server(model, self.workers if model == "processes" else 1, threads)
            try:
                workers = self.workers if model == "processes" else 1
                self._unary(echo, f"echo-{model}-{threads}t", self.values[0], self.clients, workers)
                self._placed("server", f"echo-{model}-{threads}t", echo.cpu_sets())
            finally:
                echo.close()
        return report.merge(self.rows)

    def _worker_memory(self, path: Path) -> None:
        """Flux's memory with one worker, then two (forked after loading, they share it), each server
        alone on the machine and after answering every query once. Alone, because pages of a mapped
        file (Annoy's) are shared with any other process that maps it, the library's and the bare
        server's too, which would make one worker look smaller than it is. No rows: on one CPU two
        workers bring no speed."""
        requests = self._search_requests(self.values[0])
        for workers in (1, 2):
            flux = flux_server(self._config(path, workers), cpus=self.cpus)
            try:
                job = Job(flux.address, SEARCH, requests, seconds=self.seconds, max_calls=len(requests))
                self.pool.run(job, self.clients, flux.cpu_seconds)
                self.worker_memory[workers] = flux.pss() / 2**20
            finally:
                flux.close()
        self.progress(f"{self.data.name}/{self.backend}: memory {self.worker_memory[2]:,.0f} MiB with 2 workers, "
                      f"{self.worker_memory[1]:,.0f} MiB with 1")  # fmt: skip

    def _placed(self, role: str, name: str, cpu_sets: dict[int, list[int]]) -> None:
        self.placement.record(role, f"{self.data.name}/{self.backend}: {name}", cpu_sets)

    def _artifact(self) -> Path:
        params = self.setting.build.get(self.backend, {})
        key = json.dumps([self.data.name, len(self.data.base), self.data.dimension, self.backend, params])
        path: Path = self.args.work_dir / "indexes" / f"{self.data.name}-{self.backend}-{_digest(key)}"
        if not (path / artifact.MANIFEST).exists():
            self.progress(f"{self.data.name}/{self.backend}: building {params} (cached in {path} for later runs)")
            started = time.monotonic()
            builder.build(
                path,
                self.data.base,
                None,
                backend=self.backend,
                metric=self.data.metric,
                name=INDEX,
                params=params,
                threads=self.threads,
            )
            self.progress(f"{self.data.name}/{self.backend}: built in {time.monotonic() - started:.0f}s")
        return path

    def _add(self, mode: str, load: int, batch: int, value: float | None, queries: int, seconds: float,
             latencies: np.ndarray, found: np.ndarray | None, workers: int = 1,
             cpu_seconds: float | None = None, in_flight: int = 0) -> report.Row:  # fmt: skip
        quality = same = None
        if found is not None:
            answered = found[:, 0] >= 0
            quality = recall(found[answered], self.data.truth[answered], self.k)
            if mode == "library" and load == 1 and value is not None:
                self.library_found[value] = found
            elif mode.startswith("flux") and value in self.library_found:
                same = agreement(found, self.library_found[value])
        r = report.row(self.data.name, self.backend, mode, load=load, batch=batch, param=self.param, value=value,
                       queries=queries, seconds=seconds, latencies_ms=latencies, recall=quality,
                       same_as_library=same, workers=workers, cpu_seconds=cpu_seconds,
                       in_flight=in_flight)  # fmt: skip
        self.rows.append(r)
        self.progress(
            f"{self.data.name}/{self.backend}: {r.label} {self.param}={report.format_value(value)}: "
            f"{r.qps:,.0f} QPS, p50 {r.p50_ms:.3f} ms"
            + (f", CPU {r.cpu_us_per_call:,.1f} µs/call" if r.cpu_us_per_call is not None else "")
            + (f", recall {r.recall:.4f}" if r.recall is not None else "")
        )
        return r

    def _library(self, library: Library, value: float) -> None:
        for threads in sorted({1, self.threads}):
            t = library.single(value, self.k, self.seconds, threads)
            self._add("library", threads, 1, value, t.calls, t.seconds, t.latencies_ms, t.labels,
                      cpu_seconds=t.cpu_seconds)  # fmt: skip

    def _batch_phases(self, library: Library, bare: ServerProcess, flux: ServerProcess, value: float) -> None:
        """The library's batches, the bare server's and Flux's, in BATCH_SLICES short turns each: the
        machine's speed moves by half within a minute here (the library's CPU per batch of 256 went
        from 11.7 to 20.7 ms in three minutes), so each batch ratio compares runs made under the same
        load. The target's load (``report.BATCH_CLIENTS`` calls in flight) runs nearest the library."""
        seconds = self.seconds / BATCH_SLICES
        groups = batches(len(self.data.queries), self.batch)
        requests = self._batch_requests(value, groups)  # encoded once for every turn
        for _ in range(BATCH_SLICES):
            self._library_batch(library, value, seconds)
            for calls in dict.fromkeys((min(report.BATCH_CLIENTS, self.clients), 1)):
                self._batches(bare, value, "bare-batch", calls, seconds, groups, requests)
                self._batches(flux, value, "flux-batch", calls, seconds, groups, requests)

    def _library_batch(self, library: Library, value: float, seconds: float) -> None:
        t = library.batch(value, self.k, seconds, self.batch, self.threads)
        self._add("library-batch", self.threads, self.batch, value, t.calls, t.seconds, t.latencies_ms, t.labels,
                  cpu_seconds=t.cpu_seconds)  # fmt: skip

    def _search_requests(self, value: float) -> list[bytes]:
        params = {} if value < 0 else {self.param: value}
        return [
            pb.SearchRequest(index=INDEX, vector=_vectors(q[None, :]), k=self.k, params=params).SerializeToString()
            for q in self.data.queries
        ]

    def _echo_server(self, model: str, processes: int, threads: int = 0, *, streams: bool = False) -> ServerProcess:
        """An echo server answering Search (or with ``streams``, each StreamSearch message) with bytes as
        large as Flux's answer."""
        neighbors = types_pb2.Neighbors(
            ids=[str(label) for label in self.data.truth[0][: self.k]], distances=[1.0] * self.k
        )
        answer = pb.SearchResponse(index=INDEX, version=1, neighbors=neighbors).SerializeToString()
        threads = threads or self.args.server_threads
        canned = {STREAM_SEARCH: echo_stream_answer(answer)} if streams else {}
        return echo_server({} if streams else {SEARCH: answer}, model=model, threads=threads, processes=processes,
                           cpus=self.cpus, streams=canned)  # fmt: skip

    def _stream_servers(self, path: Path, workers: int) -> list[ServerProcess]:
        """The echo and Flux for StreamSearch: as for Search, but with a handler thread per stream at
        least, since an open stream holds one for its whole life (the kernel may give one worker
        every stream). No servers without a stream client pool."""
        if self.streams is None:
            return []
        threads = max(self.args.server_threads, self.clients)
        model = "processes" if workers > 1 else "sync"
        echo = self._echo_server(model, workers, threads, streams=True)
        return [echo, flux_server(self._config(path, workers, threads), cpus=self.cpus)]

    def _streamed(self, servers: Sequence[ServerProcess], value: float, workers: int) -> None:
        """Each client process opens one StreamSearch and keeps a few queries in flight on it."""
        if not servers or self.streams is None:
            return
        echo, flux = servers
        requests = stream_requests(self._search_requests(value))
        for mode, server in (("echo-stream", echo), ("flux-stream", flux)):
            job = StreamJob(server.address, STREAM_SEARCH, requests, seconds=self.seconds, max_calls=2_000_000)
            before = cpu_seconds(list(self.streams.cpu_sets()))
            result = self.streams.run(job, self.clients, server.cpu_seconds)
            spent = cpu_seconds(list(self.streams.cpu_sets())) - before
            self.client_cpu.setdefault((mode, value), []).append(spent / max(result.calls, 1) * 1e6)
            found = None
            if mode == "flux-stream":
                found = stream_found(result.responses, len(self.data.queries), self.k)
                compared, same = identical(result.responses, self.unary_answers.get(value, {}))
                self.compared = (self.compared[0] + compared, self.compared[1] + same)
            self._add(mode, self.clients, 1, value, result.calls, result.seconds, result.latencies_ms, found, workers,
                      result.server_cpu_seconds, in_flight=job.window)  # fmt: skip

    def _config(self, path: Path, workers: int, threads: int = 0) -> dict[str, Any]:
        threads = threads or self.args.server_threads
        return {
            # Every load client may hold a stream open: the stream cap must not refuse one.
            "server": {"threads": threads, "search_threads": self.threads, "workers": workers, "max_streams": threads},
            "limits": {"max_batch": max(1024, self.batch), "max_k": max(1024, self.k)},
            "indexes": [{"name": INDEX, "path": str(path.resolve())}],
        }

    def _unary(self, server: ServerProcess, mode: str, value: float, clients: int, workers: int) -> None:
        job = self._job(server.address, SEARCH, self._search_requests(value))
        many = mode == "flux-unary" and clients == self.clients
        before = cpu_seconds(list(self.pool.cpu_sets())) if many else 0.0
        result = self.pool.run(job, clients, server.cpu_seconds)
        found = self._found(result.responses) if mode != "echo" else None  # the echo does not search
        if many:  # what StreamSearch is compared with, and must answer alike
            spent = cpu_seconds(list(self.pool.cpu_sets())) - before
            self.client_cpu.setdefault((mode, value), []).append(spent / max(result.calls, 1) * 1e6)
            answers = self.unary_answers.setdefault(value, {})
            for index, response in result.responses.items():
                answers.setdefault(index, response)
        self._add(mode, clients, 1, value, result.calls, result.seconds, result.latencies_ms, found, workers,
                  result.server_cpu_seconds)  # fmt: skip

    def _batch_requests(self, value: float, groups: list[np.ndarray]) -> list[bytes]:
        params = {} if value < 0 else {self.param: value}
        return [
            pb.BatchSearchRequest(
                index=INDEX, queries=_vectors(self.data.queries[rows]), k=self.k, params=params, packed=True
            ).SerializeToString()
            for rows in groups
        ]

    def _batches(
        self,
        server: ServerProcess,
        value: float,
        mode: str,
        clients: int,
        seconds: float,
        groups: list[np.ndarray],
        requests: list[bytes],
    ) -> None:
        job = replace(self._job(server.address, BATCH_SEARCH, requests), seconds=seconds, warmup=BATCH_WARMUP)
        result = self.pool.run(job, clients, server.cpu_seconds)
        found = self._found_batches(result.responses, groups)
        self._add(mode, clients, self.batch, value, result.calls * self.batch, result.seconds,
                  result.latencies_ms, found, cpu_seconds=result.server_cpu_seconds)  # fmt: skip

    def _rss(self, rss: int, mode: str) -> None:
        """Record a process's memory on the last row of ``mode`` (the last run it served)."""
        last = max(i for i, r in enumerate(self.rows) if r.mode == mode)
        self.rows[last] = replace(self.rows[last], rss_mib=round(rss / 2**20, 1))

    def _job(self, target: str, method: str, requests: Sequence[bytes]) -> Job:
        return Job(target, method, requests, seconds=self.seconds, max_calls=2_000_000)

    def _found(self, responses: dict[int, bytes]) -> np.ndarray:
        found = np.full((len(self.data.queries), self.k), -1, np.int64)
        for index, raw in responses.items():
            ids = pb.SearchResponse.FromString(raw).neighbors.ids
            found[index, : len(ids)] = [int(i) for i in ids]
        return found

    def _found_batches(self, responses: dict[int, bytes], groups: list[np.ndarray]) -> np.ndarray:
        found = np.full((len(self.data.queries), self.k), -1, np.int64)
        for index, raw in responses.items():
            packed = pb.BatchSearchResponse.FromString(raw).packed  # as the Python client asks for them
            ends = np.cumsum(packed.counts)
            for row, end, count in zip(groups[index], ends.tolist(), packed.counts, strict=True):
                found[row, :count] = [int(i) for i in packed.ids[end - count : end]]
        return found


def agreement(found: np.ndarray, expected: np.ndarray) -> float:
    """Of the queries answered in both (label >= 0 in column 0), the fraction with the same neighbour set."""
    both = np.flatnonzero((found[:, 0] >= 0) & (expected[:, 0] >= 0))
    if not len(both):
        return 0.0
    same = np.sort(found[both], axis=1) == np.sort(expected[both], axis=1)
    return float(same.all(axis=1).mean())


def _vectors(matrix: np.ndarray) -> types_pb2.FloatVectors:
    matrix = np.ascontiguousarray(matrix, dtype="<f4")
    return types_pb2.FloatVectors(dimension=matrix.shape[1], data=matrix.tobytes())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
