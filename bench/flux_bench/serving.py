"""``flux bench serving``: Flux against the in-process library and an echo baseline, in one run.

For each data set and backend it measures, at every swept search parameter:

* ``library``: the library in-process, one query per call, from 1 and from N threads;
* ``library-batch``: the library in-process, B queries per call, N threads;
* ``echo``: a do-nothing gRPC server answering Flux-sized messages, from 1 and from C client processes;
* ``bare``: the least a Python search server does (parse, the backend's search, encode), same loads;
* ``bare-batch``: the bare server answering the same batches as ``flux-batch``;
* ``flux-unary``: Flux's Search, from 1 and from C client processes;
* ``flux-batch``: Flux's BatchSearch with B queries per call (packed answers, as the Python client
  asks for them), from one client.

With two CPUs or more, the servers run on CPUs of their own and the load clients on others
(``--server-cpus``, ``--client-cpus``; ``--shared-cpus`` lets every process use every CPU), and
the in-process library runs on the servers' CPUs: what a server could reach there. Each server
mode's CPU time per call (user + sys of its whole process tree, from /proc, over the loaded
phase) is reported beside QPS and latency.

then prints the table and the issue's target ratios, and writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_bench import report
from flux_bench.data import Dataset, Synthetic, from_files, recall, synthetic
from flux_bench.library import SWEEP_PARAM, Library, batches
from flux_bench.load import Job, LoadClients
from flux_bench.procs import format_cpus, parse_cpus
from flux_bench.servers import ECHO_MODELS, SEARCH_METHOD, ServerProcess, bare_server, echo_server, flux_server
from flux_core.backend import Metric
from flux_core.storage import artifact, builder

SEARCH = SEARCH_METHOD
BATCH_SEARCH = "/flux_api.v1.VectorService/BatchSearch"
INDEX = "bench"


@dataclass(frozen=True)
class Setting:
    """One data set, the backends to serve it with, their build parameters and search sweeps."""

    data: Synthetic
    backends: tuple[str, ...] = ("hnsw", "annoy")
    build: dict[str, dict[str, float]] = field(default_factory=dict)
    sweep: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    settings: tuple[Setting, ...]
    seconds: float
    clients: int
    batch: int
    repeat: int = 1


_HNSW: dict[str, float] = {"M": 16, "ef_construction": 200}
PRESETS = {
    "quick": Preset(
        (
            Setting(
                Synthetic("quick-10k-32d", 10_000, 32, latent=8, queries=200),
                build={"hnsw": _HNSW, "annoy": {"n_trees": 16.0}},
                sweep={"hnsw": (16, 64), "annoy": (200, 2000)},
            ),
        ),
        seconds=0.5,
        clients=2,
        batch=64,
    ),
    "full": Preset(
        (
            Setting(
                Synthetic("embeddings-200k-128d", 200_000, 128, latent=16, spread=0.5, noise=0.05),
                build={"hnsw": _HNSW, "annoy": {"n_trees": 50.0}},
                sweep={"hnsw": (16, 24, 32, 64, 128), "annoy": (700, 1000, 1500, 2000, 5000)},
            ),
            Setting(
                Synthetic("overlapping-200k-384d", 200_000, 384, latent=64, spread=1.0, noise=0.2),
                build={"hnsw": _HNSW, "annoy": {"n_trees": 50.0}},
                sweep={"hnsw": (32, 64, 128, 192, 256), "annoy": (2000, 3000, 5000, 7000, 10_000)},
            ),
        ),
        seconds=2.0,
        clients=8,
        batch=256,
        repeat=3,
    ),
}


def add_parser(modes: Any) -> None:
    parser = modes.add_parser(
        "serving",
        help="Flux vs the in-process library and an echo gRPC server: table, target ratios, JSON, plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="quick (seconds) or full (minutes)")
    parser.add_argument("--data", type=Path, help="your vectors (.hdf5 ann-benchmarks, .npy, .fvecs) instead")
    parser.add_argument("--queries", type=Path, help="query vectors for --data (default: hold out its last 1000)")
    parser.add_argument("--metric", default="l2", choices=[m.value for m in Metric], help="metric for --data")
    parser.add_argument("--count", type=int, help="base vectors per synthetic set (overrides the preset)")
    parser.add_argument("--backends", help="comma-separated backends (default: hnsw,annoy)")
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="BACKEND=V1,V2", help="search values, e.g. hnsw=32,64"
    )
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--seconds", type=float, help="length of each measurement")
    parser.add_argument(
        "--repeat", type=int, help="measure each configuration this many times, alternating, and keep the medians"
    )
    parser.add_argument("--clients", type=int, help="client processes for the concurrent runs")
    parser.add_argument("--batch", type=int, help="queries per batch call")
    parser.add_argument(
        "--threads",
        type=int,
        help="library threads, and Flux's search_threads (default: one per server CPU)",
    )
    parser.add_argument(
        "--server-threads",
        type=int,
        default=4,
        help="gRPC handler threads per process, for Flux (server.threads) and the echo alike (default: 4)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="Flux worker processes for the many-client runs (server.workers; default: one per server CPU)",
    )
    parser.add_argument(
        "--server-cpus",
        metavar="LIST",
        help="CPUs for the servers and the in-process library, e.g. 0 or 0-1,3 (default: the first half of the "
        "CPUs this process may use; the rest if only --client-cpus is given)",
    )
    parser.add_argument(
        "--client-cpus",
        metavar="LIST",
        help="CPUs for the load clients, disjoint from --server-cpus (default: the CPUs the servers do not get)",
    )
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="pin nothing: servers, library and clients share every CPU (the only mode on one CPU)",
    )
    parser.add_argument(
        "--echo-models",
        default="",
        metavar="MODEL[:THREADS],...",
        help=f"also measure the echo server, one process each, as {', '.join(ECHO_MODELS)} (e.g. sync:16,aio)",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("var/bench"), help="built indexes and ground truth")
    parser.add_argument("--json", type=Path, help="results file (default: WORK_DIR/results.json)")
    parser.add_argument("--plot", type=Path, help="recall-vs-QPS PNG (default: WORK_DIR/recall-qps.png)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    settings = _settings(args, preset)
    seconds = args.seconds or preset.seconds
    clients = args.clients or preset.clients
    batch = args.batch or preset.batch
    placement = _placement(args)
    server_cpu_count = len(placement.server) if placement.server else os.cpu_count() or 1
    args.threads = args.threads or server_cpu_count  # more than the server's CPUs would only take turns
    args.workers = args.workers or server_cpu_count
    progress = _Progress()
    result = report.Report(command="flux " + " ".join(shlex.quote(a) for a in sys.argv[1:]), environment=_environment())
    result.pinning = placement.to_json()
    progress(placement.describe())
    echo_models = _echo_models(args)  # measured once, on the first data set and backend
    pool = LoadClients(clients, placement.clients)
    try:
        for setting, dataset in settings:
            progress(f"{dataset.name}: {len(dataset.base):,} x {dataset.dimension}, {len(dataset.queries):,} queries")
            for backend in setting.backends:
                bench = _Bench(args, setting, dataset, backend, pool, progress, seconds, clients, batch, preset.repeat,
                               placement)  # fmt: skip
                result.rows.extend(bench.run(echo_models))
                server_cpus = len(placement.server) if placement.server else None
                result.targets.extend(
                    report.targets(result.rows, dataset.name, backend, clients, threads=args.threads,
                                   server_cpus=server_cpus)
                )  # fmt: skip
                echo_models = ()
        placement.record("clients", "load clients", pool.cpu_sets())  # once they have run: they pin as they start
    finally:
        pool.close()
    result.pinning = placement.to_json()
    print(f"\n{placement.describe()}", file=sys.stdout)
    report.print_table(result.rows, sys.stdout)
    report.print_cpu(result.rows, sys.stdout)
    report.print_targets(result.targets, sys.stdout)
    json_path = args.json or args.work_dir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(result.to_json(), encoding="utf-8")
    print(f"\nwrote {json_path}", file=sys.stdout)
    plot_path = args.plot or args.work_dir / "recall-qps.png"
    if report.plot(result.rows, plot_path):
        print(f"wrote {plot_path}", file=sys.stdout)
    else:
        print("no plot: install matplotlib (pip install 'flux-server[bench]')", file=sys.stdout)
    return 0 if all(t.passed for t in result.targets) else 1


@dataclass
class Placement:
    """Which CPUs the servers (and the in-process library) and the load clients may use; both
    None when every process shares every CPU. ``processes`` keeps each process's set as read back."""

    server: frozenset[int] | None
    clients: frozenset[int] | None
    available: frozenset[int]
    processes: list[dict[str, Any]] = field(default_factory=list)

    def record(self, role: str, name: str, cpu_sets: dict[int, list[int]]) -> None:
        """Note where each process of ``name`` may run, so the JSON shows the pinning held."""
        for pid, cpus in cpu_sets.items():
            self.processes.append({"role": role, "name": name, "pid": pid, "cpus": cpus})

    def describe(self) -> str:
        method = (
            "server CPU per call: user + sys of the server's whole process tree (/proc/PID/stat) over the "
            "loaded phase, over the calls answered in it"
        )
        if self.server is None or self.clients is None:
            return (
                f"shared CPUs: servers, the in-process library and the load clients all run on CPUs "
                f"{format_cpus(self.available)}; {method}"
            )
        return (
            f"pinned: servers and the in-process library on CPUs {format_cpus(self.server)} (the library shows "
            f"what a server could reach there), load clients on CPUs {format_cpus(self.clients)}; {method}"
        )

    def to_json(self) -> dict[str, Any]:
        pinned = self.server is not None and self.clients is not None
        return {
            "mode": "pinned" if pinned else "shared",
            "server_cpus": sorted(self.server) if self.server is not None else None,
            "client_cpus": sorted(self.clients) if self.clients is not None else None,
            "available_cpus": sorted(self.available),
            "processes": self.processes,
        }


def _placement(args: argparse.Namespace) -> Placement:
    """Server and client CPU sets from the flags; by default, disjoint halves of the CPUs this
    process may use, server first, or shared when there is only one."""
    available = frozenset(os.sched_getaffinity(0))
    if args.shared_cpus:
        if args.server_cpus or args.client_cpus:
            raise SystemExit(
                "flux bench serving: --shared-cpus pins nothing; leave out --server-cpus and --client-cpus"
            )
        return Placement(None, None, available)
    try:
        server = parse_cpus(args.server_cpus) if args.server_cpus else None
        clients = parse_cpus(args.client_cpus) if args.client_cpus else None
    except ValueError as exc:
        raise SystemExit(f"flux bench serving: {exc}") from None
    if server is None and clients is None:
        if len(available) < 2:
            return Placement(None, None, available)
        ordered = sorted(available)
        server, clients = frozenset(ordered[: len(ordered) // 2]), frozenset(ordered[len(ordered) // 2 :])
    server = server if server is not None else available - (clients or frozenset())
    clients = clients if clients is not None else available - server
    for flag, cpus in (("--server-cpus", server), ("--client-cpus", clients)):
        if not cpus:
            raise SystemExit(
                f"flux bench serving: {flag} leaves no CPU (this process may use {format_cpus(available)})"
            )
        if not cpus <= available:
            raise SystemExit(
                f"flux bench serving: {flag} {format_cpus(cpus)} is not within the CPUs this process may use, "
                f"{format_cpus(available)}"
            )
    if server & clients:
        raise SystemExit(
            f"flux bench serving: --server-cpus and --client-cpus share CPUs {format_cpus(server & clients)}; "
            "use --shared-cpus to share every CPU"
        )
    return Placement(server, clients, available)


class _Progress:
    """Timestamped progress lines on stderr, so a long run shows where it is."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self._started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace, preset: Preset) -> list[tuple[Setting, Dataset]]:
    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else None
    sweeps = _sweeps(args.sweep)
    if args.data is not None:
        base = preset.settings[-1]
        setting = replace(base, backends=backends or base.backends, sweep={**base.sweep, **sweeps})
        return [(setting, from_files(args.data, args.queries, Metric(args.metric), args.k))]
    out = []
    for setting in preset.settings:
        spec = replace(setting.data, count=args.count) if args.count else setting.data
        setting = replace(setting, data=spec, backends=backends or setting.backends, sweep={**setting.sweep, **sweeps})
        out.append((setting, synthetic(spec, args.k, cache=args.work_dir / "truth")))
    return out


def _sweeps(pairs: Sequence[str]) -> dict[str, tuple[float, ...]]:
    sweeps = {}
    for pair in pairs:
        backend, sep, values = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            sweeps[backend.strip()] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise SystemExit(
                f"flux bench serving: --sweep {pair!r} must look like BACKEND=V1,V2 (e.g. hnsw=32,64)"
            ) from None
    return sweeps


def _echo_models(args: argparse.Namespace) -> tuple[tuple[str, int], ...]:
    """``MODEL[:THREADS]`` entries; threads default to ``--server-threads``."""
    models = []
    for entry in filter(None, (m.strip() for m in args.echo_models.split(","))):
        model, _, threads = entry.partition(":")
        if model not in ECHO_MODELS or (threads and not threads.isdigit()):
            raise SystemExit(f"flux bench serving: echo model {entry!r} is not MODEL[:THREADS] with MODEL one of "
                             f"{', '.join(ECHO_MODELS)}")  # fmt: skip
        models.append((model, int(threads or args.server_threads)))
    return tuple(models)


class _Bench:
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

    def run(self, echo_models: Sequence[tuple[str, int]] = ()) -> list[report.Row]:
        """Measure every swept value in two phases, each alternating between the ceilings and Flux,
        so that a ratio compares runs made seconds apart on a machine whose load may drift."""
        path = self._artifact()
        data = self.data
        library = Library(self.backend, path, data.dimension, data.metric.value, data.queries, cpus=self.cpus)
        echo, flux = self._echo_server("sync", 1), flux_server(self._config(path, 1), cpus=self.cpus)
        bare = bare_server(path, threads=self.args.server_threads, search_threads=self.threads, cpus=self.cpus)
        try:
            for value in self.values:  # one worker: latency, batches, and memory
                for _ in range(self.repeat):
                    self._library(library, value)
                    many = [] if self.workers > 1 else [self.clients]
                    for clients in [1, *many]:
                        self._unary(echo, "echo", value, clients, 1)
                        self._unary(bare, "bare", value, clients, 1)
                        self._unary(flux, "flux-unary", value, clients, 1)
                    self._batches(bare, value, "bare-batch")
                    self._batches(flux, value, "flux-batch")
            self._rss(library.rss(), "library")
            self._rss(flux.rss(), "flux-batch")
            self._placed("library", "library", library.cpu_sets())
            for name, server in (("echo", echo), ("bare", bare), ("flux", flux)):
                self._placed("server", f"{name} (1 process)", server.cpu_sets())
        finally:
            for closing in (library, echo, bare, flux):
                closing.close()
        if self.workers > 1:  # many clients: each server with one process per worker
            echo = self._echo_server("processes", self.workers)
            flux = flux_server(self._config(path, self.workers), cpus=self.cpus)
            bare = bare_server(path, threads=self.args.server_threads, processes=self.workers, cpus=self.cpus)
            try:
                for value in self.values:
                    for _ in range(self.repeat):
                        self._unary(echo, "echo", value, self.clients, self.workers)
                        self._unary(bare, "bare", value, self.clients, self.workers)
                        self._unary(flux, "flux-unary", value, self.clients, self.workers)
                self._rss(flux.rss(), "flux-unary")
                for name, server in (("echo", echo), ("bare", bare), ("flux", flux)):
                    self._placed("server", f"{name} ({self.workers} workers)", server.cpu_sets())
            finally:
                for closing in (echo, bare, flux):
                    closing.close()
        for model, threads in echo_models:  # the concurrency-model study
            echo = self._echo_server(model, self.workers if model == "processes" else 1, threads)
            try:
                workers = self.workers if model == "processes" else 1
                self._unary(echo, f"echo-{model}-{threads}t", self.values[0], self.clients, workers)
                self._placed("server", f"echo-{model}-{threads}t", echo.cpu_sets())
            finally:
                echo.close()
        return report.merge(self.rows)

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
             cpu_seconds: float | None = None) -> report.Row:  # fmt: skip
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
                       same_as_library=same, workers=workers, cpu_seconds=cpu_seconds)  # fmt: skip
        self.rows.append(r)
        self.progress(
            f"{self.data.name}/{self.backend}: {r.label} {self.param}={report._num(value)}: "
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
        t = library.batch(value, self.k, self.seconds, self.batch, self.threads)
        self._add("library-batch", self.threads, self.batch, value, t.calls, t.seconds, t.latencies_ms, t.labels,
                  cpu_seconds=t.cpu_seconds)  # fmt: skip

    def _search_requests(self, value: float) -> list[bytes]:
        params = {} if value < 0 else {self.param: value}
        return [
            pb.SearchRequest(index=INDEX, vector=_vectors(q[None, :]), k=self.k, params=params).SerializeToString()
            for q in self.data.queries
        ]

    def _echo_server(self, model: str, processes: int, threads: int = 0) -> ServerProcess:
        """An echo server answering Search with bytes as large as Flux's answer."""
        neighbors = types_pb2.Neighbors(
            ids=[str(label) for label in self.data.truth[0][: self.k]], distances=[1.0] * self.k
        )
        answer = pb.SearchResponse(index=INDEX, version=1, neighbors=neighbors).SerializeToString()
        threads = threads or self.args.server_threads
        return echo_server({SEARCH: answer}, model=model, threads=threads, processes=processes, cpus=self.cpus)

    def _config(self, path: Path, workers: int) -> dict[str, Any]:
        return {
            "server": {"threads": self.args.server_threads, "search_threads": self.threads, "workers": workers},
            "limits": {"max_batch": max(1024, self.batch), "max_k": max(1024, self.k)},
            "indexes": [{"name": INDEX, "path": str(path.resolve())}],
        }

    def _unary(self, server: ServerProcess, mode: str, value: float, clients: int, workers: int) -> None:
        job = self._job(server.address, SEARCH, self._search_requests(value))
        result = self.pool.run(job, clients, server.cpu_seconds)
        found = self._found(result.responses) if mode != "echo" else None  # the echo does not search
        self._add(mode, clients, 1, value, result.calls, result.seconds, result.latencies_ms, found, workers,
                  result.server_cpu_seconds)  # fmt: skip

    def _batches(self, server: ServerProcess, value: float, mode: str) -> None:
        groups = batches(len(self.data.queries), self.batch)
        params = {} if value < 0 else {self.param: value}
        requests = [
            pb.BatchSearchRequest(
                index=INDEX, queries=_vectors(self.data.queries[rows]), k=self.k, params=params, packed=True
            ).SerializeToString()
            for rows in groups
        ]
        result = self.pool.run(self._job(server.address, BATCH_SEARCH, requests), 1, server.cpu_seconds)
        found = self._found_batches(result.responses, groups)
        self._add(mode, 1, self.batch, value, result.calls * self.batch, result.seconds,
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


def _environment() -> dict[str, Any]:
    from importlib.metadata import version

    from google.protobuf.internal import api_implementation

    packages: dict[str, str | None] = {}
    for name in ("grpcio", "protobuf", "numpy", "hnswlib", "annoy"):
        try:
            packages[name] = version(name)
        except Exception:
            packages[name] = None
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "protobuf_backend": api_implementation.Type(),
        "packages": packages,
    }
