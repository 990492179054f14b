"""``flux bench overload``: what the concurrency limit does for latency when far more clients call than it admits.

A server runs as its own process, with one worker per CPU (``server.workers``) and
``server.max_concurrent_calls`` set low; the limit holds per worker, so by default each
worker runs one call at a time and no admitted call waits on another for its worker's GIL.
First one client calls it alone (the unloaded p99). Then ``--clients`` asyncio clients, each with
its own connection, spread over ``--processes`` processes, call it as fast as they are
answered for ``--seconds``. Calls beyond the limit get RESOURCE_EXHAUSTED; a client that
gets one backs off as a well-behaved client does (``--backoff-ms``, doubling with each
refusal in a row up to 32 times that, with jitter) and calls again.
The same load then runs against the server without a limit, for comparison.

Reported per phase: calls, answered, refused share, p50/p99 of answered calls, p50/p99 of
refusals (how fast they come back), and the answered p99 over the unloaded p99 (target: 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flux_bench.procs import Child, serve_forever, spawn_flux_serve

TARGET = 3.0  # answered p99 under overload at most this many times the unloaded p99
PRESETS = {"quick": {"seconds": 3.0, "unloaded_calls": 500, "n": 5_000}}


def add_parser(modes: Any) -> None:
    parser = modes.add_parser(
        "overload", help="latency of admitted calls beyond the concurrency limit", description=__doc__
    )
    parser.add_argument("--backend", default="hnsw", help="index backend (default: hnsw)")
    parser.add_argument("-n", type=int, default=50_000, help="vectors (default: 50,000)")
    parser.add_argument("--dim", type=int, default=64, help="dimension (default: 64)")
    parser.add_argument(
        "--limit", type=int, default=1, help="server.max_concurrent_calls, per worker process (default: 1)"
    )
    parser.add_argument("--threads", type=int, default=4, help="server.threads (default: 4)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="server.workers (default: one per CPU)"
    )
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default: 64)")
    parser.add_argument("--processes", type=int, default=2, help="client processes (default: 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per phase (default: 10)")
    parser.add_argument("--unloaded-calls", type=int, default=3000, help="calls by the lone client (default: 3000)")
    parser.add_argument(
        "--backoff-ms", type=float, default=20.0, help="first wait after a refusal, doubling, +-50%% (default: 20)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="quick: a short smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench-results/overload.json"), help="JSON results file")
    parser.set_defaults(run=run)


# --- the clients (in child processes) ------------------------------------------------------------


def _client_main(conn: Any, address: str, dim: int) -> None:
    """Child process: each message (clients, seconds, calls, backoff) runs one load and sends back its records."""
    serve_forever(conn, lambda message: asyncio.run(_load(address, dim, *message)))


async def _load(address: str, dim: int, clients: int, seconds: float, calls: int, backoff: float) -> list[Any]:
    import grpc

    from flux_api.v1 import types_pb2
    from flux_api.v1 import vector_service_pb2 as pb
    from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub

    rng = np.random.default_rng(os.getpid())
    requests = [
        pb.SearchRequest(index="bench", k=10, vector=types_pb2.FloatVectors(dimension=dim, data=q.tobytes()))
        for q in rng.standard_normal((256, dim)).astype("<f4")
    ]
    until = time.monotonic() + seconds

    async def one(number: int) -> list[tuple[float, str]]:
        records: list[tuple[float, str]] = []
        async with grpc.aio.insecure_channel(address) as channel:
            search = VectorServiceStub(channel).Search
            await asyncio.wait_for(channel.channel_ready(), 30)  # connect before the clock runs
            i, refusals = number, 0
            while (len(records) < calls) if calls else (time.monotonic() < until):
                started = time.perf_counter()
                try:
                    await search(requests[i % len(requests)], timeout=30)
                    records.append((time.perf_counter() - started, "OK"))
                    refusals = 0
                except grpc.aio.AioRpcError as exc:
                    records.append((time.perf_counter() - started, exc.code().name))
                    if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and backoff:
                        refusals += 1  # the client's own pacing: exponential backoff with jitter
                        await asyncio.sleep(backoff * min(2 ** (refusals - 1), 32) * random.uniform(0.5, 1.5))
                i += 1
        return records

    done = await asyncio.gather(*(one(n) for n in range(clients)))
    return [r for records in done for r in records]


# --- the server ------------------------------------------------------------------------------------


def _phase(name: str, records: list[tuple[float, str]], seconds: float, unloaded_p99: float | None) -> dict[str, Any]:
    ok = np.array([s for s, code in records if code == "OK"]) * 1000
    refused = np.array([s for s, code in records if code == "RESOURCE_EXHAUSTED"]) * 1000
    other = sorted({code for _, code in records} - {"OK", "RESOURCE_EXHAUSTED"})

    def pct(values: np.ndarray, q: float) -> float | None:
        return float(np.percentile(values, q)) if len(values) else None

    p99 = pct(ok, 99)
    return {
        "phase": name,
        "calls": len(records),
        "ok": len(ok),
        "refused": len(refused),
        "refused_share": len(refused) / max(1, len(records)),
        "other_errors": sum(1 for _, code in records if code not in ("OK", "RESOURCE_EXHAUSTED")),
        "other_codes": other,
        "ok_per_second": len(ok) / seconds if seconds else None,
        "ok_p50_ms": pct(ok, 50),
        "ok_p99_ms": p99,
        "refused_p50_ms": pct(refused, 50),
        "refused_p99_ms": pct(refused, 99),
        "ratio": p99 / unloaded_p99 if p99 is not None and unloaded_p99 else 1.0,
    }


def _run_server(args: argparse.Namespace, root: Path, artifact: Path, limit: int) -> list[dict[str, Any]]:
    config = root / f"flux-{limit}.yaml"
    config.write_text(
        f"server: {{port: 0, threads: {args.threads}, max_concurrent_calls: {limit}, search_threads: 1, "
        f"workers: {args.workers}}}\n"
        f"indexes: [{{name: bench, path: {artifact}}}]\n"
    )
    process, address = spawn_flux_serve(config)
    children = [Child(_client_main, address, args.dim, name=f"flux-bench-load-{i}") for i in range(args.processes)]
    try:
        phases = []
        if limit:
            records = children[0].call((1, 0.0, args.unloaded_calls, 0.0))
            phases.append(_phase("1 client", records, 0.0, None))
        per = [args.clients // args.processes + (i < args.clients % args.processes) for i in range(args.processes)]
        for child, clients in zip(children, per, strict=True):
            child.send((clients, args.seconds, 0, args.backoff_ms / 1000))
        records = [r for child in children for r in child.recv(timeout=args.seconds + 120)]
        name = f"{args.clients} clients, " + (f"limit {limit}" if limit else "no limit")
        phases.append(_phase(name, records, args.seconds, None))
        return phases
    finally:
        for child in children:
            child.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def run(args: argparse.Namespace) -> int:
    for key, value in PRESETS.get(args.preset or "", {}).items():
        setattr(args, key, value)
    from flux.datasets import clustered
    from flux_core.backend import Metric
    from flux_core.storage import builder

    with tempfile.TemporaryDirectory(prefix="flux-bench-overload-") as tmp:
        root = Path(tmp)
        print(f"building {args.n:,} x {args.dim} ({args.backend})", file=sys.stderr, flush=True)
        vectors = clustered(args.n, args.dim, seed=1)
        artifact = root / "bench"
        ids = [str(i) for i in range(args.n)]
        builder.build(artifact, vectors, ids, backend=args.backend, metric=Metric.L2, name="bench", threads=2)
        phases = _run_server(args, root, artifact, args.limit) + _run_server(args, root, artifact, 0)
    unloaded = phases[0]["ok_p99_ms"]
    for phase in phases:
        phase["ratio"] = phase["ok_p99_ms"] / unloaded if phase["ok_p99_ms"] is not None else None
    passed = phases[1]["ratio"] is not None and phases[1]["ratio"] <= TARGET and phases[1]["other_errors"] == 0
    _print(args, phases, passed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "out", "command", "bench_mode")}
    args.out.write_text(
        json.dumps({"settings": settings, "phases": phases, "target": TARGET, "passed": passed}, indent=2)
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if passed else 1


def _print(args: argparse.Namespace, phases: list[dict[str, Any]], passed: bool) -> None:
    def ms(value: float | None) -> str:
        return f"{value:.2f}ms" if value is not None else "-"

    print(
        f"\noverload: {args.backend} {args.n:,} x {args.dim}, Search k=10; {args.workers} worker(s), each with "
        f"server.max_concurrent_calls {args.limit} and {args.threads} threads;\n"
        f"  {args.clients} asyncio clients in {args.processes} processes for {args.seconds:g}s each; "
        f"{args.backoff_ms:g}ms backoff after a refusal"
    )
    print(
        f"{'phase':<24} {'calls':>7} {'answered':>8} {'ans/s':>7} {'refused':>8} {'errors':>6} "
        f"{'ans p50':>9} {'ans p99':>9} {'ref p50':>9} {'ref p99':>9} {'p99/unloaded':>12}"
    )
    for p in phases:
        rate = f"{p['ok_per_second']:.0f}" if p["ok_per_second"] else "-"
        ratio = f"{p['ratio']:.2f}" if p["ratio"] is not None else "-"
        print(
            f"{p['phase']:<24} {p['calls']:>7} {p['ok']:>8} {rate:>7} {p['refused_share']:>7.0%} "
            f"{p['other_errors']:>6} {ms(p['ok_p50_ms']):>9} {ms(p['ok_p99_ms']):>9} {ms(p['refused_p50_ms']):>9} "
            f"{ms(p['refused_p99_ms']):>9} {ratio:>12}"
        )
    print(
        f"target: answered p99 under overload <= {TARGET:g}x the unloaded p99, no other errors: "
        f"{'PASS' if passed else 'FAIL'}"
    )
