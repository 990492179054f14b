"""Index artifacts: one immutable directory per index version, verified before it is served.

Layout::

    <dir>/manifest.json   what the index is, and a checksum of every other file
    <dir>/ids.json        the string id of each label, in label order (null: the label holds no item)
    <dir>/ids.npy         the same ids as fixed-width UTF-8 bytes, when every label holds one and
                          that is the smaller form (``flux_core.storage.ids.packed``): what a
                          server reads, with no Python object per id; ids.json stays for tools
    <dir>/<backend files> whatever the backend's ``save`` wrote
    <dir>/attributes.npz  the items' restricts and crowding tags (flux_core.storage.attributes), if given
    <dir>/filter_vectors.npy  a float32 copy of the vectors for exact filtered scans, if given
    <dir>/canary.npz      sample queries and their exact neighbours, for the activation gate, if given
                          (flux_core.storage.canary)

An artifact is written into a temporary sibling directory and renamed into place,
so a reader never sees a half-written one.

Refusals name files relative to the artifact (``index.hnsw: checksum mismatch``): the
message reaches clients, who must not learn where the server keeps its data. The log
gets the artifact's full path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from flux_core.backend import Backend, Matrix, Metric
from flux_core.errors import ArtifactError
from flux_core.storage import canary as canaries
from flux_core.storage import registry
from flux_core.storage.attributes import AttributeStore
from flux_core.storage.background import Pacer, at_low_priority
from flux_core.storage.fsync import fsync_path
from flux_core.storage.ids import packed

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IDS = "ids.json"
IDS_PACKED = "ids.npy"
ATTRIBUTES = "attributes.npz"
FILTER_VECTORS = "filter_vectors.npy"
CANARY = "canary.npz"
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
    #: A snapshot of a writable index: the last write-ahead log record it holds (flux.core.writes.writer).
    #: Written only when non-zero, so built artifacts read as before.
    wal_sequence: int = 0

    def to_json(self) -> str:
        data = asdict(self)
        data["metric"] = self.metric.value
        if not self.wal_sequence:
            del data["wal_sequence"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> Manifest:
        """Parse a manifest; errors name the file by ``path``'s last part only (they may reach clients)."""
        name = path.name
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"{name}: format_version {data.get('format_version')!r} is not supported "
                    f"(this Flux reads version {FORMAT_VERSION})"
                )
            data["metric"] = Metric(data["metric"])
            manifest = cls(**data)
        except ArtifactError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"{name}: not a valid manifest: {exc}") from exc
        if not isinstance(manifest.files, dict) or manifest.count < 0 or manifest.dimension < 1:
            raise ArtifactError(f"{name}: not a valid manifest: bad files, count or dimension")
        if not isinstance(manifest.wal_sequence, int) or manifest.wal_sequence < 0:
            raise ArtifactError(f"{name}: not a valid manifest: wal_sequence must be a whole number >= 0")
        return manifest


@dataclass
class Artifact:
    """A verified artifact, loaded: the manifest, the backend instance and the ids by label."""

    path: Path
    manifest: Manifest
    backend: Backend
    ids: np.ndarray  # indexed by label: UTF-8 bytes or str (``flux_core.storage.ids.packed``)
    #: The items' attributes by label (``load`` gives every artifact a store, empty without the file).
    attributes: AttributeStore | None = None
    #: The float32 copy of the vectors, memory-mapped; None when the artifact has none.
    filter_vectors: Matrix | None = None
    #: The gate's sample queries and their exact neighbours, computed when it was built; None without.
    canary: canaries.Canary | None = None


def write(
    directory: Path,
    backend: Backend,
    ids: Sequence[str | None],
    *,
    name: str,
    version: int,
    build_params: Mapping[str, float],
    wal_sequence: int = 0,
    attributes: AttributeStore | None = None,
    vectors: Matrix | None = None,
    canary: canaries.Canary | None = None,
) -> Manifest:
    """Save ``backend`` and ``ids`` as an artifact at ``directory``, which must not exist yet.

    ``ids[label]`` is None for a label that holds no item (a snapshot of an index with deletes).
    ``attributes`` and ``vectors`` (row i: label i's vector, as built) serve filtered searches;
    ``canary`` the activation gate.
    """
    if directory.exists():
        raise ArtifactError(f"{directory} already exists; artifacts are immutable, write a new version instead")
    held = len(ids) - sum(i is None for i in ids)
    if held != len(backend):
        raise ArtifactError(f"{held} ids for {len(backend)} vectors")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        files = backend.save(staging)
        files = [*files, *_write_filtering(staging, files, attributes, vectors)]
        if canary is not None:
            if CANARY in files:
                raise ArtifactError(f"the backend wrote {CANARY}, a file name Flux keeps for itself")
            canaries.save(canary, staging / CANARY)
            files.append(CANARY)
        (staging / IDS).write_text(json.dumps(list(ids), ensure_ascii=False), encoding="utf-8")
        by_label = packed(ids)
        if by_label.dtype.kind == "S":
            if IDS_PACKED in files:
                raise ArtifactError(f"the backend wrote {IDS_PACKED}, a file name Flux keeps for itself")
            np.save(staging / IDS_PACKED, by_label, allow_pickle=False)
            files.append(IDS_PACKED)
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
            wal_sequence=wal_sequence,
        )
        (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        for path in staging.iterdir():
            fsync_path(path)
        staging.chmod(0o755)
        fsync_path(staging)  # the names of its files
        os.rename(staging, directory)
        fsync_path(directory.parent)  # the rename itself: a snapshot may truncate the log next
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest(directory: Path) -> Manifest:
    """Read ``directory``'s manifest, without checking the other files."""
    directory = Path(directory)
    with _refusals(directory):
        return _read_manifest(directory)


def _read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{MANIFEST}: missing; is this an index artifact built by `flux build`?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{MANIFEST}: unreadable: {_why(exc)}") from exc
    return Manifest.from_json(text, path)


def verify(directory: Path, manifest: Manifest, pacer: Pacer | None = None) -> None:
    """Check that every file the manifest lists exists with its recorded size and checksum
    (pausing after each chunk hashed when ``pacer`` is given)."""
    for name, expected in sorted(manifest.files.items()):
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{MANIFEST}: file name {name!r} points outside the artifact")
        if not path.is_file():
            raise ArtifactError(f"{name}: missing (listed in {MANIFEST})")
        try:
            actual = _describe(path, pacer)
        except OSError as exc:
            raise ArtifactError(f"{name}: unreadable: {_why(exc)}") from exc
        if actual["bytes"] != expected.get("bytes"):
            raise ArtifactError(
                f"{name}: {actual['bytes']} bytes, the manifest says {expected.get('bytes')} (truncated?)"
            )
        if actual["sha256"] != expected.get("sha256"):
            raise ArtifactError(f"{name}: checksum mismatch, the file is corrupt")


def load(directory: Path, pacer: Pacer | None = None) -> Artifact:
    """Verify and open the artifact at ``directory``; refuse it with an error naming the bad file.
    With ``pacer`` (a server readying a version while it serves), the checksums are paced by it;
    without, they run at low priority."""
    directory = Path(directory)
    with _refusals(directory):
        return _load(directory, pacer)


def _load(directory: Path, pacer: Pacer | None) -> Artifact:
    manifest = _read_manifest(directory)
    if pacer is not None:
        verify(directory, manifest, pacer)
    else:  # hashing releases the GIL: keep it off the serving cores
        at_low_priority(lambda: verify(directory, manifest))
    by_label, live = _load_ids(directory, manifest)
    backend_cls = registry.get(manifest.backend)
    try:
        backend = backend_cls.load(directory, manifest.dimension, manifest.metric, manifest.count)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"the {manifest.backend} backend could not load the artifact: {_why(exc)}") from exc
    if len(backend) != manifest.count:
        raise ArtifactError(f"the backend holds {len(backend)} items, the manifest says {manifest.count}")
    return Artifact(
        directory,
        manifest,
        backend,
        by_label,
        attributes=_load_attributes(directory, manifest, live),
        filter_vectors=_load_filter_vectors(directory, manifest, len(by_label)),
        canary=_load_canary(directory, manifest, len(by_label)),
    )


def _write_filtering(
    staging: Path, taken: Sequence[str], attributes: AttributeStore | None, vectors: Matrix | None
) -> list[str]:
    """Write the attributes and the vector copy, those given; return the names written."""
    clash = {ATTRIBUTES, FILTER_VECTORS}.intersection(taken)
    if clash:
        raise ArtifactError(f"the backend wrote {min(clash)}, a file name Flux keeps for itself")
    written = []
    if attributes is not None:
        attributes.save(staging / ATTRIBUTES)
        written.append(ATTRIBUTES)
    if vectors is not None:
        np.save(staging / FILTER_VECTORS, np.ascontiguousarray(vectors, np.float32), allow_pickle=False)
        written.append(FILTER_VECTORS)
    return written


def _load_ids(directory: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """The ids by label (``packed``), and which labels hold an item.

    From ids.npy when the artifact has it: one read, where parsing ids.json and packing it
    would hold the GIL from the requests beside the load (23 ms for 100,000 ids, seconds for
    tens of millions, in calls that cannot be interrupted)."""
    if IDS_PACKED in manifest.files:
        try:
            by_label = np.load(directory / IDS_PACKED, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{IDS_PACKED}: unreadable: {_why(exc)}") from exc
        if by_label.dtype.kind != "S" or by_label.shape != (manifest.count,):
            raise ArtifactError(
                f"{IDS_PACKED}: holds {by_label.dtype} {by_label.shape}; the manifest says {manifest.count} ids "
                "(UTF-8 bytes, one per label)"
            )
        return by_label, np.ones(manifest.count, np.bool_)
    try:
        ids = json.loads((directory / IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{IDS}: unreadable: {_why(exc)}") from exc
    if (
        not isinstance(ids, list)
        or not set(map(type, ids)) <= {str, type(None)}  # a C loop: a load must not hold the GIL long
        or len(ids) - ids.count(None) != manifest.count
    ):
        raise ArtifactError(
            f"{IDS}: expected a list of {manifest.count} strings (and nulls for empty labels), as the manifest says"
        )
    live = np.ones(len(ids), np.bool_)
    if None in ids:  # labels that hold no item: a snapshot's
        live[[label for label, i in enumerate(ids) if i is None]] = False
    return packed(ids), live


def _load_attributes(directory: Path, manifest: Manifest, live: np.ndarray) -> AttributeStore:
    """The artifact's attributes; without the file, every label that holds an item (``live``) has none."""
    if ATTRIBUTES not in manifest.files:
        return AttributeStore.empty(len(live), live)
    store = AttributeStore.load(directory / ATTRIBUTES, len(live))
    store.clear(np.flatnonzero(~live))  # ids.json has the last word on which labels hold items
    return store


def _load_filter_vectors(directory: Path, manifest: Manifest, rows: int) -> Matrix | None:
    """The vector copy, mapped and read in at once (MAP_POPULATE, where the platform has it):
    exact scans touch scattered rows, and a page fault per row would cost more than the scan."""
    if FILTER_VECTORS not in manifest.files:
        return None
    path = directory / FILTER_VECTORS
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header, no data pages
        if header.dtype != np.float32 or header.shape != (rows, manifest.dimension) or not header.flags.c_contiguous:
            raise ArtifactError(
                f"{FILTER_VECTORS}: holds {header.dtype} {header.shape}, "
                f"expected float32 ({rows}, {manifest.dimension}) in row-major order"
            )
        offset = int(header.offset)
        del header
        with path.open("rb") as fh:
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapped = mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{FILTER_VECTORS}: unreadable: {_why(exc)}") from exc
    vectors: Matrix = np.frombuffer(mapped, np.float32, rows * manifest.dimension, offset)
    return vectors.reshape(rows, manifest.dimension)


def _load_canary(directory: Path, manifest: Manifest, labels: int) -> canaries.Canary | None:
    if CANARY not in manifest.files:
        return None
    try:
        return canaries.load(directory / CANARY, manifest.dimension, labels)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{CANARY}: unreadable: {_why(exc)}") from exc


def size_bytes(manifest: Manifest) -> int:
    """Total size of the artifact's files, as recorded."""
    return sum(int(f["bytes"]) for f in manifest.files.values())


def _describe(path: Path, pacer: Pacer | None = None) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):  # hashed between two pauses when paced: about 0.7 ms of CPU
            digest.update(chunk)
            size += len(chunk)
            if pacer is not None:
                pacer.pause()
    return {"sha256": digest.hexdigest(), "bytes": size}


#: The last refusal logged for each artifact directory, so that a poller reading a broken manifest
#: again and again logs it once.
_logged: dict[Path, str] = {}
_logged_lock = threading.Lock()


@contextmanager
def _refusals(directory: Path) -> Iterator[None]:
    """Log a refusal with the artifact's full path, and keep server paths out of the message that
    callers see (messages from elsewhere, a backend's or the OS's, may hold them)."""
    try:
        yield
    except ArtifactError as exc:
        with _logged_lock:
            new = _logged.get(directory) != exc.message
            _logged[directory] = exc.message
        if new:
            log.warning("artifact %s refused: %s", directory, exc.message)
        exc.message = _relative(exc.message, directory)
        exc.args = (exc.message,)
        raise
    else:
        with _logged_lock:
            _logged.pop(directory, None)


def _relative(message: str, directory: Path) -> str:
    """``message`` with ``directory`` (as given, absolute and resolved) left out of every path naming it."""
    for prefix in dict.fromkeys((str(directory), os.path.abspath(directory), os.path.realpath(directory))):
        message = message.replace(prefix + os.sep, "")
        message = re.sub(re.escape(prefix) + r"(?![\w.-])", "the artifact", message)
    return message


def _why(exc: BaseException) -> str:
    """What went wrong, without the file name an OSError carries (callers get the name relative)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
