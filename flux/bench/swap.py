"""``flux bench swap``: query latency while a new version is published and swapped in, and rollback time.

A server runs as its own process; client processes search it continuously. After a
steady period, a new version appears in the index's source directory (one rename, as a
publisher makes it) and the server loads, gates and swaps it in the background; then
the next, ``--swaps`` times. A swap lasts from the rename until the first answer from
the new version, plus half a second. The p99 latency of the queries sent during the
swaps is compared with the p99 before the first one (one swap holds too few queries
for a steady p99). Then the previous version comes back through RollbackVersion,
which is timed. Every answer must come from exactly one version, and none may fail.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flux.bench.procs import spawn_flux_serve
from flux.core import builder
from flux.core.backend import Metric
from flux.datasets import clustered

BACKENDS = ("hnsw", "annoy")  # the defaults; voyager on request (its search holds the GIL: docs/performance.md)
TARGET = 2.0  # p99 during the swap at most this many times the p99 before it


def add_parser(modes: Any) -> None:
    parser = modes.add_parser("swap", help="latency during a hot swap, and rollback time", description=__doc__)
    parser.add_argument(
        "--backend",
        action="append",
        choices=[*BACKENDS, "voyager"],
        help=f"repeatable (default: {', '.join(BACKENDS)})",
    )
    parser.add_argument("-n", type=int, default=100_000, help="vectors per version (default: 100,000)")
    parser.add_argument("--dim", type=int, default=128, help="dimension (default: 128)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default: 4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="steady load before each swap (default: 8)")
    parser.add_argument("--swaps", type=int, default=3, help="versions published one after another (default: 3)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/swap.json"), help="JSON results file")
    parser.set_defaults(run=run)


def _client(address: str, dim: int, until: float, queue: Any) -> None:
    import grpc

    from flux_api.v1 import types_pb2
    from flux_api.v1 import vector_service_pb2 as pb
    from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub

    rng = np.random.default_rng(os.getpid())
    queries = [
        pb.SearchRequest(
            index="bench", k=10, vector=types_pb2.FloatVectors(dimension=dim, data=q.astype("<f4").tobytes())
        )
        for q in rng.standard_normal((256, dim))
    ]
    records, failures = [], 0
    with grpc.insecure_channel(address) as channel:
        search = VectorServiceStub(channel).Search
        i = 0
        while (started := time.monotonic()) < until:
            try:
                response = search(queries[i % len(queries)], timeout=10)
                versions = {item.split(":")[0] for item in response.neighbors.ids}
                mixed = versions != {f"v{response.version}"}
                records.append((started, time.monotonic() - started, response.version, mixed))
            except Exception:
                failures += 1
            i += 1
    queue.put((records, failures))


def _build(folder: Path, backend: str, version: int, n: int, dim: int) -> None:
    vectors = clustered(n, dim, seed=version)
    ids = [f"v{version}:{i}" for i in range(n)]
    builder.build(folder, vectors, ids, backend=backend, metric=Metric.L2, name="bench", version=version, threads=2)


def _one(backend: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import grpc

    from flux_api.v1 import admin_service_pb2 as admin
    from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub

    source, staging = root / backend / "source", root / backend / "staging"
    versions = range(2, args.swaps + 2)
    print(f"[{backend}] building {args.swaps + 1} versions of {args.n:,} x {args.dim}", file=sys.stderr, flush=True)
    _build(source / "1", backend, 1, args.n, args.dim)
    for version in versions:
        _build(staging / str(version), backend, version, args.n, args.dim)
    config = root / backend / "flux.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: 0, threads: 16}}\n"
        f"indexes:\n  - name: bench\n    path: {source}\n    poll_seconds: 0.2\n"
    )
    process, address = spawn_flux_serve(config)
    try:
        context = mp.get_context("spawn")
        queue = context.Queue()
        start = time.monotonic()
        schedule = [start + args.seconds * n for n in range(1, args.swaps + 1)]  # when each version appears
        until = schedule[-1] + args.seconds
        clients = [context.Process(target=_client, args=(address, args.dim, until, queue)) for _ in range(args.clients)]
        for client in clients:
            client.start()
        print(
            f"[{backend}] steady load for {args.seconds:.0f}s, then a new version every {args.seconds:.0f}s "
            f"({args.swaps} swaps)",
            file=sys.stderr,
            flush=True,
        )
        published = []
        for version, at in zip(versions, schedule, strict=True):
            time.sleep(max(0.0, at - time.monotonic()))  # the benchmark's own schedule, not synchronisation
            shutil.move(str(staging / str(version)), str(source / str(version)))
            published.append(time.monotonic())
        results = [queue.get() for _ in clients]
        for client in clients:
            client.join()
        records = [r for recs, _ in results for r in recs]
        failures = sum(f for _, f in results)
        # A swap lasts from the rename until the first answer from the new version, plus half a second.
        swapped = [min((r[0] for r in records if r[2] == version), default=float("nan")) for version in versions]
        windows = list(zip(published, [s + 0.5 for s in swapped], strict=True))
        before = np.array([r[1] for r in records if r[0] < published[0]])
        during = np.array([r[1] for r in records if any(a <= r[0] <= b for a, b in windows)])
        with grpc.insecure_channel(address) as channel:
            t = time.perf_counter()
            rolled = AdminServiceStub(channel).RollbackVersion(admin.RollbackVersionRequest(index="bench"), timeout=300)
            rollback_seconds = time.perf_counter() - t
        p99_before = float(np.percentile(before, 99)) if len(before) else float("nan")
        p99_during = float(np.percentile(during, 99)) if len(during) else float("nan")
        return {
            "backend": backend,
            "requests": len(records),
            "failed": failures,
            "mixed_answers": sum(1 for r in records if r[3]),
            "swaps": args.swaps,
            "swap_seconds": float(np.median([s - p for p, s in zip(published, swapped, strict=True)])),
            "p99_before_ms": p99_before * 1000,
            "p99_during_ms": p99_during * 1000,
            "ratio": p99_during / p99_before,
            "requests_during": len(during),
            "rollback_seconds": rollback_seconds,
            "rolled_back_to": rolled.version.version,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def run(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="flux-bench-swap-") as tmp:
        for backend in args.backend or BACKENDS:
            rows.append(_one(backend, args, Path(tmp)))
    print(f"\nhot swap under load: {args.n:,} x {args.dim}, {args.clients} client processes, unary Search")
    print(
        f"{'backend':<8} {'requests':>9} {'failed':>6} {'mixed':>5} {'swaps':>5} {'swap s':>7} {'p99 before':>11} "
        f"{'p99 during':>11} {'ratio':>6} {'rollback s':>11}  target"
    )
    passed = True
    for r in rows:
        ok = r["failed"] == 0 and r["mixed_answers"] == 0 and r["ratio"] <= TARGET
        passed &= ok
        print(
            f"{r['backend']:<8} {r['requests']:>9} {r['failed']:>6} {r['mixed_answers']:>5} {r['swaps']:>5} "
            f"{r['swap_seconds']:>7.2f} "
            f"{r['p99_before_ms']:>9.2f}ms {r['p99_during_ms']:>9.2f}ms {r['ratio']:>6.2f} "
            f"{r['rollback_seconds']:>11.3f}  ratio <= {TARGET:g}, no failures: {'PASS' if ok else 'FAIL'}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n": args.n, "dim": args.dim, "clients": args.clients, "results": rows}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if passed else 1
