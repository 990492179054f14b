"""``flux bench router``: what a router adds to a Search, measured against a direct Search to one shard.

One run builds a random float32 dataset, splits it by id over 4 shards (``shard_of``) with the exact
backend, starts the 4 shard servers and a router over them on 127.0.0.1, each in its own process,
and sends Search calls from one client, one call at a time: first straight to shard 0, then to all
4 shards at once from the client itself (the fan-out alone, no router: what any router pays on this
machine), then through the router, which fans every call out to the 4 shards and merges their
answers. It reports p50 and p99 of each, QPS, and the CPU time each call cost the client, the
router and the shards (together), read from /proc: on a machine with fewer cores than processes,
the shards' share shows how much of the router's latency is waiting for a core. It checks the
target: the router's p50 at most the direct p50 plus 1 ms; and, for machines where the shards
share the router's cores, what the router adds over the fan-out alone, at most 1 ms. Before
timing, it checks that the router answers as a brute-force search over all the data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np

from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_bench.procs import Child, cpu_seconds, process_tree
from flux_bench.servers import ServerProcess, flux_server

SHARDS = 4
#: The router's p50 may exceed a direct Search's p50 by at most this much.
TARGET_MS = 1.0


def add_parser(modes: Any) -> None:
    """Adds ``router`` to ``flux bench``'s modes (flux_bench.cli lists this module)."""
    parser = modes.add_parser(
        "router", help="Search through a router over 4 shards vs a direct Search", description=__doc__
    )
    parser.add_argument("-n", "--count", type=int, default=20_000, help="vectors in all (default 20000)")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension (default 64)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per mode (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each mode (default 1)")
    parser.add_argument("--work-dir", type=Path, help="where the shard artifacts go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for name in ("count", "dim", "k"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be at least 1")
    if args.count < SHARDS:
        raise SystemExit(f"--count must be at least {SHARDS}")
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flux-bench-router-")))
        result = measure(args.count, args.dim, args.k, args.seconds, args.warmup, work)
    print_table(result, sys.stdout)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


def measure(count: int, dim: int, k: int, seconds: float, warmup: float, work: Path) -> dict[str, Any]:
    from flux_core.backend import Metric
    from flux_core.storage import builder
    from flux_core.storage.sharded import assign

    rng = np.random.default_rng(7)
    base = rng.standard_normal((count, dim), dtype=np.float32)
    queries = rng.standard_normal((256, dim), dtype=np.float32)
    ids = [f"item:{i:07d}" for i in range(count)]
    owner = assign(ids, SHARDS)
    paths = []
    for shard in range(SHARDS):
        mine = np.flatnonzero(owner == shard)
        path = work / f"shard-{shard}"
        builder.build(path, base[mine], [ids[i] for i in mine], backend="exact", metric=Metric.L2, name="items")
        paths.append(path)
    with _cluster(paths) as cluster:
        _check(cluster.router, base, queries[:8], ids, k)
        direct = _timed(cluster, [cluster.shards[0]], queries, k, seconds, warmup)
        fanout = _timed(cluster, cluster.shards, queries, k, seconds, warmup)
        routed = _timed(cluster, [cluster.router], queries, k, seconds, warmup)
    target = direct["p50_ms"] + TARGET_MS
    return {
        "count": count,
        "dim": dim,
        "k": k,
        "shards": SHARDS,
        "backend": "exact",
        "clients": 1,
        "direct": direct,
        "fanout": fanout,
        "router": routed,
        "overhead_p50_ms": routed["p50_ms"] - direct["p50_ms"],
        "router_over_fanout_p50_ms": routed["p50_ms"] - fanout["p50_ms"],
        "target": {"router_p50_ms_at_most": target, "direct_p50_plus_ms": TARGET_MS},
        "passed": routed["p50_ms"] <= target,
        # Where the shards share the router's cores, the fan-out alone costs every router the same:
        # what this router adds over it is its own hop, the target's share a router can answer for.
        "router_over_fanout_passed": routed["p50_ms"] - fanout["p50_ms"] <= TARGET_MS,
    }


class Cluster:
    """The shard servers and the router: their addresses, and the CPU time their processes spent so far."""

    def __init__(self, servers: list[ServerProcess], router: Child, address: str) -> None:
        self.servers, self.router_process = servers, router
        self.shards, self.router = [s.address for s in servers], address

    def cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far of this process (the client), the router's and the shards' together."""
        shards = sum(s.cpu_seconds() for s in self.servers)
        return time.process_time(), cpu_seconds(process_tree(self.router_process.pid)), shards


@contextlib.contextmanager
def _cluster(paths: list[Path]) -> Iterator[Cluster]:
    """The shard servers and a router over them, each in its own process."""
    servers: list[ServerProcess] = []
    router: Child | None = None
    try:
        for path in paths:
            servers.append(flux_server({"indexes": [{"name": "items", "path": str(path)}]}))
        shards = [s.address for s in servers]
        raw = {
            "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.5},
            "router": {"indexes": [{"name": "items", "shard_count": SHARDS, "shards": shards}]},
        }
        router = Child(_router_main, raw, name="flux-bench-router")
        yield Cluster(servers, router, router.recv(timeout=120))
    finally:
        if router is not None:
            router.close()
        for server in servers:
            server.close()


def _router_main(conn: Connection, raw: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    from flux import config as flux_config
    from flux.router.server import build_router

    router = build_router(flux_config.parse(raw, source="benchmark router config"))
    router.start()
    conn.send(router.address)
    with contextlib.suppress(EOFError):
        conn.recv()
    router.stop(grace=0)


def _request(vector: np.ndarray, k: int) -> pb.SearchRequest:
    data = np.ascontiguousarray(vector, dtype="<f4")
    return pb.SearchRequest(index="items", vector=types_pb2.FloatVectors(dimension=len(data), data=data.tobytes()), k=k)


def _check(router: str, base: np.ndarray, queries: np.ndarray, ids: list[str], k: int) -> None:
    """The router answers as a brute-force search over all the data (the shards are exact)."""
    with grpc.insecure_channel(router) as channel:
        stub = VectorServiceStub(channel)
        for query in queries:
            got = list(stub.Search(_request(query, k), timeout=30).neighbors.ids)
            distances = ((base - query) ** 2).sum(axis=1)
            want = [ids[i] for i in np.argsort(distances, kind="stable")[:k]]
            if set(got) != set(want):
                raise RuntimeError(f"the router answered {got}, brute force {want}")


def _timed(
    cluster: Cluster, targets: list[str], queries: np.ndarray, k: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """One client, one call at a time (to every target at once when there are several, all answered
    before the next): latency percentiles, calls per second and CPU time per call over ``seconds``."""
    requests = [_request(q, k) for q in queries]
    with contextlib.ExitStack() as stack:
        calls = [VectorServiceStub(stack.enter_context(grpc.insecure_channel(t))).Search for t in targets]
        pool = stack.enter_context(futures.ThreadPoolExecutor(max_workers=max(1, len(calls) - 1)))
        search = _all_at_once(calls, pool)
        end = time.perf_counter() + warmup
        n = 0
        while time.perf_counter() < end:
            search(requests[n % len(requests)])
            n += 1
        latencies: list[float] = []
        before = cluster.cpu()
        started = time.perf_counter()
        end = started + seconds
        while (now := time.perf_counter()) < end or not latencies:
            search(requests[len(latencies) % len(requests)])
            latencies.append(time.perf_counter() - now)
        elapsed = time.perf_counter() - started
        after = cluster.cpu()
    ms = np.array(latencies) * 1000
    cpu = [(b - a) * 1000 / len(latencies) for a, b in zip(before, after, strict=True)]
    return {
        "calls": len(latencies),
        "qps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_ms_per_call": {"client": cpu[0], "router": cpu[1], "shards": cpu[2]},
    }


def _all_at_once(calls: list[Callable[..., Any]], pool: futures.ThreadPoolExecutor) -> Callable[[Any], None]:
    """Sends a request to every target at once, as the router does (the last from this thread), and waits."""
    *others, last = calls

    def search(request: Any) -> None:
        sent = [pool.submit(call, request, timeout=30) for call in others]
        last(request, timeout=30)
        for future in sent:
            future.result()

    return search


def print_table(result: dict[str, Any], out: TextIO) -> None:
    print(
        f"{result['count']:,} vectors, dim {result['dim']}, k {result['k']}, exact backend, "
        f"{result['shards']} shards, 1 client",
        file=out,
    )
    print(
        f"{'mode':<32} {'calls':>8} {'qps':>9} {'p50 ms':>8} {'p99 ms':>8}  "
        f"{'CPU ms/call: client':>19} {'router':>7} {'shards':>7}",
        file=out,
    )
    shards = result["shards"]
    for name, key in (
        (f"direct (shard 0 of {shards})", "direct"),
        (f"fan-out ({shards} shards, no router)", "fanout"),
        (f"router ({shards} shards)", "router"),
    ):
        row, cpu = result[key], result[key]["cpu_ms_per_call"]
        print(
            f"{name:<32} {row['calls']:>8} {row['qps']:>9.1f} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}  "
            f"{cpu['client']:>19.3f} {cpu['router']:>7.3f} {cpu['shards']:>7.3f}",
            file=out,
        )
    verdict = "PASS" if result["passed"] else "FAIL"
    print(
        f"target: router p50 <= direct p50 + {TARGET_MS:g} ms: {result['router']['p50_ms']:.3f} <= "
        f"{result['target']['router_p50_ms_at_most']:.3f}  {verdict}",
        file=out,
    )
    own = "PASS" if result["router_over_fanout_passed"] else "FAIL"
    print(
        f"the router's own hop: router p50 - fan-out p50 <= {TARGET_MS:g} ms: "
        f"{result['router_over_fanout_p50_ms']:.3f}  {own}",
        file=out,
    )
