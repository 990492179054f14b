"""``flux bench swap``: query latency while new versions are published and swapped in, a bad one refused, and rollback.

A server runs as its own process, keeping two versions loaded (``versions: {policy: latest,
keep: 2}``); client processes search it continuously. After a steady period, a new version
appears in the index's source directory (one rename, as a publisher makes it) and the server
loads, gates and swaps it in the background; then the next, ``--swaps`` times. A swap lasts
from the rename until the first answer from the new version, plus half a second. The p99
latency of the queries sent during the swaps is compared with the p99 before the first one
(one swap holds too few queries for a steady p99), and so is the slowest of them.

Then a corrupt version is published, and while the server refuses it every other request
names the version kept beside the active one (``SearchRequest.version``): none may fail.
Last, the kept version comes back through RollbackVersion, which is timed.

``--gate recommended`` configures the activation gate as docs/versions.md recommends
(warm-up 64, canary 200, recall@10 >= 0.9, overlap@10 >= 0.5); ``default`` leaves the gate out
of the config (warm-up 32, no canary). Every version holds the same items, each a little moved,
so the overlap check passes; with ``default`` each version's ids also name it, so that an
answer mixing two versions shows (the overlap check would refuse such versions).

With two CPUs or more the server runs on CPUs of its own and the clients on the others, as in
production, where clients run elsewhere (``--server-cpus``, ``--client-cpus``;
``--shared-cpus`` lets every process use every CPU).
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
from typing import Any, NamedTuple

import numpy as np

from flux.datasets import clustered
from flux_bench import placement as cpu_placement
from flux_bench.placement import Placement
from flux_bench.procs import cpu_seconds, spawn_flux_serve
from flux_core.backend import Metric
from flux_core.storage import builder, registry

BACKENDS = ("hnsw", "annoy")  # the defaults; voyager on request (its search holds the GIL: docs/performance.md)
GATES = {
    "default": "",
    "recommended": "    gate: {warmup_queries: 64, canary_queries: 200, k: 10, min_recall: 0.9, min_overlap: 0.5}\n",
}
RATIO = 1.5  # p99 during the swaps at most this many times the p99 before them
SLOWEST_MS = 100.0  # the slowest request during the swaps at most this far above the p99 before them
SWAP_SECONDS = 2.0  # from the rename to the first answer from the new version, at most
MOVE = 0.02  # how far (per coordinate) each version moves every item of the base set


def add_parser(modes: Any) -> None:
    parser = modes.add_parser("swap", help="latency during a hot swap, and rollback time", description=__doc__)
    parser.add_argument(
        "--backend",
        action="append",
        choices=registry.names(),
        help=f"any installed backend, repeatable (default: {', '.join(BACKENDS)})",
    )
    parser.add_argument("--gate", choices=sorted(GATES), default="default", help="activation gate (default: default)")
    parser.add_argument("-n", type=int, default=100_000, help="vectors per version (default: 100,000)")
    parser.add_argument("--dim", type=int, default=128, help="dimension (default: 128)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default: 4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="steady load before each swap (default: 8)")
    parser.add_argument(
        "--rate",
        type=float,
        help="requests per second from all clients together, paced and timed from when each was due "
        "(default: none, each client sends its next request as soon as the last is answered)",
    )
    parser.add_argument("--swaps", type=int, default=3, help="versions published one after another (default: 3)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/swap.json"), help="JSON results file")
    cpu_placement.add_arguments(parser)
    parser.set_defaults(run=run)


class Record(NamedTuple):
    started: float
    seconds: float
    version: int  # the version that answered; 0 when the call failed
    mixed: bool  # the answer held items of another version than the one it names
    named: int  # the version the request asked for; 0 for the active one
    error: str  # the status code's name when the call failed


def _client(
    address: str,
    dim: int,
    until: float,
    tagged: bool,
    name_kept: Any,
    queue: Any,
    cpus: frozenset[int] | None,
    interval: float,
) -> None:
    """Search until ``until``: back to back, or one request every ``interval`` seconds when it is set.

    Paced requests are timed from when they were due, so a stall counts for every request it held
    back, not only for the one in flight (no coordinated omission).
    """
    import grpc

    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # before any thread starts: grpc's inherit the set

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
    records: list[Record] = []
    active = 0
    with grpc.insecure_channel(address) as channel:
        search = VectorServiceStub(channel).Search
        i = 0
        first = time.monotonic()
        while (started := time.monotonic()) < until:
            if interval:
                due = first + i * interval
                if due > started:
                    time.sleep(due - started)  # the load's own pace, not synchronisation
                started = due
            request = queries[i % len(queries)]
            # While a bad version is published, every other request names the version kept beside the active one.
            request.version = active - 1 if i % 2 and active > 1 and name_kept.is_set() else 0
            try:
                response = search(request, timeout=10)
            except grpc.RpcError as exc:
                records.append(Record(started, time.monotonic() - started, 0, False, request.version, exc.code().name))
            else:
                mixed = tagged and {item.split(":")[0] for item in response.neighbors.ids} != {f"v{response.version}"}
                records.append(
                    Record(started, time.monotonic() - started, response.version, mixed, request.version, "")
                )
                if not request.version:
                    active = response.version
            i += 1
    queue.put(records)


def _build(folder: Path, backend: str, version: int, n: int, dim: int, tagged: bool) -> None:
    moved = clustered(n, dim, seed=1) + np.random.default_rng(version).standard_normal((n, dim), np.float32) * MOVE
    ids = [f"v{version}:{i}" if tagged else f"id:{i}" for i in range(n)]
    builder.build(folder, moved, ids, backend=backend, metric=Metric.L2, name="bench", version=version, threads=2)


def _corrupt(folder: Path) -> None:
    """Flip one byte in the middle of the artifact's largest file: its checksum no longer matches."""
    largest = max((p for p in folder.iterdir() if p.name != "manifest.json"), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))


def _one(backend: str, args: argparse.Namespace, root: Path, placement: Placement) -> dict[str, Any]:
    import grpc

    from flux_api.v1 import admin_service_pb2 as admin
    from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub

    source, staging = root / backend / "source", root / backend / "staging"
    tagged = args.gate == "default"
    versions = range(2, args.swaps + 2)
    bad = args.swaps + 2
    print(f"[{backend}] building {args.swaps + 2} versions of {args.n:,} x {args.dim}", file=sys.stderr, flush=True)
    _build(source / "1", backend, 1, args.n, args.dim, tagged)
    for version in [*versions, bad]:
        _build(staging / str(version), backend, version, args.n, args.dim, tagged)
    _corrupt(staging / str(bad))
    config = root / backend / "flux.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: 0, threads: 16}}\n"
        f"indexes:\n  - name: bench\n    path: {source}\n    poll_seconds: 0.2\n"
        f"    versions: {{policy: latest, keep: 2}}\n{GATES[args.gate]}"
    )
    process, address = spawn_flux_serve(config, placement.server, echo=r"ready after|swapped version|failed|refus")
    try:
        interval = args.clients / args.rate if args.rate else 0.0
        context = mp.get_context("spawn")
        queue, name_kept = context.Queue(), context.Event()
        start = time.monotonic()
        schedule = [start + args.seconds * n for n in range(1, args.swaps + 2)]  # when each version appears
        until = schedule[-1] + args.seconds
        clients = [
            context.Process(
                target=_client,
                args=(address, args.dim, until, tagged, name_kept, queue, placement.clients, interval),
            )
            for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        print(
            f"[{backend}] gate {args.gate}: steady load for {args.seconds:.0f}s, then a new version every "
            f"{args.seconds:.0f}s ({args.swaps} swaps), then a corrupt one",
            file=sys.stderr,
            flush=True,
        )
        published = []
        time.sleep(max(0.0, start + args.seconds / 2 - time.monotonic()))  # the clients are up by then
        busy = [(time.monotonic(), cpu_seconds([process.pid]))]  # the server's CPU time, for how busy it was
        for version, at in zip([*versions, bad], schedule, strict=True):
            time.sleep(max(0.0, at - time.monotonic()))  # the benchmark's own schedule, not synchronisation
            busy.append((time.monotonic(), cpu_seconds([process.pid])))
            if version == bad:
                name_kept.set()
            shutil.move(str(staging / str(version)), str(source / str(version)))
            published.append(time.monotonic())
        with grpc.insecure_channel(address) as channel:
            stub = AdminServiceStub(channel)
            refused = float("nan")
            while time.monotonic() < until and refused != refused:
                listed = stub.ListVersions(admin.ListVersionsRequest(index="bench"), timeout=10).versions
                if any(v.version == bad and v.state == admin.VERSION_STATE_FAILED for v in listed):
                    refused = time.monotonic()
                else:
                    time.sleep(0.05)  # polling an observable state, with the clients' end as the deadline
            records: list[Record] = [r for _ in clients for r in queue.get()]
            for client in clients:
                client.join()
            listed = stub.ListVersions(admin.ListVersionsRequest(index="bench"), timeout=10).versions
            gates = {
                v.version: (round(v.gate.recall, 3), round(v.gate.overlap, 3))
                for v in listed
                if v.HasField("gate") and v.gate.canary_queries
            }
            # Verifying, loading and gating each version, in the server: most of a swap's time.
            loads = {v.version: round(v.load_seconds, 3) for v in listed if v.load_seconds}
            t = time.perf_counter()
            rolled = stub.RollbackVersion(admin.RollbackVersionRequest(index="bench"), timeout=300)
            rollback_seconds = time.perf_counter() - t
        return (
            _summary(backend, args, records, published[:-1], versions, published[-1], refused, tagged)
            | {
                "gate_recall_overlap": gates,
                "load_seconds": loads,
                "rollback_seconds": rollback_seconds,
                "rolled_back_to": rolled.version.version,
            }
            | _cpu(busy)
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _cpu(busy: list[tuple[float, float]]) -> dict[str, float]:
    """How busy the server was before the first swap (CPU seconds per second), and the CPU seconds
    a swap took beyond that: each period from one publication to the next, less its steady share."""
    (t0, c0), (t1, c1), *swaps = busy
    steady = (c1 - c0) / (t1 - t0)
    extra = [(c - cb) - steady * (t - tb) for (tb, cb), (t, c) in zip([(t1, c1), *swaps], swaps, strict=False)]
    return {"server_busy_before": steady, "server_cpu_seconds_per_swap": float(np.mean(extra)) if extra else 0.0}


def _summary(
    backend: str,
    args: argparse.Namespace,
    records: list[Record],
    published: list[float],
    versions: range,
    bad_published: float,
    refused: float,
    tagged: bool,
) -> dict[str, Any]:
    answered = [r for r in records if not r.error]
    # A swap lasts from the rename until the first answer from the new version, plus half a second.
    swapped = [min((r.started for r in answered if r.version == v), default=float("nan")) for v in versions]
    swaps = [s - p for p, s in zip(published, swapped, strict=True)]
    windows = list(zip(published, [s + 0.5 for s in swapped], strict=True))
    before = np.array([r.seconds for r in answered if r.started < published[0]])
    during = np.array([r.seconds for r in records if any(a <= r.started <= b for a, b in windows)])
    p99_before = float(np.percentile(before, 99)) if len(before) else float("nan")
    p99_during = float(np.percentile(during, 99)) if len(during) else float("nan")
    slowest = float(during.max()) if len(during) else float("nan")
    named = [r for r in records if r.named]
    return {
        "backend": backend,
        "gate": args.gate,
        "rate": args.rate,
        "requests": len(records),
        "failed": sum(1 for r in records if r.error),
        "mixed_answers": sum(1 for r in records if r.mixed) if tagged else None,
        "swaps": args.swaps,
        "swap_seconds": [round(s, 3) for s in swaps],
        "swap_seconds_median": float(np.median(swaps)),
        "swap_seconds_max": float(np.max(swaps)),
        "p99_before_ms": p99_before * 1000,
        "p99_during_ms": p99_during * 1000,
        "ratio": p99_during / p99_before,
        "slowest_during_ms": slowest * 1000,
        "slowest_above_p99_ms": (slowest - p99_before) * 1000,
        "requests_during": len(during),
        "bad_refused_seconds": refused - bad_published,
        "kept_requests": len(named),
        "kept_not_found": sum(1 for r in named if r.error == "NOT_FOUND"),
    }


def verdict(r: dict[str, Any]) -> dict[str, bool]:
    """Each target, met or not."""
    return {
        f"p99 ratio <= {RATIO:g}": r["ratio"] <= RATIO,
        f"slowest <= p99 + {SLOWEST_MS:g} ms": r["slowest_above_p99_ms"] <= SLOWEST_MS,
        f"swap <= {SWAP_SECONDS:g} s": r["swap_seconds_max"] <= SWAP_SECONDS,
        "no NOT_FOUND for the kept version": r["kept_requests"] > 0 and r["kept_not_found"] == 0,
        "no failed or mixed answer": r["failed"] == 0 and not r["mixed_answers"],
    }


def run(args: argparse.Namespace) -> int:
    placement = cpu_placement.from_arguments(args, "flux bench swap")
    print(placement.summary(), file=sys.stderr, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="flux-bench-swap-") as tmp:
        for backend in args.backend or BACKENDS:
            rows.append(_one(backend, args, Path(tmp), placement))
    print(
        f"\nhot swap under load: {args.n:,} x {args.dim}, {args.clients} client processes, unary Search "
        f"{f'at {args.rate:,.0f}/s' if args.rate else 'back to back'}, "
        f"keep 2, gate {args.gate}; {placement.summary()}"
    )
    print(
        f"{'backend':<8} {'requests':>9} {'failed':>6} {'mixed':>5} {'swap s':>11} {'p99 before':>11} "
        f"{'p99 during':>11} {'ratio':>6} {'slowest-p99':>12} {'kept 404':>8} {'rollback s':>11} "
        f"{'busy':>5} {'swap CPU s':>10}  targets"
    )
    passed = True
    for r in rows:
        checks = verdict(r)
        r["targets"] = checks
        ok = all(checks.values())
        passed &= ok
        missed = ", ".join(name for name, met in checks.items() if not met)
        mixed = "-" if r["mixed_answers"] is None else str(r["mixed_answers"])
        print(
            f"{r['backend']:<8} {r['requests']:>9} {r['failed']:>6} {mixed:>5} "
            f"{r['swap_seconds_median']:>5.2f}/{r['swap_seconds_max']:<5.2f} "
            f"{r['p99_before_ms']:>9.2f}ms {r['p99_during_ms']:>9.2f}ms {r['ratio']:>6.2f} "
            f"{r['slowest_above_p99_ms']:>10.1f}ms {r['kept_not_found']:>8} {r['rollback_seconds']:>11.3f} "
            f"{r['server_busy_before']:>5.0%} {r['server_cpu_seconds_per_swap']:>10.2f}  "
            + (f"FAIL ({missed})" if missed else "PASS")
        )
    print(
        "swap s: median/max from the rename to the first answer from the new version; kept 404: NOT_FOUND for "
        "requests naming the kept version while the corrupt one was refused; busy: the server's CPU seconds per "
        "second before the swaps; swap CPU s: the server's CPU seconds a swap took beyond that"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "n": args.n,
                "dim": args.dim,
                "clients": args.clients,
                "gate": args.gate,
                "pinning": placement.to_json(),
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if passed else 1
