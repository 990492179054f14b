"""Index artifacts: one immutable directory per index version, verified before it is served.

Layout::

    <dir>/manifest.json   what the index is, and a checksum of every other file
    <dir>/ids.json        the string id of each label, in label order
    <dir>/<backend files> whatever the backend's ``save`` wrote

An artifact is written into a temporary sibling directory and renamed into place,
so a reader never sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from flux.core import registry
from flux.core.backend import Backend, Metric
from flux.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IDS = "ids.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """What an artifact holds. Written once by ``write``; checked by ``verify``."""

    name: str
    version: int
    backend: str
    library: str
    dimension: int
    metric: Metric
    count: int
    build_params: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"sha256", "bytes"}
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["metric"] = self.metric.value
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"{path}: format_version {data.get('format_version')!r} is not supported "
                    f"(this Flux reads version {FORMAT_VERSION})"
                )
            data["metric"] = Metric(data["metric"])
            manifest = cls(**data)
        except ArtifactError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"{path}: not a valid manifest: {exc}") from exc
        if not isinstance(manifest.files, dict) or manifest.count < 0 or manifest.dimension < 1:
            raise ArtifactError(f"{path}: not a valid manifest: bad files, count or dimension")
        return manifest


@dataclass
class Artifact:
    """A verified artifact, loaded: the manifest, the backend instance and the ids by label."""

    path: Path
    manifest: Manifest
    backend: Backend
    ids: np.ndarray  # object array of str, indexed by label


def write(
    directory: Path,
    backend: Backend,
    ids: Sequence[str],
    *,
    name: str,
    version: int,
    build_params: Mapping[str, float],
) -> Manifest:
    """Save ``backend`` and ``ids`` as an artifact at ``directory``, which must not exist yet."""
    if directory.exists():
        raise ArtifactError(f"{directory} already exists; artifacts are immutable, write a new version instead")
    if len(ids) != len(backend):
        raise ArtifactError(f"{len(ids)} ids for {len(backend)} vectors")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        files = backend.save(staging)
        (staging / IDS).write_text(json.dumps(list(ids), ensure_ascii=False), encoding="utf-8")
        manifest = Manifest(
            name=name,
            version=version,
            backend=backend.name,
            library=backend.library_version(),
            dimension=backend.dimension,
            metric=backend.metric,
            count=len(backend),
            build_params=dict(build_params),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            files={f: _describe(staging / f) for f in sorted([*files, IDS])},
        )
        (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        for path in staging.iterdir():
            _fsync(path)
        staging.chmod(0o755)
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest(directory: Path) -> Manifest:
    """Read ``directory``'s manifest, without checking the other files."""
    path = directory / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; is {directory} an index artifact built by `flux build`?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable: {exc}") from exc
    return Manifest.from_json(text, path)


def verify(directory: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists exists with its recorded size and checksum."""
    for name, expected in sorted(manifest.files.items()):
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{directory / MANIFEST}: file name {name!r} points outside the artifact")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {MANIFEST})")
        actual = _describe(path)
        if actual["bytes"] != expected.get("bytes"):
            raise ArtifactError(
                f"{path}: {actual['bytes']} bytes, the manifest says {expected.get('bytes')} (truncated?)"
            )
        if actual["sha256"] != expected.get("sha256"):
            raise ArtifactError(f"{path}: checksum mismatch, the file is corrupt")


def load(directory: Path) -> Artifact:
    """Verify and open the artifact at ``directory``; refuse it with an error naming the bad file."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify(directory, manifest)
    ids_path = directory / IDS
    try:
        ids = json.loads(ids_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{ids_path}: unreadable: {exc}") from exc
    if not isinstance(ids, list) or len(ids) != manifest.count or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(f"{ids_path}: expected a list of {manifest.count} strings, as the manifest says")
    backend_cls = registry.get(manifest.backend)
    try:
        backend = backend_cls.load(directory, manifest.dimension, manifest.metric, manifest.count)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{directory}: the {manifest.backend} backend could not load it: {exc}") from exc
    if len(backend) != manifest.count:
        raise ArtifactError(f"{directory}: the backend holds {len(backend)} items, the manifest says {manifest.count}")
    return Artifact(directory, manifest, backend, np.array(ids, dtype=object))


def size_bytes(manifest: Manifest) -> int:
    """Total size of the artifact's files, as recorded."""
    return sum(int(f["bytes"]) for f in manifest.files.values())


def _describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
