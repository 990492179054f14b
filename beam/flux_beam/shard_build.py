"""Step 3 of ``BuildShardedVersion``: build one shard's artifact on a worker, copy it to a staging folder of
its own attempt, and measure the build (items, seconds, the worker's peak and added RSS).
"""

from __future__ import annotations

import logging
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from flux_beam.filesystems import RAW
from flux_beam.items import Block
from flux_beam.metrics import (
    ADDED_RSS,
    BYTES_WRITTEN,
    ITEMS_INDEXED,
    PEAK_RSS,
    SHARD_ITEMS,
    SHARD_SECONDS,
    SHARDS_BUILT,
)
from flux_beam.spec import ShardResult, Spec
from flux_core.backend import Metric
from flux_core.errors import InvalidArgument
from flux_core.storage import artifact, builder, sharded

_CHUNK = 1 << 22

log = logging.getLogger(__name__)


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
                progress=_Indexing(name),
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


class _Indexing:
    """A shard build's progress, for a build that runs minutes on a worker: the items_indexed counter
    (a runner's UI shows it grow) and a log line at each tenth of the shard's items."""

    def __init__(self, shard: str) -> None:
        self._shard, self._done, self._tenths = shard, 0, 0

    def __call__(self, done: int, total: int) -> None:
        ITEMS_INDEXED.inc(done - self._done)
        self._done = done
        tenths = 10 * done // max(total, 1)
        if tenths > self._tenths:
            self._tenths = tenths
            log.info("%s: %s of %s items indexed", self._shard, f"{done:,}", f"{total:,}")


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
        with source.open("rb") as src, FileSystems.create(FileSystems.join(attempt, rel), compression_type=RAW) as out:
            shutil.copyfileobj(src, out, _CHUNK)
        size = source.stat().st_size
        BYTES_WRITTEN.inc(size)
        files.append((rel, size))
    return tuple(files)
