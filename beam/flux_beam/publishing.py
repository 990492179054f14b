"""Step 4 of ``BuildShardedVersion``: once every shard is built, move the winning attempts' files into the
version folder and write ``sharded.json`` last; clear what killed runs of the same version left.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from apache_beam.io.filesystems import FileSystems

from flux_beam.filesystems import RAW, files_under, has_size, is_local, make_dirs, read_text, remove_tree
from flux_beam.metrics import BYTES_WRITTEN
from flux_beam.spec import ShardResult, Spec, staging_prefix
from flux_core.backend import Metric
from flux_core.errors import ArtifactError, InvalidArgument
from flux_core.storage import artifact, sharded
from flux_core.storage.fsync import fsync_path


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
        existing = sharded.ShardedManifest.from_json(read_text(manifest_path))
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
        elif not has_size(target, size):  # neither here nor there
            raise ArtifactError(f"{source}: missing, and {target} was not moved either")
    for folder in sorted({target.rsplit("/", 1)[0] for target in targets}):
        make_dirs(folder)
    if sources:
        FileSystems.rename(sources, targets)
    for target, size in moves.values():
        if not has_size(target, size):
            raise ArtifactError(f"{target}: not {size} bytes after the move")
    local = is_local(final)
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
    with FileSystems.create(pending, mime_type="application/json", compression_type=RAW) as out:
        out.write(text)
    if local:
        fsync_path(Path(pending))
    FileSystems.rename([pending], [manifest_path])  # one rename (an object copy on object stores): all or nothing
    if local:
        fsync_path(Path(final))
    BYTES_WRITTEN.inc(len(text))
    for folder in _staging_folders(spec):
        remove_tree(folder)
    return manifest


def _clear_unpublished(final: str, keep: set[str]) -> None:
    """Remove what a killed run left in the unpublished version folder: shard files only, never anything else."""
    leftovers = [m.path for m in files_under(final) if m.path not in keep]
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
    if is_local(spec.output):  # a killed run may have left nothing but empty folders, which no match finds
        named = staging_prefix(spec.version)
        folders.update(FileSystems.join(spec.output, n) for n in os.listdir(spec.output) if n.startswith(named))
    pattern = FileSystems.join(spec.output, f"{staging_prefix(spec.version)}*")
    for meta in FileSystems.match([FileSystems.join(pattern, "**")])[0].metadata_list:
        folders.add(prefix + meta.path[len(prefix) :].split("/", 1)[0])
    return sorted(folders)
