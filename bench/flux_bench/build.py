"""``flux bench build``: `flux build` throughput against the raw library with the same parameters and threads.

Flux's build adds what serving needs on top of the library call: chunked inserts for
progress, saving, the ids, a SHA-256 of every file and an fsync. This measures what
that costs, in one run, alternating the two so that machine noise hits both alike.

Any installed backend can be measured. hnsw and annoy are compared with their library called
directly; any other backend with its own ``build`` and ``save`` (the plugin alone, without
what Flux adds around it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flux.datasets import clustered
from flux_core.backend import Metric, defaults
from flux_core.storage import builder, registry

TARGET = 0.90  # Flux's build throughput must be at least this share of the library's


def add_parser(modes: Any) -> None:
    parser = modes.add_parser("build", help="flux build throughput vs the raw library", description=__doc__)
    parser.add_argument(
        "--backend",
        action="append",
        choices=registry.names(),
        help="any installed backend, repeatable (default: hnsw and annoy)",
    )
    parser.add_argument("-n", type=int, default=200_000, help="vectors (default: 200,000)")
    parser.add_argument("--dim", type=int, default=128, help="dimension (default: 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads (default: all CPUs)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best kept (default: 2)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/build.json"), help="JSON results file")
    parser.set_defaults(run=run)


def _raw_hnsw(vectors: np.ndarray, params: dict[str, float], threads: int, folder: Path) -> None:
    import hnswlib

    index = hnswlib.Index(space="l2", dim=vectors.shape[1])
    index.init_index(
        max_elements=len(vectors),
        M=int(params["M"]),
        ef_construction=int(params["ef_construction"]),
        random_seed=int(params["seed"]),
    )
    index.add_items(vectors, np.arange(len(vectors)), num_threads=threads)
    index.save_index(str(folder / "index.hnsw"))


def _raw_annoy(vectors: np.ndarray, params: dict[str, float], threads: int, folder: Path) -> None:
    from annoy import AnnoyIndex

    index = AnnoyIndex(vectors.shape[1], "euclidean")
    index.set_seed(int(params["seed"]))
    for label, row in enumerate(vectors):
        index.add_item(label, row)
    index.build(int(params["n_trees"]), n_jobs=threads)
    index.save(str(folder / "index.ann"))


RAW: dict[str, Callable[[np.ndarray, dict[str, float], int, Path], None]] = {"hnsw": _raw_hnsw, "annoy": _raw_annoy}


def _backend_alone(backend: str) -> Callable[[np.ndarray, dict[str, float], int, Path], None]:
    """The baseline of a backend without a raw-library build here: its own ``build`` and ``save``."""
    backend_cls = registry.get(backend)

    def build_and_save(vectors: np.ndarray, params: dict[str, float], threads: int, folder: Path) -> None:
        backend_cls.build(vectors, Metric.L2, params, threads=threads).save(folder)

    return build_and_save


def _timed(work: Callable[[Path], object]) -> float:
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-build-"))
    try:
        started = time.perf_counter()
        work(folder)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    backends = args.backend or ["hnsw", "annoy"]
    print(f"generating {args.n:,} x {args.dim} clustered vectors", file=sys.stderr)
    vectors = clustered(args.n, args.dim, seed=0)
    ids = [f"item:{i}" for i in range(args.n)]
    rows = []
    for backend in backends:
        params = defaults(registry.get(backend).build_params)
        baseline = RAW.get(backend) or _backend_alone(backend)
        library, flux = [], []

        def library_build(
            folder: Path, baseline: Callable[..., None] = baseline, params: dict[str, float] = params
        ) -> None:
            baseline(vectors, params, args.threads, folder)

        def flux_build(folder: Path, backend: str = backend, params: dict[str, float] = params) -> None:
            builder.build(
                folder / "artifact",
                vectors,
                ids,
                backend=backend,
                metric=Metric.L2,
                name="bench",
                params=params,
                threads=args.threads,
            )

        for attempt in range(1, args.repeat + 1):
            print(f"[{backend} {attempt}/{args.repeat}] library build ...", file=sys.stderr, flush=True)
            library.append(_timed(library_build))
            print(f"[{backend} {attempt}/{args.repeat}] flux build ...", file=sys.stderr, flush=True)
            flux.append(_timed(flux_build))
        ratio = min(library) / min(flux)
        rows.append(
            {
                "backend": backend,
                "baseline": "library" if backend in RAW else "backend build and save",
                "params": params,
                "threads": args.threads,
                "library_seconds": min(library),
                "flux_seconds": min(flux),
                "library_vectors_per_second": args.n / min(library),
                "flux_vectors_per_second": args.n / min(flux),
                "ratio": ratio,
                "target": TARGET,
                "passed": ratio >= TARGET,
            }
        )
    _print_table(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n": args.n, "dim": args.dim, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r["passed"] for r in rows) else 1


def _print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nflux build vs library build: {args.n:,} x {args.dim}, {args.threads} threads, best of {args.repeat}")
    width = max([8, *(len(r["backend"]) for r in rows)])
    print(
        f"{'backend':<{width}} {'library s':>10} {'flux s':>8} {'library vec/s':>14} {'flux vec/s':>11} {'ratio':>6}  "
        "target"
    )
    for r in rows:
        verdict = "PASS" if r["passed"] else "FAIL"
        print(
            f"{r['backend']:<{width}} {r['library_seconds']:>10.2f} {r['flux_seconds']:>8.2f} "
            f"{r['library_vectors_per_second']:>14,.0f} {r['flux_vectors_per_second']:>11,.0f} "
            f"{r['ratio']:>6.2f}  >= {r['target']:.2f} {verdict}"
            + ("" if r["baseline"] == "library" else f"  (library: {r['baseline']})")
        )
