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

The steps' parts live beside this module: ``spec`` (what the launcher resolves for the workers),
``shard_build`` (step 3), ``publishing`` (step 4), ``filesystems`` and ``metrics`` (see there).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace
from importlib.metadata import version as installed_version
from typing import Any

import apache_beam as beam
import numpy as np

from flux_beam.filesystems import is_local
from flux_beam.items import Block
from flux_beam.metrics import ITEMS_READ
from flux_beam.publishing import publish
from flux_beam.shard_build import BuildShard
from flux_beam.spec import Spec
from flux_core.backend import Metric, defaults, resolve_params
from flux_core.errors import InvalidArgument
from flux_core.storage import registry, sharded


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
            output=os.path.abspath(output) if is_local(output) else output.rstrip("/"),
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
