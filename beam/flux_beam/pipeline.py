"""``BuildShardedVersion``: blocks of items in, one published sharded version out.

The steps (each a Beam step, so any runner spreads them over its workers):

1. **Assign shards**: every item goes to shard ``sha256-mod(key) % shards`` (``flux_core.storage.sharded``),
   its key being its id or the shard-key column; blocks are split by shard, not items one by one.
2. **Group** the pieces of each shard on one worker (every shard number is seeded, so a shard that
   receives no item is still built, empty).
3. **Build each shard** on its worker with ``flux_core.storage.builder`` and whichever backend the
   registry finds by name (an installed plugin as much as hnsw), into a local temporary folder, then
   copy the artifact through Beam's filesystems into a staging folder that no reader looks at:
   ``<out>/.<version>.sharded-<run>/<attempt>/shard-00002-of-00004/``. Every attempt writes a folder
   of its own, so a retried or speculative attempt never mixes its files with another's.
4. **Publish**, once every shard is built: move the winning attempts' files to
   ``<out>/<version>/shard-.../``, check their sizes, and write ``<out>/<version>/sharded.json``
   last, as one object renamed into place. Until then the version folder holds no manifest and is
   no version; a run killed at any point leaves nothing visible, and the next run of the same
   version clears what it left (staging folders and unpublished shards) and publishes.

Metrics (namespace ``flux``): ``items_read``, ``shards_built``, ``bytes_written`` (counters),
``shard_items``, ``shard_build_seconds``, ``shard_peak_rss_bytes`` (the worker process's peak RSS while
it built the shard) and ``shard_added_rss_bytes`` (that peak less the process's RSS when the shard's
items had arrived) (distributions).
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.metrics import Metrics

from flux_beam.items import Block
from flux_core.backend import Metric, defaults, resolve_params
from flux_core.errors import ArtifactError, InvalidArgument
from flux_core.storage import artifact, builder, registry, sharded
from flux_core.storage.fsync import fsync_path

NAMESPACE = "flux"
ITEMS_READ = Metrics.counter(NAMESPACE, "items_read")
SHARDS_BUILT = Metrics.counter(NAMESPACE, "shards_built")
BYTES_WRITTEN = Metrics.counter(NAMESPACE, "bytes_written")
SHARD_ITEMS = Metrics.distribution(NAMESPACE, "shard_items")
SHARD_SECONDS = Metrics.distribution(NAMESPACE, "shard_build_seconds")
PEAK_RSS = Metrics.distribution(NAMESPACE, "shard_peak_rss_bytes")
ADDED_RSS = Metrics.distribution(NAMESPACE, "shard_added_rss_bytes")

_CHUNK = 1 << 22
_RAW = CompressionTypes.UNCOMPRESSED  # never let a file's suffix (.gz, .zst) make Beam compress it


def staging_prefix(version: int) -> str:
    """The name every staging folder of ``version`` starts with; the version machinery passes them over."""
    return f".{version}.sharded-"


@dataclass(frozen=True)
class Spec:
    """What to build and where: everything a worker needs, resolved on the launcher."""

    output: str  # the index's source folder: the version goes to <output>/<version>
    name: str
    version: int
    shards: int
    backend: str
    metric: str
    params: dict[str, float]  # resolved: every build parameter with its default filled in
    threads: int
    key: str  # sharded.ID_KEY or the shard-key column's name
    run: str
    built_by: dict[str, str] = field(default_factory=dict)

    @property
    def staging(self) -> str:
        return str(FileSystems.join(self.output, f"{staging_prefix(self.version)}{self.run}"))

    @property
    def final(self) -> str:
        return str(FileSystems.join(self.output, str(self.version)))


@dataclass(frozen=True)
class ShardResult:
    """One built shard, as the worker that built it reports it to the publishing step."""

    shard: sharded.Shard
    attempt: str  # the staging folder holding this attempt's files
    files: tuple[tuple[str, int], ...]  # (path relative to the attempt folder, bytes)
    backend: str
    library: str
    dimension: int
    seconds: float
    peak_rss: int


class BuildShardedVersion(beam.PTransform):
    """Build ``shards`` artifacts from a PCollection of ``Block`` and publish them as version ``version``
    of the index whose source folder is ``output`` (any path Beam's filesystems write).

    The output is a PCollection of one element, the published ``ShardedManifest``. ``backend`` is any
    name the backend registry resolves on the workers (and on the launcher, which checks ``params``
    against it); ``threads`` is what each shard build may use. Blocks carrying shard keys (read with a
    key column) are sharded by them, and ``shard_key`` names that column in the manifest.
    """

    def __init__(
        self,
        output: str,
        *,
        name: str,
        version: int,
        shards: int,
        backend: str = "hnsw",
        metric: Metric | str = Metric.L2,
        params: Mapping[str, float] | None = None,
        threads: int = 1,
        shard_key: str | None = None,
    ) -> None:
        super().__init__()
        if version < 1:
            raise InvalidArgument(f"version must be at least 1, got {version}")
        if shards < 1:
            raise InvalidArgument(f"shards must be at least 1, got {shards}")
        if threads < 1:
            raise InvalidArgument(f"threads must be at least 1, got {threads}")
        backend_cls = registry.get(backend)
        resolved = resolve_params(backend_cls.build_params, defaults(backend_cls.build_params), params or {}, "params")
        self.spec = Spec(
            output=os.path.abspath(output) if _is_local(output) else output.rstrip("/"),
            name=name,
            version=version,
            shards=shards,
            backend=backend,
            metric=Metric(metric).value,
            params=resolved,
            threads=threads,
            key=shard_key or sharded.ID_KEY,
            run=uuid.uuid4().hex[:12],
            built_by=_built_by(),
        )

    def expand(self, blocks: Any) -> Any:
        runner = type(blocks.pipeline.runner).__name__ if blocks.pipeline.runner is not None else "unknown"
        spec = self.spec = replace(self.spec, built_by={**self.spec.built_by, "runner": runner})
        every_shard = blocks.pipeline | "Every shard" >> beam.Create([(i, None) for i in range(spec.shards)])
        pieces = blocks | "Assign shards" >> beam.FlatMap(_assign, spec.shards, spec.key != sharded.ID_KEY)
        dimensions = (
            blocks | "Dimension" >> beam.Map(lambda block: block.dimension) | "One dimension" >> beam.Distinct()
        )
        built = (
            (pieces, every_shard)
            | "With empty shards" >> beam.Flatten()
            | "Group by shard" >> beam.GroupByKey()
            | "Build shards" >> beam.ParDo(BuildShard(spec), dimensions=beam.pvalue.AsList(dimensions))
        )
        if spec.key != sharded.ID_KEY:  # one id could have two keys, and so land in two shards
            repeated = (
                blocks
                | "Ids" >> beam.FlatMap(lambda block: ((item_id, 1) for item_id in block.ids))
                | "Count ids" >> beam.CombinePerKey(sum)
                | "Repeated ids" >> beam.Filter(lambda counted: counted[1] > 1)
                | "Their names" >> beam.Keys()
            )
        else:  # the builder refuses an id twice in a shard, and one id always hashes to one shard
            repeated = blocks.pipeline | "No repeated ids" >> beam.Create([])
        return (
            built
            | "All shards" >> beam.combiners.ToList()
            | "Publish" >> beam.Map(publish, spec, repeated=beam.pvalue.AsList(repeated))
        )


def _built_by() -> dict[str, str]:
    found = {}
    for dist in ("flux-beam", "flux-core", "apache-beam"):
        try:
            found[dist] = installed_version(dist)
        except ImportError:  # PackageNotFoundError is an ImportError
            found[dist] = "unknown"
    return found


def _assign(block: Block, shards: int, by_key: bool) -> Iterator[tuple[int, Block]]:
    """``block`` split by shard: (shard, the block's items of that shard) for each shard it touches."""
    ITEMS_READ.inc(len(block))
    if by_key and block.keys is None:
        raise InvalidArgument("the version is sharded by a key column, but the items read carry no shard keys")
    assignment = sharded.assign(block.shard_keys(), shards)
    order = np.argsort(assignment, kind="stable")
    bounds = np.searchsorted(assignment[order], np.arange(shards + 1))
    for index in range(shards):
        rows = order[bounds[index] : bounds[index + 1]]
        if len(rows):
            yield index, block.take(rows)


class BuildShard(beam.DoFn):
    """Build one shard's artifact on this worker and copy it to the staging folder."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec

    def process(self, element: tuple[int, Iterable[Block | None]], dimensions: Sequence[int]) -> Iterator[ShardResult]:
        spec = self.spec
        index, values = element
        if len(set(dimensions)) > 1:
            raise InvalidArgument(f"the vectors have different dimensions: {sorted(set(dimensions))}")
        if not dimensions:
            raise InvalidArgument("no items were read; a version needs at least one")
        dimension = dimensions[0]
        started = time.perf_counter()
        arrived = _reset_peak_rss()  # the shard's items are here already: the runner hands them over decoded
        block = Block.concat([value for value in values if value is not None], dimension)
        by_key = spec.key != sharded.ID_KEY
        name = sharded.shard_name(index, spec.shards)
        attempt = FileSystems.join(spec.staging, uuid.uuid4().hex[:12])
        with tempfile.TemporaryDirectory(prefix="flux-beam-shard-") as tmp:
            local = Path(tmp)
            builder.build(
                local / name,
                block.vectors,
                block.ids,
                backend=spec.backend,
                metric=Metric(spec.metric),
                name=spec.name,
                version=spec.version,
                params=spec.params,
                threads=spec.threads,
                attributes=block.attributes,
            )
            if by_key:
                (local / sharded.keys_name(index, spec.shards)).write_text(
                    _json_list(block.shard_keys()), encoding="utf-8"
                )
            count = len(block)
            del block  # the vectors are in the artifact now; free them before copying
            entry = sharded.describe_shard(local, index, spec.shards)
            built = artifact.read_manifest(local / name)
            files = _upload(local, attempt, name)
        seconds = time.perf_counter() - started
        peak = peak_rss()
        SHARDS_BUILT.inc()
        SHARD_ITEMS.update(count)
        SHARD_SECONDS.update(int(seconds))
        PEAK_RSS.update(peak)
        ADDED_RSS.update(max(peak - arrived, 0))
        yield ShardResult(entry, attempt, files, built.backend, built.library, built.dimension, seconds, peak)


def peak_rss() -> int:
    """This process's peak resident set size in bytes, its own: Linux's VmHWM starts afresh at exec (and
    at ``_reset_peak_rss``), where getrusage's ru_maxrss starts from the parent's at fork."""
    found = _status("VmHWM:")
    return found if found is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> int:
    """Start this process's peak RSS afresh from its current RSS, where the kernel allows; return that RSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # 5: reset the peak resident set size (Linux 4.0 and later)
    except OSError:
        pass
    return _status("VmRSS:") or 0


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _json_list(values: Sequence[str]) -> str:
    import json

    return json.dumps(list(values), ensure_ascii=False)


def _upload(local: Path, attempt: str, name: str) -> tuple[tuple[str, int], ...]:
    """Copy the shard (and its keys file) to ``attempt``; its manifest.json last, once the rest is there."""
    relative = sorted(
        (str(path.relative_to(local)) for path in local.rglob("*") if path.is_file()),
        key=lambda rel: rel == f"{name}/{artifact.MANIFEST}",
    )
    files = []
    for rel in relative:
        source = local / rel
        with source.open("rb") as src, FileSystems.create(FileSystems.join(attempt, rel), compression_type=_RAW) as out:
            shutil.copyfileobj(src, out, _CHUNK)
        size = source.stat().st_size
        BYTES_WRITTEN.inc(size)
        files.append((rel, size))
    return tuple(files)


# -- publishing -----------------------------------------------------------------------------


def publish(results: Sequence[ShardResult], spec: Spec, repeated: Sequence[str] = ()) -> sharded.ShardedManifest:
    """Move every shard into ``<output>/<version>/`` and write ``sharded.json`` last; clear the staging.

    Safe to run again after a failure at any point: a manifest this run already wrote is returned
    as it is, files already moved stay, and shards a killed run left unpublished are replaced.
    """
    results = sorted(results, key=lambda r: r.shard.index)
    if [r.shard.index for r in results] != list(range(spec.shards)):
        raise ArtifactError(f"expected shards 0 .. {spec.shards - 1}, built {[r.shard.index for r in results]}")
    if repeated:
        raise InvalidArgument(
            f"id {sorted(repeated)[0]!r} appears more than once ({len(repeated)} ids do); ids must be unique"
        )
    libraries = sorted({r.library for r in results})
    if len(libraries) > 1:
        raise ArtifactError(
            f"the shards were built with different libraries ({', '.join(libraries)}); one image, please"
        )
    final = spec.final
    manifest_path = FileSystems.join(final, sharded.MANIFEST)
    if FileSystems.exists(manifest_path):
        existing = sharded.ShardedManifest.from_json(_read_text(manifest_path))
        if existing.built_by.get("run") == spec.run:
            return existing  # this step ran before and got that far
        raise ArtifactError(f"{final} is a published version already; versions are immutable, build a new one")
    if FileSystems.exists(FileSystems.join(final, artifact.MANIFEST)):
        raise ArtifactError(f"{final} holds an artifact already; versions are immutable, build a new one")

    moves = {
        FileSystems.join(r.attempt, rel): (FileSystems.join(final, rel), size) for r in results for rel, size in r.files
    }
    _clear_unpublished(final, {target for target, _ in moves.values()})
    sources, targets = [], []
    for source, (target, size) in moves.items():
        if FileSystems.exists(source):
            sources.append(source)
            targets.append(target)
        elif not _has_size(target, size):  # neither here nor there
            raise ArtifactError(f"{source}: missing, and {target} was not moved either")
    for folder in sorted({target.rsplit("/", 1)[0] for target in targets}):
        _make_dirs(folder)
    if sources:
        FileSystems.rename(sources, targets)
    for target, size in moves.values():
        if not _has_size(target, size):
            raise ArtifactError(f"{target}: not {size} bytes after the move")
    local = _is_local(final)
    if local:  # the shards must be on disk before a manifest can name them
        for target, _ in moves.values():
            fsync_path(Path(target))
        for folder in {target.rsplit("/", 1)[0] for target, _ in moves.values()} | {final}:
            fsync_path(Path(folder))

    manifest = sharded.ShardedManifest(
        name=spec.name,
        version=spec.version,
        backend=results[0].backend,
        library=libraries[0],
        dimension=results[0].dimension,
        metric=Metric(spec.metric),
        count=sum(r.shard.count for r in results),
        sharding=sharded.Sharding(shards=spec.shards, key=spec.key),
        shards=tuple(r.shard for r in results),
        build_params=dict(spec.params),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        built_by={**spec.built_by, "run": spec.run},
    )
    manifest.check()
    text = manifest.to_json().encode("utf-8")
    pending = FileSystems.join(final, f".{sharded.MANIFEST}.{spec.run}")
    with FileSystems.create(pending, mime_type="application/json", compression_type=_RAW) as out:
        out.write(text)
    if local:
        fsync_path(Path(pending))
    FileSystems.rename([pending], [manifest_path])  # one rename (an object copy on object stores): all or nothing
    if local:
        fsync_path(Path(final))
    BYTES_WRITTEN.inc(len(text))
    for folder in _staging_folders(spec):
        _remove_tree(folder)
    return manifest


def _read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=_RAW) as fh:
        return bytes(fh.read()).decode("utf-8")


def _files_under(folder: str) -> list[Any]:
    return list(FileSystems.match([FileSystems.join(folder, "**")])[0].metadata_list)


def _has_size(path: str, size: int) -> bool:
    found = FileSystems.match([path])[0].metadata_list
    return len(found) == 1 and found[0].size_in_bytes == size


def _is_local(path: str) -> bool:
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)


def _make_dirs(folder: str) -> None:
    """Create ``folder`` where the filesystem has folders (local disks); object stores need none."""
    if _is_local(folder):
        os.makedirs(folder, exist_ok=True)


def _clear_unpublished(final: str, keep: set[str]) -> None:
    """Remove what a killed run left in the unpublished version folder: shard files only, never anything else."""
    leftovers = [m.path for m in _files_under(final) if m.path not in keep]
    prefix = final.rstrip("/") + "/"
    for path in leftovers:
        top = path[len(prefix) :].split("/", 1)[0]
        pending = top.startswith(f".{sharded.MANIFEST}.")  # a manifest never renamed into place
        if not pending and sharded.parse_shard_name(top.removesuffix(".keys.json")) is None:
            raise ArtifactError(
                f"{final} holds {path[len(prefix) :]}, which no sharded build writes; "
                "move it away or build another version"
            )
    if leftovers:
        FileSystems.delete(leftovers)


def _staging_folders(spec: Spec) -> list[str]:
    """This run's staging folder and those that killed runs of the same version left."""
    prefix = spec.output.rstrip("/") + "/"
    folders = {spec.staging}
    if _is_local(spec.output):  # a killed run may have left nothing but empty folders, which no match finds
        named = staging_prefix(spec.version)
        folders.update(FileSystems.join(spec.output, n) for n in os.listdir(spec.output) if n.startswith(named))
    pattern = FileSystems.join(spec.output, f"{staging_prefix(spec.version)}*")
    for meta in FileSystems.match([FileSystems.join(pattern, "**")])[0].metadata_list:
        folders.add(prefix + meta.path[len(prefix) :].split("/", 1)[0])
    return sorted(folders)


def _remove_tree(folder: str) -> None:
    files = [m.path for m in _files_under(folder)]
    if files:
        FileSystems.delete(files)
    if _is_local(folder) and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)  # the emptied folders; object stores have none
