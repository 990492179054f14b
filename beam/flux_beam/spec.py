"""What the steps of ``BuildShardedVersion`` hand each other: the ``Spec`` the launcher resolves for
every worker, and the ``ShardResult`` each shard build reports to the publishing step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from flux_core.storage import sharded


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
