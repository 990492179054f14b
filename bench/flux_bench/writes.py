"""``flux bench writes``: upsert throughput with fsync, group commit against one fsync per write.

Every scenario starts a fresh Flux server (a process of its own) on a copy of one base index with
writes enabled, and client threads that upsert new items for a fixed time, through unary Upsert
calls or one UpsertStream each. Every write is acknowledged only after its log record was
fdatasync'd and the index applied it. Each scenario runs twice: with group commit
(``writes.group_commit: true``, the default: one sync for all the records queued meanwhile) and with
one fsync per write (``false``). Snapshots are off, so the log's cost is what is measured.

The target: with 8 writers streaming batches of one vector, group commit gives at least 10x
the throughput of one fsync per write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from flux.datasets import clustered
from flux_api.v1 import types_pb2
from flux_api.v1 import write_service_pb2 as pb
from flux_api.v1.write_service_pb2_grpc import WriteServiceStub
from flux_bench.servers import flux_server
from flux_core.backend import Metric
from flux_core.errors import FluxError
from flux_core.storage import builder, registry

TARGET = 10.0  # group commit over one fsync per write, 8 streaming writers of batch 1
_INDEX = "bench"
#: Batches per UpsertStream call. A client stream is acknowledged once, at its end, so each writer
#: sends streams of this many batches one after another, rather than one stream that gRPC would
#: buffer without bound.
_STREAM_MESSAGES = 100
#: (rpc, batch, writers); None writers means --writers.
SCENARIOS: tuple[tuple[str, int, int | None], ...] = (
    ("unary", 1, 1),
    ("unary", 1, None),
    ("stream", 1, None),
    ("unary", 1000, 1),
    ("unary", 1000, None),
)


def add_parser(modes: Any) -> None:
    parser = modes.add_parser(
        "writes",
        help="upsert throughput with fsync: group commit vs one fsync per write",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=registry.names(),
        help="any installed mutable backend, repeatable (default: hnsw and exact)",
    )
    parser.add_argument("--dim", type=int, default=64, help="dimension (default: 64)")
    parser.add_argument("--base", type=int, default=10_000, help="items in the index before writing (default: 10,000)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers (default: 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run (default: 3)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="RPC:BATCH",
        help="run only these scenarios, e.g. stream:1 or unary:1000 (repeatable; default: all)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/writes.json"), help="JSON results file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    backends = args.backend or ["hnsw", "exact"]
    for backend in backends:
        if not registry.get(backend).capabilities.mutable:
            raise FluxError(
                f"backend {backend!r} is immutable and takes no writes; writable backends: {', '.join(_mutable())}"
            )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flux-bench-writes-") as tmp:
        root = Path(tmp)
        print(f"building the {args.base:,} x {args.dim} base indexes", file=sys.stderr)
        base = clustered(args.base, args.dim, seed=0)
        for backend in backends:
            builder.build(
                root / "base" / backend,
                base,
                [f"base:{i}" for i in range(args.base)],
                backend=backend,
                metric=Metric.L2,
                name=_INDEX,
                threads=os.cpu_count() or 1,
            )
            for rpc, batch, writers in _scenarios(args):
                for group in (True, False):
                    source = root / f"run-{len(rows)}"
                    shutil.copytree(root / "base" / backend, source / "1")
                    label = f"{backend} {rpc} batch {batch} x {writers} writers, group {group}"
                    print(f"[{len(rows) + 1}] {label} ...", file=sys.stderr, flush=True)
                    rows.append(_measure(backend, rpc, batch, writers, group, source, args))
                    shutil.rmtree(source)
    ratios = _ratios(rows)
    _print_table(rows, ratios, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    report = {"target": TARGET, "dim": args.dim, "base": args.base, "machine": machine, "runs": rows, "ratios": ratios}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r["passed"] for r in ratios if r["target"] is not None) else 1


def _mutable() -> list[str]:
    """The installed backends that take writes (those that load)."""
    found = []
    for name in registry.names():
        try:
            if registry.get(name).capabilities.mutable:
                found.append(name)
        except FluxError:
            continue
    return found


def _scenarios(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(rpc, batch, writers) to run, in order, each once."""
    chosen = [(rpc, batch, writers or args.writers) for rpc, batch, writers in SCENARIOS]
    chosen = [s for s in chosen if not args.only or f"{s[0]}:{s[1]}" in args.only]
    return list(dict.fromkeys(chosen))


def _measure(
    backend: str, rpc: str, batch: int, writers: int, group: bool, source: Path, args: argparse.Namespace
) -> dict[str, Any]:
    config = {
        "server": {"threads": max(16, 2 * writers), "grace_seconds": 0},
        "limits": {"max_batch": max(1024, batch)},
        "indexes": [
            {
                "name": _INDEX,
                "path": str(source),
                "poll_seconds": 0,
                "gate": {"warmup_queries": 0},
                "writes": {"enabled": True, "snapshot_every": 0, "group_commit": group},
            }
        ],
    }
    server = flux_server(config)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = WriteServiceStub(channel)
            results: list[tuple[int, int, list[float]]] = [(0, 0, [])] * writers
            start = threading.Barrier(writers + 1)
            threads = [
                threading.Thread(target=_writer, args=(stub, rpc, batch, n, args, start, results))
                for n in range(writers)
            ]
            for thread in threads:
                thread.start()
            start.wait()
            began = time.perf_counter()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - began
    finally:
        server.close()
    writes = sum(r[0] for r in results)
    vectors = sum(r[1] for r in results)
    latencies = np.array([ms for r in results for ms in r[2]])
    p50, p99 = (float(np.percentile(latencies, p)) for p in (50, 99)) if len(latencies) else (None, None)
    return {
        "backend": backend,
        "rpc": rpc,
        "batch": batch,
        "writers": writers,
        "commit": "group" if group else "fsync per write",
        "seconds": round(seconds, 3),
        "writes": writes,
        "vectors": vectors,
        "writes_per_second": round(writes / seconds, 1),
        "vectors_per_second": round(vectors / seconds, 1),
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
    }


def _writer(
    stub: WriteServiceStub,
    rpc: str,
    batch: int,
    number: int,
    args: argparse.Namespace,
    start: threading.Barrier,
    results: list[tuple[int, int, list[float]]],
) -> None:
    rng = np.random.default_rng(number)
    pool = rng.standard_normal((batch + 255, args.dim)).astype(np.float32)  # rows reused, ids always new
    counter = iter(range(10**12))

    def request(kind: type[Any]) -> Any:
        first = next(counter) * batch
        offset = first % (len(pool) - batch + 1)
        vectors = types_pb2.FloatVectors(dimension=args.dim, data=pool[offset : offset + batch].tobytes())
        return kind(index=_INDEX, ids=[f"w{number}:{first + i}" for i in range(batch)], vectors=vectors)

    start.wait()
    end = time.perf_counter() + args.seconds
    if rpc == "stream":  # streams of _STREAM_MESSAGES batches: what a bulk load has in flight is bounded
        acked = 0
        while time.perf_counter() < end:
            stream = [request(pb.UpsertStreamRequest) for _ in range(_STREAM_MESSAGES)]
            acked += int(stub.UpsertStream(iter(stream), timeout=120).messages)
        results[number] = (acked, acked * batch, [])
        return
    latencies, writes = [], 0
    while time.perf_counter() < end:
        began = time.perf_counter()
        stub.Upsert(request(pb.UpsertRequest), timeout=120)
        latencies.append((time.perf_counter() - began) * 1000)
        writes += 1
    results[number] = (writes, writes * batch, latencies)


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group commit's throughput over one fsync per write, per backend and scenario."""
    out = []
    for group in (r for r in rows if r["commit"] == "group"):
        key = (group["backend"], group["rpc"], group["batch"], group["writers"])
        single = next(
            r for r in rows if r["commit"] != "group" and (r["backend"], r["rpc"], r["batch"], r["writers"]) == key
        )
        ratio = group["vectors_per_second"] / single["vectors_per_second"] if single["vectors_per_second"] else 0.0
        targeted = group["rpc"] == "stream" and group["batch"] == 1 and group["writers"] >= 8
        out.append(
            {
                "backend": group["backend"],
                "rpc": group["rpc"],
                "batch": group["batch"],
                "writers": group["writers"],
                "ratio": round(ratio, 2),
                "target": TARGET if targeted else None,
                "passed": ratio >= TARGET if targeted else None,
            }
        )
    return out


def _print_table(rows: list[dict[str, Any]], ratios: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nupsert throughput with fsync: {args.base:,} x {args.dim} base, "
        f"{args.seconds:g}s per run, {os.cpu_count()} CPUs"
    )
    width = max([7, *(len(r["backend"]) for r in rows)])
    print(
        f"{'backend':<{width}} {'rpc':<6} {'batch':>5} {'writers':>7} {'commit':<16} {'writes/s':>9} "
        f"{'vectors/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for r in rows:
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
        print(
            f"{r['backend']:<{width}} {r['rpc']:<6} {r['batch']:>5} {r['writers']:>7} {r['commit']:<16} "
            f"{r['writes_per_second']:>9,.0f} {r['vectors_per_second']:>10,.0f} {p50:>7} {p99:>7}"
        )
    print("\ngroup commit / one fsync per write (vectors/s)")
    for r in ratios:
        verdict = "" if r["target"] is None else f"  target >= {r['target']:.0f}x {'PASS' if r['passed'] else 'FAIL'}"
        scenario = f"{r['backend']:<{width}} {r['rpc']:<6} batch {r['batch']:>4} x {r['writers']} writers"
        print(f"{scenario}: {r['ratio']:>6.2f}x{verdict}")
