"""``flux-build-sharded`` (also ``python -m flux_beam build``): build and publish a sharded version.

Everything this command does not know is a Beam pipeline option and goes to the runner as it is
(``--runner DataflowRunner --project ... --region ...``, ``--runner FlinkRunner --flink_master ...``).
Without ``--runner`` it runs on this machine on every core: the DirectRunner's batch engine
(``FnApiRunner``) with one worker process per CPU (``--direct_running_mode multi_processing``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from flux_beam.io import BLOCK_ROWS, FORMATS, Columns, ReadEmbeddings
from flux_beam.metrics import NAMESPACE
from flux_beam.pipeline import BuildShardedVersion
from flux_core.backend import Metric, params_from_pairs
from flux_core.errors import FluxError
from flux_core.storage import artifact, sharded

PROG = "flux-build-sharded"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Build a sharded index version with Apache Beam and publish it: N shards, each a Flux "
        "artifact, and sharded.json naming them, written last.",
        epilog="Any other option is a Beam pipeline option (--runner, --project, --temp_location, "
        "--setup_file, --direct_num_workers, ...); docs/scale.md shows Dataflow, Flink and Spark.",
    )
    p.add_argument("input", help="a path or glob of .parquet, .jsonl or .npy files (local, gs://, s3://, ...)")
    p.add_argument("--out", required=True, help="the index's source folder; the version goes to OUT/VERSION")
    p.add_argument("--version", type=int, required=True, dest="index_version", help="the version to publish")
    p.add_argument("--shards", type=int, required=True, help="how many shards")
    p.add_argument("--name", help="index name recorded in the manifests (default: the --out folder's name)")
    p.add_argument("--backend", default="hnsw", help="any installed backend (default: hnsw)")
    p.add_argument("--metric", default="l2", choices=[m.value for m in Metric], help="distance (default: l2)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="build parameter")
    p.add_argument("--threads-per-shard", type=int, default=1, help="threads each shard build uses (default: 1)")
    p.add_argument("--format", choices=FORMATS, help="input format (default: from the file suffix)")
    p.add_argument("--id-column", default="id", help="Parquet column or JSON key of the ids (default: id)")
    p.add_argument("--vector-column", default="vector", help="... of the vectors (default: vector)")
    p.add_argument("--restricts-column", help="... of the restricts (default: restricts, when present)")
    p.add_argument("--crowding-column", help="... of the crowding tags (default: crowding_tag, when present)")
    p.add_argument("--shard-key", metavar="COLUMN", help="shard by this column's value instead of the id")
    p.add_argument("--block-rows", type=int, default=BLOCK_ROWS, help=f"items per block (default: {BLOCK_ROWS})")
    p.add_argument("--summary-json", help="also write the summary (metrics, shards, seconds) to this local file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=os.environ.get("FLUX_LOG_LEVEL", "WARNING"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _build(args, beam_args)
    except FluxError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _build(args: argparse.Namespace, beam_args: list[str]) -> int:
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(_local_defaults(beam_args))
    FileSystems.set_options(options)  # filesystems with options (gs://, s3://) read them on this side too
    final = FileSystems.join(args.out, str(args.index_version))
    for held in (sharded.MANIFEST, artifact.MANIFEST):
        if FileSystems.exists(FileSystems.join(final, held)):
            raise FluxError(f"{final} is a published version already; versions are immutable, build a new one")
    columns = Columns(
        id=args.id_column,
        vector=args.vector_column,
        restricts=args.restricts_column,
        crowding=args.crowding_column,
        key=args.shard_key,
    )
    build = BuildShardedVersion(
        args.out,
        name=args.name or os.path.basename(args.out.rstrip("/")),
        version=args.index_version,
        shards=args.shards,
        backend=args.backend,
        metric=args.metric,
        params=params_from_pairs(args.param),
        threads=args.threads_per_shard,
        shard_key=args.shard_key,
    )
    started = time.perf_counter()
    print(
        f"{PROG}: building {build.spec.name!r} version {args.index_version} in {args.shards} shards with "
        f"{args.backend} on {options.view_as(StandardOptions).runner} (run {build.spec.run})",
        file=sys.stderr,
    )
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "Read embeddings"
        >> ReadEmbeddings(args.input, format=args.format, columns=columns, block_rows=args.block_rows)
        | "Build sharded version" >> build
    )
    try:
        result = pipeline.run()  # local runners run the whole pipeline here
        state = result.wait_until_finish()
    except Exception as exc:  # the runner's error carries the worker's traceback; show its last word
        print(f"{PROG}: the pipeline failed: {_reason(exc)}", file=sys.stderr)
        return 1
    if str(state) not in ("DONE", "PipelineState.DONE"):
        print(f"{PROG}: the pipeline ended {state}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    manifest = sharded.ShardedManifest.from_json(_read(FileSystems.join(build.spec.final, sharded.MANIFEST)))
    summary = _summary(result, manifest, build.spec.final, seconds)
    _print_summary(summary)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
    return 0


def _local_defaults(beam_args: list[str]) -> list[str]:
    """Without --runner: the DirectRunner's batch engine, one worker process per CPU. (Naming FnApiRunner
    skips the DirectRunner's first attempt, which downloads the Prism runner.)"""
    if any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args):
        return beam_args
    defaults = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing"]
    if not any(arg.startswith("--direct_num_workers") for arg in beam_args):
        defaults.append(f"--direct_num_workers={len(os.sched_getaffinity(0))}")
    return [*defaults, *beam_args]


def _read(path: str) -> str:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return bytes(fh.read()).decode("utf-8")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    found = re.findall(r"flux_core\.errors\.\w+: ([^\n]+)", text)
    if found:
        return str(found[-1])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else repr(exc)


def _summary(result: Any, manifest: sharded.ShardedManifest, final: str, seconds: float) -> dict[str, Any]:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    metrics: dict[str, Any] = {}
    for counter in found["counters"]:
        metrics[counter.key.metric.name] = metrics.get(counter.key.metric.name, 0) + _value(counter)
    for dist in found["distributions"]:
        value = _value(dist)
        if value is not None and value.count:
            metrics[dist.key.metric.name] = {"count": value.count, "min": value.min, "max": value.max, "sum": value.sum}
    return {
        "version": final,
        "name": manifest.name,
        "number": manifest.version,
        "backend": manifest.backend,
        "items": manifest.count,
        "bytes": manifest.bytes,
        "seconds": round(seconds, 3),
        "shards": [{"path": s.path, "count": s.count, "bytes": s.bytes} for s in manifest.shards],
        "metrics": metrics,
        "run": manifest.built_by.get("run", ""),
    }


def _value(metric: Any) -> Any:
    return metric.committed if metric.committed is not None else metric.attempted


def _print_summary(summary: dict[str, Any]) -> None:
    metrics = summary["metrics"]
    print(
        f"published {summary['name']!r} version {summary['number']} at {summary['version']}: "
        f"{len(summary['shards'])} shards, {summary['items']:,} items, {summary['bytes'] / 2**20:.1f} MiB, "
        f"{summary['seconds']:.1f}s ({summary['items'] / max(summary['seconds'], 1e-9):,.0f} vectors/s)"
    )
    print(f"  items read      {metrics.get('items_read', 0):,}")
    print(f"  shards built    {metrics.get('shards_built', 0):,}")
    print(f"  bytes written   {metrics.get('bytes_written', 0):,}")
    rss, added = metrics.get("shard_peak_rss_bytes"), metrics.get("shard_added_rss_bytes")
    if rss and added:
        print(
            f"  shard peak RSS  {rss['max'] / 2**20:,.0f} MiB in the largest worker process, of which the build "
            f"added up to {added['max'] / 2**20:,.0f} MiB to what held the shard's items"
        )
    build = metrics.get("shard_build_seconds")
    if build:
        print(f"  shard builds    {build['min']}s to {build['max']}s each")
    print(f"  {'shard':<22} {'items':>12} {'MiB':>9}")
    for shard in summary["shards"]:
        print(f"  {shard['path']:<22} {shard['count']:>12,} {shard['bytes'] / 2**20:>9.1f}")
