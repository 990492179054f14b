"""``flux bench client``: what the Python client itself costs per call, against the whole round trip.

The client's own work on a search is encoding (numpy vector to request bytes) and decoding
(response bytes to numpy ids and distances). This mode makes live calls to a Flux server in
another process, split into those steps: encode with exactly the functions
``FluxClient.search`` runs, send the bytes through a raw gRPC stub, decode with exactly
its functions, timing each step inside the running call loop (where caches are as cold as
in an application, not in a tight loop of its own). Alternated with them, the same queries
go through ``FluxClient.search`` itself; then the library searches the same index
in-process. The target: encode plus decode at most 10 % of the round trip.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from flux.datasets import clustered
from flux_bench.library import SWEEP_PARAM, Library
from flux_bench.servers import flux_server
from flux_core.backend import Metric
from flux_core.storage import builder

#: Encode plus decode, as a share of the round trip through FluxClient.search.
TARGET_SHARE = 0.10
_SEARCH = "/flux_api.v1.VectorService/Search"
_INDEX = "bench"
_QUERIES = 1000


@dataclass(frozen=True)
class Step:
    """One measured step, per call: median and mean in microseconds, and the median's share of the round trip."""

    name: str
    calls: int
    p50_us: float
    mean_us: float
    share: float


@dataclass(frozen=True)
class Latencies:
    """Per-call latencies in microseconds of each step, from one run."""

    encode: np.ndarray
    decode: np.ndarray
    raw_stub: np.ndarray  # the call between encode and decode: bytes in, bytes out
    flux_client: np.ndarray
    library: np.ndarray
    param: str
    value: float


def add_parser(modes: Any) -> None:
    parser = modes.add_parser(
        "client",
        help="the Python client's encode + decode cost against the round trip (table, JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dimension", type=int, default=128, help="vector dimension (default: 128)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--count", type=int, default=10_000, help="items in the index (default: 10,000)")
    parser.add_argument("--calls", type=int, default=3000, help="round trips per way of calling (default: 3,000)")
    parser.add_argument("--backend", default="hnsw", choices=sorted(SWEEP_PARAM), help="index backend (default: hnsw)")
    parser.add_argument("--library-seconds", type=float, default=2.0, help="length of the library run (default: 2)")
    parser.add_argument("--json", type=Path, default=Path("var/bench/client.json"), help="results file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.dimension < 1 or args.k < 1 or args.count < args.k or args.calls < 10:
        raise SystemExit("flux bench client: need --dimension >= 1, -k >= 1, --count >= k and --calls >= 10")
    measured = _measure(args)
    round_trip = float(np.median(measured.flux_client))
    client_side = float(np.median(measured.encode) + np.median(measured.decode))
    steps = [
        _step("encode: numpy vector -> request bytes", measured.encode, round_trip),
        _step("decode: response bytes -> numpy ids, distances", measured.decode, round_trip),
        Step(
            "client side: encode + decode",
            len(measured.encode),
            round(client_side, 2),
            round(float(np.mean(measured.encode) + np.mean(measured.decode)), 2),
            round(client_side / round_trip, 4),
        ),
        _step("round trip: FluxClient.search", measured.flux_client, round_trip),
        _step("round trip: raw stub, between encode and decode", measured.raw_stub, round_trip),
        _step(f"library in-process: {args.backend} search", measured.library, round_trip),
    ]
    ratios = {
        "client_share": round(client_side / round_trip, 4),
        "flux_client_over_raw_stub": round(1 - float(np.median(measured.raw_stub)) / round_trip, 4),
        "round_trip_over_library": round(round_trip / float(np.median(measured.library)), 2),
    }
    passed = ratios["client_share"] <= TARGET_SHARE
    print(
        f"\nflux bench client: {args.dimension}-d queries, k={args.k}, {args.backend} over {args.count:,} items "
        f"({measured.param}={measured.value:g}), one caller, the server in another process\n"
    )
    _print_table(steps)
    print(
        f"\n  {'PASS' if passed else 'FAIL'}  encode + decode = {100 * ratios['client_share']:.1f} % of the round trip "
        f"(target <= {100 * TARGET_SHARE:.0f} %)\n"
        f"        FluxClient.search over the raw stub: {100 * ratios['flux_client_over_raw_stub']:+.1f} % "
        "of the round trip (all of the client's Python, gRPC's included)\n"
        f"        round trip / in-process library search: {ratios['round_trip_over_library']:.1f}x"
    )
    result = {
        "command": "flux " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "environment": _environment(),
        "settings": {
            "dimension": args.dimension,
            "k": args.k,
            "count": args.count,
            "backend": args.backend,
            measured.param: measured.value,
            "calls": args.calls,
        },
        "steps": [asdict(s) for s in steps],
        "ratios": ratios,
        "target": {"name": "client_share", "bound": f"<= {TARGET_SHARE}", "passed": passed},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")
    return 0 if passed else 1


def _measure(args: argparse.Namespace) -> Latencies:
    """Build an index, serve it from another process, and time each step against it."""
    from flux_api.v1 import vector_service_pb2
    from flux_client import FluxClient, _codec  # _codec: the very functions FluxClient.search runs

    k = args.k
    data = clustered(args.count + _QUERIES, args.dimension, seed=11)
    base, queries = data[: args.count], data[args.count :]
    _progress(f"building a {args.backend} index of {args.count:,} x {args.dimension}")
    with tempfile.TemporaryDirectory(prefix="flux-bench-client-") as tmp:
        artifact = Path(tmp) / _INDEX
        ids = [f"item:{i:07d}" for i in range(args.count)]
        builder.build(artifact, base, ids, backend=args.backend, metric=Metric.L2, name=_INDEX, version=1, threads=2)
        server = flux_server({"indexes": [{"name": _INDEX, "path": str(artifact)}]})
        with contextlib.ExitStack() as stack:
            stack.callback(server.close)
            client = stack.enter_context(FluxClient(server.address, timeout=10.0))
            param = SWEEP_PARAM[args.backend]
            value = client.describe(_INDEX).default_search_params[param]
            raw = stack.enter_context(grpc.insecure_channel(server.address)).unary_unary(_SEARCH)
            clock = time.perf_counter_ns
            steps = np.empty((args.calls, 3))
            flux_ns = np.empty(args.calls)

            def decomposed(i: int) -> None:
                start = clock()
                body = _codec.search_request(_INDEX, _codec.as_matrix(queries[i % _QUERIES], "vectors"), k, None)
                request = body.SerializeToString()
                sent = clock()
                answer = raw(request, timeout=10.0)
                received = clock()
                _codec.result(vector_service_pb2.SearchResponse.FromString(answer), k)
                steps[i] = (sent - start, received - sent, clock() - received)

            def whole(i: int) -> None:
                start = clock()
                client.search(_INDEX, queries[i % _QUERIES], k)
                flux_ns[i] = clock() - start

            for i in range(min(args.calls, 300)):  # warm both sides up
                decomposed(i)
                whole(i)
            _progress(f"{args.calls:,} calls split into encode, round trip and decode; as many FluxClient.search")
            for i in range(args.calls):  # alternate which goes first: the first of two wakes the server up
                for call in (decomposed, whole) if i % 2 == 0 else (whole, decomposed):
                    call(i)
        _progress(f"the library in-process: {args.backend} with {param}={value:g}, one thread")
        library = Library(args.backend, artifact, args.dimension, "l2", queries)
        try:
            library_us = library.single(value, k, args.library_seconds, threads=1).latencies_ms * 1000
        finally:
            library.close()
    steps /= 1000
    return Latencies(steps[:, 0], steps[:, 2], steps[:, 1], flux_ns / 1000, library_us, param, value)


def _step(name: str, latencies_us: np.ndarray, round_trip_us: float) -> Step:
    p50 = float(np.median(latencies_us))
    mean = float(np.mean(latencies_us))
    return Step(name, len(latencies_us), round(p50, 2), round(mean, 2), round(p50 / round_trip_us, 4))


def _print_table(steps: Sequence[Step]) -> None:
    header = f"{'step':<50} {'calls':>7} {'p50 µs':>9} {'mean µs':>9} {'p50 / round trip':>17}"
    print(header)
    print("-" * len(header))
    for s in steps:
        print(f"{s.name:<50} {s.calls:>7,} {s.p50_us:>9.1f} {s.mean_us:>9.1f} {100 * s.share:>15.1f} %")


def _environment() -> dict[str, Any]:
    from importlib.metadata import version

    from google.protobuf.internal import api_implementation

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "protobuf_backend": api_implementation.Type(),
        "packages": {name: version(name) for name in ("grpcio", "protobuf", "numpy", "flux-client")},
    }


def _progress(message: str) -> None:
    print(f"[bench client] {message}", file=sys.stderr, flush=True)
