"""``flux bench serving``: Flux against the in-process library and an echo baseline, in one run.

For each data set and backend it measures, at every swept search parameter:

* ``library``: the library in-process, one query per call, from 1 and from N threads;
* ``library-batch``: the library in-process, B queries per call, N threads;
* ``echo``: a do-nothing gRPC server answering Flux-sized messages, from 1 and from C client processes;
* ``bare``: the least a Python search server does (parse, the backend's search, encode), same loads;
* ``bare-batch``: the bare server answering the same batches as ``flux-batch``;
* ``flux-unary``: Flux's Search, from 1 and from C client processes;
* ``flux-batch``: Flux's BatchSearch with B queries per call (packed answers, as the Python client
  asks for them), from one client;
* ``flux-stream``: Flux's StreamSearch, one stream per client process from C processes, each
  keeping a few queries in flight; ``echo-stream``: the echo answering such streams. Every
  answer a stream gives is checked against the one Search gave to the same query.

With two CPUs or more, the servers run on CPUs of their own and the load clients on others
(``--server-cpus``, ``--client-cpus``; ``--shared-cpus`` lets every process use every CPU), and
the in-process library runs on the servers' CPUs: what a server could reach there. Each server
mode's CPU time per call (user + sys of its whole process tree, from /proc, over the loaded
phase) is reported beside QPS and latency.

then prints the table and the issue's target ratios, and writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flux_bench import placement as cpu_placement
from flux_bench import report, report_output
from flux_bench.data import Dataset, Synthetic, from_files, synthetic
from flux_bench.load import LoadClients
from flux_bench.progress import Progress
from flux_bench.servers import ECHO_MODELS
from flux_bench.serving_measure import Bench, Setting
from flux_bench.serving_stream import StreamClients, print_streams
from flux_bench.serving_stream import targets as stream_targets
from flux_core.backend import Metric


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
    parser.add_argument("--seconds", type=float, help="length of each measurement (longer until every query is asked)")
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
    cpu_placement.add_arguments(parser)
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
    placement = cpu_placement.from_arguments(args, "flux bench serving")
    server_cpu_count = len(placement.server) if placement.server else os.cpu_count() or 1
    args.threads = args.threads or server_cpu_count  # more than the server's CPUs would only take turns
    args.workers = args.workers or server_cpu_count
    progress = Progress()
    result = report.Report(command="flux " + " ".join(shlex.quote(a) for a in sys.argv[1:]), environment=_environment())
    result.pinning = placement.to_json()
    progress(placement.describe())
    echo_models = _echo_models(args)  # measured once, on the first data set and backend
    pool = LoadClients(clients, placement.clients)
    streams = StreamClients(clients, placement.clients)
    try:
        for setting, dataset in settings:
            progress(f"{dataset.name}: {len(dataset.base):,} x {dataset.dimension}, {len(dataset.queries):,} queries")
            for backend in setting.backends:
                bench = Bench(args, setting, dataset, backend, pool, progress, seconds, clients, batch, preset.repeat,
                              placement, streams=streams)  # fmt: skip
                result.rows.extend(bench.run(echo_models))
                server_cpus = len(placement.server) if placement.server else None
                result.targets.extend(
                    report.targets(result.rows, dataset.name, backend, clients, threads=args.threads,
                                   server_cpus=server_cpus)
                )  # fmt: skip
                result.targets.extend(report.memory_targets(dataset.name, backend, bench.worker_memory))
                result.targets.extend(
                    stream_targets(result.rows, dataset.name, backend, clients, answers=bench.compared,
                                   client_cpu=bench.client_cpu, server_cpus=server_cpus,
                                   client_cpus=len(placement.clients) if placement.clients else None)
                )  # fmt: skip
                echo_models = ()
        placement.record("clients", "load clients", pool.cpu_sets())  # once they have run: they pin as they start
        placement.record("clients", "stream clients", streams.cpu_sets())
    finally:
        pool.close()
        streams.close()
    result.pinning = placement.to_json()
    print(f"\n{placement.describe()}", file=sys.stdout)
    report_output.print_table(result.rows, sys.stdout)
    report_output.print_cpu(result.rows, sys.stdout)
    print_streams(result.rows, sys.stdout)
    report_output.print_targets(result.targets, sys.stdout)
    json_path = args.json or args.work_dir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(result.to_json(), encoding="utf-8")
    print(f"\nwrote {json_path}", file=sys.stdout)
    plot_path = args.plot or args.work_dir / "recall-qps.png"
    if report_output.plot(result.rows, plot_path):
        print(f"wrote {plot_path}", file=sys.stdout)
    else:
        print("no plot: install matplotlib (pip install 'flux-server[bench]')", file=sys.stdout)
    return 0 if all(t.passed for t in result.targets) else 1


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
