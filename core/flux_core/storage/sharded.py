"""Sharded versions: one index version split into N shards by a stable hash, each shard a normal artifact.

Layout of a sharded version folder (``docs/scale.md``)::

    <version>/sharded.json                 the sharded manifest, written last
    <version>/shard-00000-of-00004/        a whole Flux artifact (manifest.json, ids.json, backend files)
    <version>/shard-00001-of-00004/        ...
    <version>/shard-00000-of-00004.keys.json   the shard key of each item, only when sharded by a key column

``sharded.json`` names every shard with its item count, its size and the SHA-256 of its
``manifest.json`` (which holds the SHA-256 of every other file of the shard), the sharding
function and the build parameters. It is written last and atomically: until it exists the
folder is no version, so a half-written sharded version is never visible.

The sharding function is ``sha256-mod``: an item goes to shard
``int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big") % shards``, where the key is
the item's id unless the version was sharded by a key column. Any language can compute it, so
a router can tell which shard holds an id without asking them all.

Numpy only, like the rest of flux_core: the server, a router and pipeline workers all read it.
Refusals name files relative to the version folder (``shard-00001-of-00004/index.hnsw: ...``),
since they may reach clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from flux_core.backend import Metric
from flux_core.errors import ArtifactError, InvalidArgument
from flux_core.storage import artifact
from flux_core.storage.fsync import fsync_path

FORMAT_VERSION = 1
#: The sharded manifest's file name; a folder holding it is a sharded version.
MANIFEST = "sharded.json"
#: The one sharding function so far; the manifest names it so that others can follow.
SHA256_MOD = "sha256-mod"
FUNCTIONS = (SHA256_MOD,)
#: The key an item is sharded by when no key column is given.
ID_KEY = "id"
_SHARD_NAME = re.compile(r"^shard-(\d{5,})-of-(\d{5,})$")
_CHUNK = 1 << 20


# -- the sharding function ------------------------------------------------------------------


def shard_of(key: str, shards: int) -> int:
    """The shard (0 .. shards-1) of the item whose sharding key is ``key`` (``sha256-mod``)."""
    if shards < 1:
        raise InvalidArgument(f"shards must be at least 1, got {shards}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def assign(keys: Iterable[str], shards: int) -> npt.NDArray[np.int64]:
    """``shard_of`` of every key, as an array in the order of ``keys``."""
    if shards < 1:
        raise InvalidArgument(f"shards must be at least 1, got {shards}")
    sha256 = hashlib.sha256
    return np.fromiter(
        (int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big") % shards for key in keys), np.int64
    )


def shard_name(index: int, shards: int) -> str:
    """The folder name of shard ``index`` of ``shards``: ``shard-00002-of-00004``."""
    return f"shard-{index:05d}-of-{shards:05d}"


def keys_name(index: int, shards: int) -> str:
    """The file beside shard ``index`` holding its items' shard keys (versions sharded by a key column)."""
    return f"{shard_name(index, shards)}.keys.json"


# -- the manifest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sharding:
    """How items were split: ``function`` of each item's ``key`` (``id`` or a column name) into ``shards``."""

    shards: int
    function: str = SHA256_MOD
    key: str = ID_KEY


@dataclass(frozen=True)
class Shard:
    """One shard as the sharded manifest records it."""

    index: int
    path: str  # folder name inside the version folder
    count: int
    bytes: int  # every file of the shard's artifact, manifest.json included
    manifest_sha256: str  # of the shard's manifest.json, which holds the SHA-256 of every other file
    #: ``{"path", "sha256", "bytes"}`` of the shard's keys file; only when sharded by a key column.
    keys: dict[str, Any] | None = None


@dataclass(frozen=True)
class ShardedManifest:
    """What a sharded version holds. Written last by its builder; checked by ``verify``."""

    name: str
    version: int
    backend: str
    library: str
    dimension: int
    metric: Metric
    count: int
    sharding: Sharding
    shards: tuple[Shard, ...]
    build_params: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    #: Who built it (``{"flux-beam": "0.1.0", "apache-beam": "2.77.0", "runner": ..., "run": ...}``).
    built_by: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["metric"] = self.metric.value
        data["shards"] = [{k: v for k, v in shard.items() if v is not None} for shard in data["shards"]]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ShardedManifest:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            if data.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"{MANIFEST}: format_version {data.get('format_version')!r} is not supported "
                    f"(this Flux reads version {FORMAT_VERSION})"
                )
            data["metric"] = Metric(data["metric"])
            data["sharding"] = Sharding(**data["sharding"])
            data["shards"] = tuple(Shard(**shard) for shard in data["shards"])
            manifest = cls(**data)
        except ArtifactError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"{MANIFEST}: not a valid sharded manifest: {exc}") from exc
        manifest.check()
        return manifest

    def check(self) -> None:
        """Refuse a manifest that contradicts itself (shard numbers, counts, names, the function)."""
        sharding = self.sharding
        if sharding.function not in FUNCTIONS:
            raise ArtifactError(
                f"{MANIFEST}: sharding function {sharding.function!r} is not known "
                f"(this Flux knows {', '.join(FUNCTIONS)})"
            )
        if not isinstance(sharding.shards, int) or sharding.shards < 1 or not sharding.key:
            raise ArtifactError(f"{MANIFEST}: sharding needs shards >= 1 and a key")
        if [s.index for s in self.shards] != list(range(sharding.shards)):
            raise ArtifactError(
                f"{MANIFEST}: lists shards {[s.index for s in self.shards]}, "
                f"expected 0 .. {sharding.shards - 1} in order"
            )
        for shard in self.shards:
            if "/" in shard.path or "\\" in shard.path or shard.path in ("", ".", "..") or shard.path.startswith("."):
                raise ArtifactError(f"{MANIFEST}: shard {shard.index} path {shard.path!r} is not a plain folder name")
            if shard.count < 0 or shard.bytes < 0:
                raise ArtifactError(f"{MANIFEST}: shard {shard.index} has a negative count or size")
            if (shard.keys is None) != (sharding.key == ID_KEY):
                raise ArtifactError(
                    f"{MANIFEST}: shard {shard.index} must list a keys file exactly when sharded by a key column"
                )
        if len({s.path for s in self.shards}) != len(self.shards):
            raise ArtifactError(f"{MANIFEST}: two shards share a folder")
        if sum(s.count for s in self.shards) != self.count:
            raise ArtifactError(
                f"{MANIFEST}: the shards hold {sum(s.count for s in self.shards)} items, count says {self.count}"
            )
        if self.dimension < 1:
            raise ArtifactError(f"{MANIFEST}: dimension must be at least 1")

    @property
    def bytes(self) -> int:
        """Every shard's files together (the keys files and sharded.json left out)."""
        return sum(s.bytes for s in self.shards)


def is_sharded(directory: Path) -> bool:
    """Whether ``directory`` holds a sharded manifest, that is, is a whole sharded version."""
    return (Path(directory) / MANIFEST).is_file()


def read(directory: Path) -> ShardedManifest:
    """Read ``directory``'s sharded manifest, without checking the shards."""
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{MANIFEST}: missing; is this a sharded version?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{MANIFEST}: unreadable: {_why(exc)}") from exc
    return ShardedManifest.from_json(text)


def write(directory: Path, manifest: ShardedManifest) -> None:
    """Write the sharded manifest into ``directory`` (which holds the shards already) atomically and durably."""
    manifest.check()
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        raise ArtifactError(f"{directory} is a sharded version already; versions are immutable, write a new one")
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(manifest.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, directory / MANIFEST)
        fsync_path(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_shard(directory: Path, index: int, shards: int) -> Shard:
    """The manifest entry of shard ``index``, whose artifact is ``directory/shard_name(index, shards)``."""
    path = shard_name(index, shards)
    shard = Path(directory) / path
    built = artifact.read_manifest(shard)
    described = _describe(shard / artifact.MANIFEST)
    keys = Path(directory) / keys_name(index, shards)
    return Shard(
        index=index,
        path=path,
        count=built.count,
        bytes=artifact.size_bytes(built) + described["bytes"],
        manifest_sha256=described["sha256"],
        keys={"path": keys.name, **_describe(keys)} if keys.is_file() else None,
    )


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardReport:
    """What ``verify`` found in one shard."""

    index: int
    path: str
    count: int
    bytes: int
    #: The backend's stats, when ``verify`` opened the shard (``open_shards``).
    stats: dict[str, Any] | None = None


def verify(directory: Path, manifest: ShardedManifest | None = None, *, open_shards: bool = False) -> list[ShardReport]:
    """Check a sharded version: every shard's checksums and counts, and the sharding function.

    Each shard's manifest.json must have the checksum the sharded manifest records and agree
    with it (name, version, backend, dimension, metric, count); every file of the shard must
    have its recorded size and checksum; each shard must hold exactly the items whose key the
    sharding function sends to it, and no id may be in two shards. With ``open_shards`` each
    shard is also opened with its backend (one at a time) and its stats reported.
    Raises ArtifactError naming the file, relative to the version folder.
    """
    directory = Path(directory)
    manifest = read(directory) if manifest is None else manifest
    manifest.check()
    seen: dict[str, int] = {}
    reports = []
    for shard in manifest.shards:
        where = directory / shard.path
        try:
            built, stats = _verify_artifact(where, open_shards)
        except ArtifactError as exc:
            raise ArtifactError(f"{shard.path}/{exc.message}") from None
        _check_agrees(manifest, shard, built, where)
        ids = _ids(where, shard)
        keys = ids if shard.keys is None else _keys(directory, shard, len(ids))
        wrong = np.flatnonzero(assign(keys, manifest.sharding.shards) != shard.index)
        if len(wrong):
            key = keys[int(wrong[0])]
            belongs = shard_of(key, manifest.sharding.shards)
            raise ArtifactError(
                f"{shard.path}: holds id {ids[int(wrong[0])]!r}, whose {manifest.sharding.key} {key!r} "
                f"the {manifest.sharding.function} function sends to shard {belongs} "
                f"({len(wrong)} item(s) in the wrong shard)"
            )
        for item_id in ids:
            other = seen.setdefault(item_id, shard.index)
            if other != shard.index:
                raise ArtifactError(f"{shard.path}: id {item_id!r} is in shard {other} too; an id lives in one shard")
        reports.append(ShardReport(shard.index, shard.path, shard.count, shard.bytes, stats))
    return reports


def _verify_artifact(where: Path, open_shards: bool) -> tuple[artifact.Manifest, dict[str, Any] | None]:
    if not open_shards:
        built = artifact.read_manifest(where)
        artifact.verify(where, built)
        return built, None
    loaded = artifact.load(where)
    try:
        return loaded.manifest, {"items": len(loaded.backend), **loaded.backend.stats()}
    finally:
        loaded.backend.close()


def _check_agrees(manifest: ShardedManifest, shard: Shard, built: artifact.Manifest, where: Path) -> None:
    described = _describe(where / artifact.MANIFEST)
    if described["sha256"] != shard.manifest_sha256:
        raise ArtifactError(f"{shard.path}/{artifact.MANIFEST}: checksum mismatch with {MANIFEST}")
    size = artifact.size_bytes(built) + described["bytes"]
    if size != shard.bytes:
        raise ArtifactError(f"{shard.path}: {size} bytes, {MANIFEST} says {shard.bytes}")
    expected = {
        "name": manifest.name,
        "version": manifest.version,
        "backend": manifest.backend,
        "dimension": manifest.dimension,
        "metric": manifest.metric,
        "count": shard.count,
    }
    for key, value in expected.items():
        if getattr(built, key) != value:
            raise ArtifactError(
                f"{shard.path}/{artifact.MANIFEST}: {key} is {getattr(built, key)!r}, {MANIFEST} says {value!r}"
            )


def _ids(where: Path, shard: Shard) -> list[str]:
    try:
        ids = json.loads((where / artifact.IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{shard.path}/{artifact.IDS}: unreadable: {_why(exc)}") from exc
    if not isinstance(ids, list) or len(ids) != shard.count or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(f"{shard.path}/{artifact.IDS}: expected a list of {shard.count} ids")
    return ids


def _keys(directory: Path, shard: Shard, count: int) -> list[str]:
    assert shard.keys is not None
    name = str(shard.keys.get("path", ""))
    path = directory / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise ArtifactError(f"{name or 'keys file'}: missing (listed in {MANIFEST})")
    described = _describe(path)
    if described != {"sha256": shard.keys.get("sha256"), "bytes": shard.keys.get("bytes")}:
        raise ArtifactError(f"{name}: checksum or size mismatch with {MANIFEST}, the file is corrupt")
    keys = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(keys, list) or len(keys) != count or not all(isinstance(k, str) for k in keys):
        raise ArtifactError(f"{name}: expected a list of {count} keys, one per id of the shard")
    return keys


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """``(index, shards)`` of a shard folder name, or None when ``name`` is none."""
    match = _SHARD_NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def key_text(value: object) -> str:
    """A shard key as text: a string as it is, a number or boolean as its JSON text (``7`` is ``"7"``),
    as restrict tokens are taken (docs/filters.md)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise InvalidArgument(f"a shard key must be a string, number or boolean, got {type(value).__name__}")


def _describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
