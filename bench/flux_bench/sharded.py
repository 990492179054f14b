"""``flux bench-sharded``: a sharded Beam build against `flux build` of the same data, on the same cores, in one run.

Both read the same .npy file (ids are the row numbers for both) and run as commands, as a user
runs them: `flux build` with one thread per CPU, and `flux-build-sharded` from the Beam
environment (.venv-beam: Beam cannot live beside the server, see the Makefile) on the DirectRunner's
batch engine with one worker process per CPU, each shard built with one thread. The two alternate
when repeated, so that machine noise hits both alike; the best time of each is kept. Wall-clock time
includes starting the process and reading the input, for both.

It also measures what one shard build needs in memory: a fresh process loads one shard's share of
the vectors and builds it (one thread), and its peak RSS is reported beside that of the same
process before the build. That is the figure docs/scale.md sizes workers with.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flux.cli import run_command
from flux.datasets import clustered
from flux_bench.procs import format_cpus, parse_cpus
from flux_core.backend import defaults, params_from_pairs
from flux_core.errors import FluxError
from flux_core.storage import artifact, registry, sharded

TARGET = 1.3  # the sharded Beam build may take at most this times as long as `flux build`
BEAM_COMMAND = Path(".venv-beam/bin/flux-build-sharded")

#: Peak RSS of a process, its own (VmHWM starts afresh at exec; getrusage's ru_maxrss would start from
#: this large process's at fork).
_PEAK = """
def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
"""

#: `flux build` in-process, then its peak RSS written to the file $FLUX_BENCH_PEAK.
_FLUX_BUILD = (
    _PEAK
    + """
import atexit, os, sys
atexit.register(lambda: open(os.environ["FLUX_BENCH_PEAK"], "w").write(str(peak())))
from flux.cli import main
sys.exit(main(["build", *sys.argv[1:]]))
"""
)

#: One shard's build in a fresh process: argv is the .npy file, rows, backend, params JSON, output folder.
_ONE_SHARD = (
    _PEAK
    + """
import json, sys
from pathlib import Path
import numpy as np
from flux_core.backend import Metric
from flux_core.storage import builder
path, rows, backend, params, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
vectors = np.ascontiguousarray(np.load(path, mmap_mode="r")[:rows], dtype=np.float32)
ids = [str(i) for i in range(rows)]
before = peak()
builder.build(Path(out), vectors, ids, backend=backend, metric=Metric.L2, name="shard", params=params, threads=1)
print(json.dumps({"before": before, "peak": peak()}))
"""
)


def add_parser(modes: Any) -> None:
    """Adds ``sharded`` to ``flux bench``'s modes, for when flux_bench.cli lists this module."""
    _arguments(modes.add_parser("sharded", help="sharded Beam build vs flux build", description=__doc__))


def main(argv: list[str]) -> int:
    """``flux bench-sharded ...`` (the ``flux.commands`` entry point)."""
    parser = argparse.ArgumentParser(prog="flux bench-sharded", description=__doc__)
    _arguments(parser)
    return run_command(parser.parse_args(argv), "flux bench-sharded")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=200_000, help="vectors (default: 200,000)")
    parser.add_argument("--dim", type=int, default=128, help="dimension (default: 128)")
    parser.add_argument("--shards", type=int, default=4, help="shards of the Beam build (default: 4)")
    parser.add_argument("--backend", default="hnsw", help="backend of both builds (default: hnsw)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="build parameter")
    parser.add_argument("--cpus", help="CPU set both builds run on, e.g. 0-1 (default: this process's)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternating, best kept (default: 1)")
    parser.add_argument(
        "--beam-command",
        type=Path,
        default=Path(os.environ.get("FLUX_BEAM_COMMAND", BEAM_COMMAND)),
        help=f"flux-build-sharded of the Beam environment (default: $FLUX_BEAM_COMMAND or {BEAM_COMMAND})",
    )
    parser.add_argument("--work-dir", type=Path, help="where the data and both builds go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/sharded.json"), help="JSON results file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.beam_command.exists():
        raise FluxError(
            f"{args.beam_command} is missing: `make install` makes the Beam environment (.venv-beam), "
            "or pass --beam-command"
        )
    cpus = sorted(parse_cpus(args.cpus)) if args.cpus else sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus)  # both builds, and every process they start, run on these CPUs
    backend_cls = registry.get(args.backend)
    params = {**defaults(backend_cls.build_params), **params_from_pairs(args.param)}
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="flux-bench-sharded-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _measure(args, cpus, params, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _measure(args: argparse.Namespace, cpus: list[int], params: dict[str, float], work: Path) -> int:
    print(f"generating {args.n:,} x {args.dim} clustered vectors", file=sys.stderr)
    data = work / "vectors.npy"
    np.save(data, clustered(args.n, args.dim, seed=0))
    param_args = [arg for name, value in params.items() for arg in ("-p", f"{name}={value:g}")]
    flux_runs: list[dict[str, Any]] = []
    beam_runs: list[dict[str, Any]] = []
    for attempt in range(1, args.repeat + 1):
        print(f"[{attempt}/{args.repeat}] flux build, {len(cpus)} threads ...", file=sys.stderr, flush=True)
        out, peak = work / f"flux-{attempt}", work / f"flux-{attempt}.peak"
        command = [sys.executable, "-c", _FLUX_BUILD, str(data), "--out", str(out), "--backend", args.backend]
        command += [*param_args, "--threads", str(len(cpus))]
        flux_runs.append(_timed(command, work / f"flux-{attempt}.log", {"FLUX_BENCH_PEAK": str(peak)}))
        flux_runs[-1]["peak_rss"] = int(peak.read_text())
        if artifact.read_manifest(out).count != args.n:
            raise FluxError(f"{out}: flux build did not hold {args.n} items")
        shutil.rmtree(out)

        print(
            f"[{attempt}/{args.repeat}] beam, {args.shards} shards, {len(cpus)} workers ...",
            file=sys.stderr,
            flush=True,
        )
        source, summary = work / f"beam-{attempt}", work / f"beam-{attempt}.json"
        command = [str(args.beam_command), str(data), "--out", str(source), "--version", "1"]
        command += [
            "--shards",
            str(args.shards),
            "--backend",
            args.backend,
            *param_args,
            "--summary-json",
            str(summary),
        ]
        command += ["--runner=FnApiRunner", "--direct_running_mode=multi_processing"]
        beam_runs.append(_timed([*command, f"--direct_num_workers={len(cpus)}"], work / f"beam-{attempt}.log"))
        built = sharded.read(source / "1")
        if built.count != args.n or len(built.shards) != args.shards:
            raise FluxError(f"{source}/1: the Beam build did not hold {args.n} items in {args.shards} shards")
        beam_runs[-1]["summary"] = json.loads(summary.read_text())
        shutil.rmtree(source)

    rows = args.n // args.shards
    print(f"one shard's build alone: {rows:,} x {args.dim}, 1 thread ...", file=sys.stderr, flush=True)
    one = subprocess.run(
        [sys.executable, "-c", _ONE_SHARD, str(data), str(rows), args.backend, json.dumps(params), str(work / "one")],
        capture_output=True,
        text=True,
        check=True,
    )
    shard_rss = json.loads(one.stdout)
    shard_rss["vectors_bytes"] = rows * args.dim * 4
    shard_rss["artifact_bytes"] = artifact.size_bytes(artifact.read_manifest(work / "one"))

    flux_best = min(flux_runs, key=lambda r: r["seconds"])
    beam_best = min(beam_runs, key=lambda r: r["seconds"])
    ratio = beam_best["seconds"] / flux_best["seconds"]
    result = {
        "n": args.n,
        "dim": args.dim,
        "shards": args.shards,
        "backend": args.backend,
        "params": params,
        "cpus": format_cpus(cpus),
        "repeat": args.repeat,
        "flux_build": {"seconds": flux_best["seconds"], "peak_rss_bytes": flux_best["peak_rss"], "runs": flux_runs},
        "beam": {
            "seconds": beam_best["seconds"],
            "pipeline_seconds": beam_best["summary"]["seconds"],
            "shard_peak_rss_bytes": beam_best["summary"]["metrics"]["shard_peak_rss_bytes"]["max"],
            "shard_added_rss_bytes": beam_best["summary"]["metrics"]["shard_added_rss_bytes"]["max"],
            "shard_build_seconds": beam_best["summary"]["metrics"].get("shard_build_seconds"),
            "runs": [{k: v for k, v in r.items() if k != "summary"} for r in beam_runs],
        },
        "one_shard": shard_rss,
        "ratio": ratio,
        "target": TARGET,
        "passed": ratio <= TARGET,
    }
    _print_table(result, len(cpus))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if result["passed"] else 1


def _timed(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` to its end, its output to ``log``; its wall-clock seconds."""
    with log.open("w") as out:
        started = time.perf_counter()
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        ).returncode
        seconds = time.perf_counter() - started
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise FluxError(f"{Path(command[0]).name} exited {code}: {' | '.join(tail)}")
    return {"seconds": seconds}


def _print_table(result: dict[str, Any], cpus: int) -> None:
    n, flux_build, beam = result["n"], result["flux_build"], result["beam"]
    params = ", ".join(f"{k}={v:g}" for k, v in result["params"].items())
    print(
        f"\nsharded Beam build vs flux build: {n:,} x {result['dim']}, {result['backend']} ({params}), "
        f"CPUs {result['cpus']}, best of {result['repeat']}"
    )
    print(f"{'build':<42} {'seconds':>8} {'vectors/s':>10} {'peak RSS MiB':>13}")
    added = beam["shard_added_rss_bytes"] / 2**20
    rows = [
        (f"flux build ({cpus} threads)", flux_build["seconds"], flux_build["peak_rss_bytes"], ""),
        (
            f"flux-build-sharded, {result['shards']} shards ({cpus} workers)",
            beam["seconds"],
            beam["shard_peak_rss_bytes"],
            f"  (a worker process building a shard; the build added {added:,.0f})",
        ),
    ]
    for label, seconds, peak, note in rows:
        print(f"{label:<42} {seconds:>8.1f} {n / seconds:>10,.0f} {peak / 2**20:>13,.0f}{note}")
    verdict = "PASS" if result["passed"] else "FAIL"
    print(f"ratio (sharded / flux build): {result['ratio']:.2f}  target <= {result['target']:.2f} {verdict}")
    one = result["one_shard"]
    print(
        f"one shard ({n // result['shards']:,} vectors, 1 thread) in a fresh process: peak RSS "
        f"{one['peak'] / 2**20:,.0f} MiB, {one['before'] / 2**20:,.0f} MiB before the build "
        f"(its vectors {one['vectors_bytes'] / 2**20:,.1f} MiB, its artifact {one['artifact_bytes'] / 2**20:,.1f} MiB)"
    )
