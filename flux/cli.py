"""The ``flux`` command: serve, build, inspect, query, health."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Never

import numpy as np
import numpy.typing as npt

from flux import __version__, logs, remote
from flux_core.backend import Metric, Progress, params_from_pairs
from flux_core.errors import FluxError

if TYPE_CHECKING:
    from flux_client import FluxClient

log = logging.getLogger("flux")


#: Entry point group of commands other distributions add to ``flux`` (``flux bench`` from flux-bench):
#: each names a ``main(argv) -> int`` that parses the arguments after the command's name.
COMMANDS_GROUP = "flux.commands"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    added = _added_commands()
    if argv and argv[0] in added:  # loaded only when asked for: `flux serve` imports none of them
        run: Callable[[list[str]], int] = added[argv[0]].load()
        return int(run(argv[1:]))
    args = _parser(added).parse_args(argv)
    return run_command(args, f"flux {args.command}")


def run_command(args: argparse.Namespace, name: str) -> int:
    """Run a parsed command (``args.run``) with logging set up; a FluxError is one line naming ``name``, exit 2."""
    logs.configure_command()  # Flux's records at $FLUX_LOG_LEVEL, other libraries' at WARNING
    try:
        return int(args.run(args))
    except FluxError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _added_commands() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def _parser(added: dict[str, EntryPoint]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flux", description="Flux: gRPC nearest-neighbour serving.")
    parser.add_argument("--version", action="version", version=f"flux {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server", description=_cmd_serve.__doc__)
    serve.add_argument("--config", type=Path, help="YAML config; without one, serve the built-in demo index")
    serve.add_argument("--host", help="address to listen on (overrides the config)")
    serve.add_argument("--port", type=int, help="port to listen on, 0 for any free one (overrides the config)")
    serve.add_argument(
        "--workers", type=int, help="server processes sharing the port (overrides server.workers in the config)"
    )
    serve.add_argument(
        "--demo-dir", type=Path, default=Path("var"), help="where the demo index is built (default: ./var)"
    )
    serve.add_argument("--log-format", choices=["text", "json"], help="log format (overrides logging.format)")
    serve.add_argument(
        "--log-requests", action="store_true", default=None, help="log one record per call (logging.requests)"
    )
    serve.set_defaults(run=_cmd_serve)

    build = commands.add_parser("build", help="build an index artifact from vectors", description=_cmd_build.__doc__)
    build.add_argument(
        "vectors", type=Path, help=".npy matrix, .fvecs file, or .jsonl of {id, vector[, restricts, crowding_tag]}"
    )
    build.add_argument("--out", type=Path, required=True, help="artifact directory to create (must not exist)")
    build.add_argument("--backend", default="hnsw", help="backend name (default: hnsw)")
    build.add_argument("--metric", default="l2", choices=[m.value for m in Metric], help="distance (default: l2)")
    build.add_argument("--ids", type=Path, help="text file with one id per line (default: row numbers)")
    build.add_argument("--name", help="index name recorded in the manifest (default: the --out folder name)")
    build.add_argument("--version", type=int, default=1, dest="index_version", help="index version (default: 1)")
    build.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="build parameter")
    build.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads (default: all CPUs)")
    build.set_defaults(run=_cmd_build)

    inspect = commands.add_parser(
        "inspect",
        help="verify an artifact or a sharded version and print its manifest",
        description=_cmd_inspect.__doc__,
    )
    inspect.add_argument("artifact", type=Path, help="an artifact folder, or a sharded version's folder")
    inspect.add_argument("--json", action="store_true", help="print JSON (manifest and stats)")
    inspect.set_defaults(run=_cmd_inspect)

    query = commands.add_parser("query", help="ask a running server for neighbours", description=_cmd_query.__doc__)
    remote.add_options(query, timeout=5.0)
    query.add_argument("--index", default="demo", help="index name (default: demo)")
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--id", help="neighbours of this stored item")
    what.add_argument("--vector", help="comma-separated floats")
    what.add_argument("--vector-file", type=Path, help=".npy file holding one vector")
    what.add_argument("--random", action="store_true", help="a random query vector (seeded by --seed)")
    query.add_argument("--seed", type=int, default=0)
    query.add_argument("-k", type=int, default=10, help="neighbours to return (default: 10)")
    query.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="search parameter")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.set_defaults(run=_cmd_query)

    health = commands.add_parser(
        "health",
        help="print a running server's health",
        description=_cmd_health.__doc__,
        epilog="With auth on, the health of one index needs a token: set FLUX_TOKEN.",
    )
    remote.add_options(health, timeout=5.0)
    health.add_argument("--service", default="", help="health service name; '' is the whole server")
    health.set_defaults(run=_cmd_health)

    from flux.backends_cli import add_parser as add_backends_command
    from flux.ops_cli import add_parsers as add_ops_commands
    from flux.versions_cli import add_parsers as add_version_commands

    add_version_commands(commands)
    add_ops_commands(commands)
    add_backends_command(commands)
    for name, entry in sorted(added.items()):  # listed in the help; `flux NAME --help` asks the command itself
        source = entry.dist.name if entry.dist is not None else entry.value
        commands.add_parser(name, help=f"(from {source}; `flux {name} --help`)", add_help=False)
    return parser


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve the indexes of a config file until SIGTERM or SIGINT, then drain and exit 0."""
    from flux import config as flux_config
    from flux import demo
    from flux.binding import EXIT_CANNOT_BIND, CannotBind
    from flux.process import serve

    if args.config:
        config = flux_config.load(args.config)
    else:
        log.info("no --config given: serving the built-in demo index from %s", args.demo_dir / demo.NAME)
        # FLUX_SECTION__KEY overrides apply to the demo's config as to a file's (the flags below win).
        config = flux_config.with_environment(demo.config(args.demo_dir), source="built-in demo config")
    overrides = {
        k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None
    }
    if overrides:
        config = config.model_copy(update={"server": config.server.model_copy(update=overrides)})
    logging_overrides = {
        k: v for k, v in (("format", args.log_format), ("requests", args.log_requests)) if v is not None
    }
    if logging_overrides:
        config = config.model_copy(update={"logging": config.logging.model_copy(update=logging_overrides)})
    try:
        return serve(config)
    except CannotBind as exc:  # one line naming the address, and an exit code of its own (docs/operations.md)
        print(f"flux serve: {exc.message}", file=sys.stderr)
        return EXIT_CANNOT_BIND


def _cmd_build(args: argparse.Namespace) -> int:
    """Build an index artifact from a vector file, ready for `flux serve`."""
    from flux import datasets
    from flux_core.storage import artifact, builder

    started = time.perf_counter()
    vectors, ids, attributes = datasets.load_items(args.vectors)
    if args.ids:
        ids = datasets.load_ids(args.ids)
    name = args.name or args.out.name
    print(
        f"building {name!r}: {len(vectors)} x {vectors.shape[1]} with {args.backend} ({args.metric})", file=sys.stderr
    )
    manifest = builder.build(
        args.out,
        vectors,
        ids,
        backend=args.backend,
        metric=Metric(args.metric),
        name=name,
        version=args.index_version,
        params=params_from_pairs(args.param),
        threads=args.threads,
        progress=_progress_bar(),
        attributes=attributes,
    )
    elapsed = time.perf_counter() - started
    size = artifact.size_bytes(manifest)
    print(
        f"built {args.out}: {manifest.count} items, version {manifest.version}, "
        f"{size / 2**20:.1f} MiB, {elapsed:.1f}s ({manifest.count / max(elapsed, 1e-9):,.0f} vectors/s)",
        file=sys.stderr,
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Verify every checksum of an artifact, open it with its backend, and print the manifest and stats.

    A sharded version's folder (sharded.json) has every shard verified and opened, and its sharding
    checked: each shard holds exactly the ids the sharding function sends to it."""
    from flux_core.storage import artifact, sharded

    if sharded.is_sharded(args.artifact) and not (args.artifact / artifact.MANIFEST).is_file():
        return _inspect_sharded(args)
    loaded = artifact.load(args.artifact)
    manifest = loaded.manifest
    stats = {"items": len(loaded.backend), "artifact_bytes": artifact.size_bytes(manifest), **loaded.backend.stats()}
    if args.json:
        print(json.dumps({"manifest": json.loads(manifest.to_json()), "stats": stats}, indent=2))
        return 0
    print(f"{args.artifact}: {manifest.name} version {manifest.version}, verified")
    for key in ("backend", "library", "metric", "dimension", "count", "created_at", "format_version"):
        value = getattr(manifest, key)
        print(f"  {key:<15} {getattr(value, 'value', value)}")
    print(f"  {'build_params':<15} {json.dumps(manifest.build_params)}")
    print("  files")
    for name, described in sorted(manifest.files.items()):
        print(f"    {name:<20} {described['bytes']:>12,} bytes  sha256 {described['sha256'][:16]}...")
    print("  stats")
    for key, value in stats.items():
        print(f"    {key:<20} {value:,}" if isinstance(value, int) else f"    {key:<20} {value}")
    return 0


def _inspect_sharded(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from flux_core.storage import sharded

    manifest = sharded.read(args.artifact)
    reports = sharded.verify(args.artifact, manifest, open_shards=True)
    if args.json:
        shards = [asdict(report) for report in reports]
        print(json.dumps({"sharded": json.loads(manifest.to_json()), "shards": shards}, indent=2))
        return 0
    how = manifest.sharding
    print(f"{args.artifact}: {manifest.name} version {manifest.version}, sharded, {how.shards} shards verified")
    for key in ("backend", "library", "metric", "dimension", "count", "created_at", "format_version"):
        value = getattr(manifest, key)
        print(f"  {key:<15} {getattr(value, 'value', value)}")
    print(f"  {'sharding':<15} {how.function} of the {how.key} into {how.shards} shards; every id is in its shard")
    print(f"  {'build_params':<15} {json.dumps(manifest.build_params)}")
    print(f"  {'built_by':<15} {json.dumps(manifest.built_by)}")
    print("  shards")
    for shard, report in zip(manifest.shards, reports, strict=True):
        opened = int((report.stats or {}).get("items", 0))
        print(
            f"    {shard.path:<22} {shard.count:>12,} items {shard.bytes:>14,} bytes  "
            f"manifest sha256 {shard.manifest_sha256[:16]}...  verified, opened with {opened:,} items"
        )
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    """Ask a running server for the neighbours of a vector or a stored item; print a table."""
    from flux_client import FluxError as ClientError

    try:
        with remote.connect(args) as client:
            params = params_from_pairs(args.param, example="ef=128")
            if args.id is not None:
                result = client.search_by_id(args.index, args.id, args.k, params=params)
            else:
                if args.random:
                    vector = _random_query(client, args.index, args.seed)
                elif args.vector_file:
                    vector = np.load(args.vector_file, allow_pickle=False).astype(np.float32).ravel()
                else:
                    vector = np.array([float(v) for v in args.vector.split(",")], dtype=np.float32)
                result = client.search(args.index, vector, args.k, params=params)
    except (ClientError, ValueError, OSError) as exc:
        return remote.fail("query", exc)
    rows = [(i, d) for i, d in zip(result.ids.tolist(), result.distances.tolist(), strict=True) if i]
    if args.json:
        print(
            json.dumps(
                {
                    "index": result.index,
                    "version": result.version,
                    "neighbors": [{"id": i, "distance": d} for i, d in rows],
                }
            )
        )
        return 0
    print(f"index {result.index} version {result.version}: {len(rows)} neighbours")
    width = max([len("id"), *(len(i) for i, _ in rows)])
    print(f"{'rank':>4}  {'id':<{width}}  distance")
    for rank, (item, distance) in enumerate(rows, 1):
        print(f"{rank:>4}  {item:<{width}}  {distance:.6f}")
    return 0


def _random_query(client: FluxClient, index: str, seed: int) -> npt.NDArray[np.float32]:
    """A random vector of ``index``'s dimension (reader role); an index that is not serving has none: say why."""
    from flux_client import PermissionDenied

    info = client.describe_index(index)
    if info.state != "serving":
        try:
            why = client.describe(index).error  # the admin role sees the load error
        except PermissionDenied:
            why = "the admin role is shown the reason"
        raise ValueError(f"index {index!r} is {info.state}, so there is no dimension to draw a vector for: {why}")
    return np.random.default_rng(seed).standard_normal(info.dimension).astype(np.float32)


def _cmd_health(args: argparse.Namespace) -> int:
    """Print SERVING or NOT_SERVING for the server (or one service, e.g. flux.index.demo); exit 0 only when SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with remote.connect(args) as client:
            response = health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"flux health: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        return remote.fail("health", exc)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _progress_bar() -> Progress:
    from tqdm import tqdm

    bars: list[tqdm[Never]] = []  # created on the first report, when the total is known

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="vec", unit_scale=True, file=sys.stderr, disable=None, desc="indexing"))
        bars[0].update(done - bars[0].n)
        if done >= total:
            bars[0].close()

    return update
