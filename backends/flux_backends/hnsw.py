"""``hnsw``: graph search with hnswlib, the default backend for low-latency serving."""

from __future__ import annotations

import bisect
import io
import json
import os
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import hnswlib
import numpy as np

from flux_core.backend import Backend, Capabilities, Labels, Matrix, Metric, Param, Progress, ReadWriteGate, pad_results

_SPACES = {Metric.L2: "l2", Metric.COSINE: "cosine", Metric.IP: "ip"}
_PROGRESS_SECONDS = 0.5  # how often a build reports how many items are in
#: Query rows searched per turn at the gate: bounds how long one batch keeps a waiting ef (or write) out.
_ROWS_PER_TURN = 64
#: Items per read of the index file in ``vector_blocks``: about 5 MB at 128 dimensions.
_ITEMS_PER_READ = 8192
#: The seed hnswlib draws the levels of items added after a load from (its own default).
_LOADED_SEED = 100


class HnswBackend(Backend):
    """hnswlib's HNSW graph. Its distances already follow Flux's convention.

    hnswlib keeps ``ef`` as index-wide state and is not safe when inserts and queries
    overlap, so every call goes through a phase-fair ``ReadWriteGate``: searches with the same
    ``ef`` run together (hnswlib releases the GIL); a search asking for another ``ef``, and every
    write, waits until those in flight finish, and closes the door to newcomers meanwhile. A
    batch takes the gate once per slice of rows, so no caller waits for a whole long batch.
    Deletes are hnswlib's tombstones (``mark_deleted``); the deleted labels are saved beside
    the index. A new label takes the slot of a deleted item when there is one (hnswlib's
    ``replace_deleted``), so an index fed with upserts and deletes grows with its live items,
    not with its history.

    ``load`` and ``vector_blocks`` read the index file themselves (``_IndexFile``), because
    hnswlib holds the GIL throughout its own ``load_index`` (0.1 to 0.2 s for 100,000 x 128:
    it asks the kernel for its file position twice per item) and its ``get_items`` (about 6 us
    a vector at 128 dimensions: it builds a Python float per value), and the requests of the
    versions already serving need the GIL meanwhile.
    """

    name = "hnsw"
    capabilities = Capabilities(mutable=True, supports_delete=True, thread_safe_search=True)
    build_params: ClassVar[Mapping[str, Param]] = {
        "M": Param(16, 2, 200, doc="graph degree; more gives higher recall and more memory"),
        "ef_construction": Param(200, 1, 10_000, doc="build-time beam; more gives a better graph, slower build"),
        "seed": Param(100, 0, 2**31 - 1, doc="random seed, for reproducible builds"),
    }
    search_params: ClassVar[Mapping[str, Param]] = {
        "ef": Param(64, 1, 100_000, doc="search beam, at least k is used; more gives higher recall, slower"),
    }

    def __init__(
        self,
        dimension: int,
        metric: Metric,
        index: hnswlib.Index,
        deleted: set[int] | None = None,
        source: _IndexFile | None = None,
    ) -> None:
        super().__init__(dimension, metric)
        self._index = index
        # Labels deleted and not added since. hnswlib may have given such a label's slot to a
        # new label (then the label is gone from the library too; ``save`` prunes those).
        self._deleted = deleted or set()
        self._vacant = len(self._deleted)  # deleted items that still hold a slot
        self._gate = ReadWriteGate(on_switch=index.set_ef)
        # The file the index was loaded from, while the index is still as loaded (a write forgets it).
        self._source = source

    @classmethod
    def library_version(cls) -> str:
        return f"hnswlib {version('hnswlib')}"

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> HnswBackend:
        n, dimension = vectors.shape
        index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        index.init_index(
            max_elements=max(n, 1),
            M=int(params["M"]),
            ef_construction=int(params["ef_construction"]),
            random_seed=int(params["seed"]),
            allow_replace_deleted=True,
        )
        # One add_items call (it releases the GIL), watched from here for progress: chunked
        # calls would leave threads idle at every chunk's end.
        done = threading.Event()
        watcher = threading.Thread(target=_report, args=(index, n, progress, done), daemon=True)
        if progress:
            watcher.start()
        try:
            if n:
                index.add_items(vectors, np.arange(n), num_threads=threads)
        finally:
            done.set()
        if progress:
            watcher.join()
            progress(n, n)
        return cls(dimension, metric, index)

    def save(self, directory: Path) -> list[str]:
        with self._gate.writing():  # no write may change the graph halfway through
            self._deleted.intersection_update(self._index.get_ids_list())  # forget labels whose slot was reused
            self._index.save_index(str(directory / "index.hnsw"))
            (directory / "deleted.json").write_text(json.dumps(sorted(self._deleted)))
        return ["index.hnsw", "deleted.json"]

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> HnswBackend:
        deleted = set(json.loads((directory / "deleted.json").read_text()))
        source = _IndexFile.open(directory / "index.hnsw")
        if source.dimension != dimension:  # hnswlib would load it anyway and read garbage
            raise ValueError(f"index.hnsw holds {source.dimension}-dimensional vectors, expected {dimension}")
        index = source.load(_SPACES[metric], dimension, max_elements=max(count + len(deleted), 1))
        if index.get_current_count() - len(deleted) != count:
            raise ValueError(
                f"index.hnsw holds {index.get_current_count()} items of which {len(deleted)} deleted, expected {count}"
            )
        return cls(dimension, metric, index, deleted, source)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        available = len(self)
        if available == 0 or len(queries) == 0:
            return pad_results(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), k)
        wanted = min(k, available)
        ef = int(params["ef"])
        if len(queries) <= _ROWS_PER_TURN:
            return self._knn(queries, k, wanted, ef, threads)
        # A long batch takes the gate once per slice, so a search with another ef (or a write)
        # waits for one slice, not the whole batch.
        parts = [
            self._knn(queries[start : start + _ROWS_PER_TURN], k, wanted, ef, threads)
            for start in range(0, len(queries), _ROWS_PER_TURN)
        ]
        return np.vstack([labels for labels, _ in parts]), np.vstack([distances for _, distances in parts])

    def _knn(self, queries: Matrix, k: int, wanted: int, ef: int, threads: int) -> tuple[Labels, Matrix]:
        with self._gate.reading(ef):
            while True:
                try:
                    labels, distances = self._index.knn_query(queries, k=wanted, num_threads=threads)
                    break
                except RuntimeError:
                    # Tombstones can leave a query with fewer than k reachable items;
                    # hnswlib then refuses the whole batch. Ask for fewer and pad.
                    if wanted == 1:
                        return pad_results(
                            np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), k
                        )
                    wanted //= 2
        return pad_results(labels.astype(np.int64, copy=False), distances, k)

    def add(self, vectors: Matrix, labels: Labels) -> None:
        rows = dict(zip(labels.tolist(), range(len(labels)), strict=True))  # a repeated label keeps its last row
        with self._gate.writing():
            self._source = None  # the file no longer holds what the index does
            if not self._vacant:  # no slot to reuse: hnswlib inserts new labels and updates present ones
                self._insert(vectors[list(rows.values())], list(rows), replace_deleted=False)
                self._deleted.difference_update(rows)
                return
            # hnswlib's replace_deleted must only see labels it does not hold (it would duplicate
            # a present one), and a label deleted in place is revived, then updated.
            present: list[int] = []
            new: list[int] = []
            for label in rows:
                if label in self._deleted:
                    self._deleted.discard(label)
                    (present if self._revive(label) else new).append(label)
                else:
                    (present if self._holds(label) else new).append(label)
            if present:
                self._index.add_items(vectors[[rows[label] for label in present]], present, num_threads=1)
            if new:
                self._insert(vectors[[rows[label] for label in new]], new, replace_deleted=True)

    def _insert(self, vectors: Matrix, labels: list[int], *, replace_deleted: bool) -> None:
        before = self._index.get_current_count()
        needed = before + max(0, len(labels) - (self._vacant if replace_deleted else 0))
        if needed > self._index.get_max_elements():
            self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
        self._index.add_items(vectors, labels, num_threads=1, replace_deleted=replace_deleted)
        if replace_deleted:  # every label is new: those that did not add a slot took a deleted item's
            self._vacant -= len(labels) - (self._index.get_current_count() - before)

    def _revive(self, label: int) -> bool:
        """Undelete ``label`` if its slot is still its own; False when a new label took the slot."""
        try:
            self._index.unmark_deleted(label)
        except RuntimeError:
            return False
        self._vacant -= 1
        return True

    def _holds(self, label: int) -> bool:
        try:
            self._index.get_items([label], return_type="numpy")
        except RuntimeError:
            return False
        return True

    def delete(self, labels: Labels) -> None:
        with self._gate.writing():
            self._source = None
            for label in labels.tolist():
                if label in self._deleted:
                    raise KeyError(f"label {label} is not in the index (already deleted)")
                try:
                    self._index.mark_deleted(label)
                except RuntimeError as exc:
                    raise KeyError(f"label {label} is not in the index") from exc
                self._deleted.add(label)
                self._vacant += 1

    def get_vectors(self, labels: Labels) -> Matrix:
        with self._gate.reading(None):  # a write may be resizing the index's memory
            deleted = self._deleted.intersection(labels.tolist())
            if deleted:
                raise KeyError(f"label {min(deleted)} is not in the index (deleted)")
            try:
                return np.asarray(self._index.get_items(labels, return_type="numpy"), dtype=np.float32)
            except RuntimeError as exc:
                raise KeyError(str(exc)) from exc

    def vector_blocks(self, labels: Labels) -> Iterator[tuple[Labels, Matrix]]:
        """From the index file while the index is as loaded from it, a few MB per read (the
        reads release the GIL); otherwise, and for what is left once a write changes the index,
        ``get_vectors`` a few hundred at a time."""
        source = self._source
        if source is None or not len(labels):
            yield from super().vector_blocks(labels)
            return
        deleted = self._deleted.intersection(labels.tolist()) if self._deleted else set()
        if deleted:
            raise KeyError(f"label {min(deleted)} is not in the index (deleted)")
        wanted = np.zeros(int(labels.max()) + 1, np.bool_)
        wanted[labels] = True
        whole = False  # whether the file was read to its end, as loaded
        try:
            for block in source.vectors(wanted, self.dimension):
                if self._source is not source:  # a write came: what is left comes from the index
                    break
                yield block
            else:
                whole = True
        except _Unreadable:
            self._source = None  # gone, or another file now: not the one loaded
        left = np.flatnonzero(wanted)
        if whole and len(left):
            raise KeyError(f"label {int(left[0])} is not in the index")
        yield from super().vector_blocks(left)

    def __len__(self) -> int:
        return int(self._index.get_current_count()) - self._vacant

    def stats(self) -> dict[str, Any]:
        return {
            "M": int(self._index.M),
            "ef_construction": int(self._index.ef_construction),
            "max_elements": int(self._index.max_elements),
            "deleted": self._vacant,
        }


def _report(index: hnswlib.Index, total: int, progress: Progress | None, done: threading.Event) -> None:
    while progress and not done.wait(_PROGRESS_SECONDS):
        progress(min(int(index.element_count), total), total)


#: hnswlib's index file header (hnswalg.h, ``saveIndex``): offsetLevel0_, max_elements_, cur_element_count,
#: size_data_per_element_, label_offset_, offsetData_ (size_t), maxlevel_ (int), enterpoint_node_ (unsigned),
#: maxM_, maxM0_, M_ (size_t), mult_ (double), ef_construction_ (size_t). Then every item's level-0 record
#: (its links, vector and label), one after another; then each item's upper-level links, as a uint32 byte
#: count and that many bytes.
_HEADER = struct.Struct("<6QiI3QdQ")


@dataclass(frozen=True)
class _IndexFile:
    """An hnswlib index file: its layout, read from the header, and which file it was (to read it again)."""

    path: Path
    identity: tuple[int, int, int, int]  # device, inode, size, modification time: the file loaded, unchanged
    offset_level0: int
    max_elements: int
    count: int
    record: int  # bytes per item at level 0
    label_offset: int
    data_offset: int
    max_level: int
    entry_point: int
    max_m: int
    max_m0: int
    m: int
    mult: float
    ef_construction: int

    @classmethod
    def open(cls, path: Path) -> _IndexFile:
        with path.open("rb", buffering=0) as fh:
            header = fh.read(_HEADER.size)
            identity = _identity(fh)
        if len(header) < _HEADER.size:
            raise ValueError(f"{path.name} is too short to be an hnswlib index")
        layout = cls(path, identity, *_HEADER.unpack(header))
        if (
            layout.offset_level0 != 0
            or layout.data_offset != layout.max_m0 * 4 + 4
            or layout.record != layout.label_offset + 8
            or layout.label_offset < layout.data_offset
            or (layout.label_offset - layout.data_offset) % 4
            or _HEADER.size + layout.count * layout.record > identity[2]
        ):
            raise ValueError(f"{path.name} is not an hnswlib index this version of hnswlib reads, or is corrupt")
        return layout

    @property
    def dimension(self) -> int:
        return (self.label_offset - self.data_offset) // 4

    def load(self, space: str, dimension: int, max_elements: int) -> hnswlib.Index:
        """The index, as hnswlib's ``load_index`` would make it.

        The file is read whole (the reads release the GIL) and handed to hnswlib's unpickling
        constructor, which holds the GIL only while it copies the arrays in: about 35 ms for
        100,000 x 128, where ``load_index`` holds it 0.1 to 0.2 s.
        """
        data = np.empty(self.identity[2], np.uint8)
        with self.path.open("rb", buffering=0) as fh:
            if _identity(fh) != self.identity:
                raise ValueError(f"{self.path.name} changed while it was being loaded")
            _read_into(fh, 0, data)
        end = _HEADER.size + self.count * self.record
        records = data[_HEADER.size : end].reshape(self.count, self.record)
        labels = np.ascontiguousarray(records[:, self.label_offset : self.label_offset + 8]).view("<u8").ravel()
        levels, links = self._upper_levels(data[end:])
        params = {
            "ser_version": 1,
            "space": space,
            "dim": dimension,
            "index_inited": True,
            "ep_added": True,
            "normalize": space == "cosine",
            "num_threads": os.cpu_count() or 1,
            "seed": _LOADED_SEED,
            "ef": 10,
            "offset_level0": self.offset_level0,
            "max_elements": max(max_elements, self.count),
            "cur_element_count": self.count,
            "size_data_per_element": self.record,
            "label_offset": self.label_offset,
            "offset_data": self.data_offset,
            "max_level": self.max_level,
            "enterpoint_node": self.entry_point,
            "max_M": self.max_m,
            "max_M0": self.max_m0,
            "M": self.m,
            "mult": self.mult,
            "ef_construction": self.ef_construction,
            "has_deletions": bool((records[:, self.offset_level0 + 2] & 1).any()),  # hnswlib's DELETE_MARK
            "size_links_per_element": self.max_m * 4 + 4,
            "allow_replace_deleted": True,
            "label_lookup_external": labels,
            "label_lookup_internal": np.arange(self.count, dtype=np.uint32),
            "element_levels": levels,
            "data_level0": data[_HEADER.size : end].view(np.int8),
            "link_lists": links.view(np.int8),
        }
        return hnswlib.Index(params)

    def _upper_levels(self, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each item's number of upper levels, and all their links one item after another, from the
        file's last part: per item, a uint32 byte count and that many bytes (most counts are 0)."""
        corrupt = ValueError(f"{self.path.name}: its upper-level links do not add up; the file is corrupt")
        per_level = self.max_m * 4 + 4
        if len(tail) % 4:
            raise corrupt
        words = tail.view("<u4")
        # Between two items with upper levels, every word is the zero count of an item without:
        # jump from one non-zero count to the next instead of reading every count.
        nonzero = np.flatnonzero(words).tolist()
        levels = np.zeros(self.count, np.int32)
        starts: list[int] = []
        lengths: list[int] = []
        position = item = 0
        while item < self.count:
            at = bisect.bisect_left(nonzero, position)
            if at == len(nonzero) or nonzero[at] - position >= self.count - item:  # no other item has upper levels
                position += self.count - item
                break
            following = nonzero[at]
            item += following - position
            level, rest = divmod(int(words[following]), per_level)
            if rest or level > self.max_level or following + 1 + level * per_level // 4 > len(words):
                raise corrupt
            levels[item] = level
            starts.append(following + 1)
            lengths.append(level * per_level // 4)
            position = following + 1 + lengths[-1]
            item += 1
        if position != len(words):
            raise corrupt
        first = np.asarray(starts, np.int64) - (np.cumsum(lengths, dtype=np.int64) - np.asarray(lengths, np.int64))
        where = np.repeat(first, lengths) + np.arange(sum(lengths), dtype=np.int64)
        return levels, words[where]

    def vectors(self, wanted: np.ndarray, dimension: int) -> Iterator[tuple[Labels, Matrix]]:
        """The level-0 vectors of the labels ``wanted`` marks, a block of items at a time; each label
        found is unmarked. Raises ``_Unreadable`` when the file is gone or no longer the one loaded."""
        try:
            fh = self.path.open("rb", buffering=0)
        except OSError as exc:
            raise _Unreadable from exc
        with fh:
            if _identity(fh) != self.identity:
                raise _Unreadable
            vector = slice(self.data_offset, self.data_offset + dimension * 4)
            for start in range(0, self.count, _ITEMS_PER_READ):
                records = np.empty((min(_ITEMS_PER_READ, self.count - start), self.record), np.uint8)
                try:
                    _read_into(fh, _HEADER.size + start * self.record, records)
                except (OSError, ValueError) as exc:
                    raise _Unreadable from exc
                labels = np.ascontiguousarray(records[:, self.label_offset : self.label_offset + 8])
                labels = labels.view("<u8").ravel().astype(np.int64)
                keep = (labels < len(wanted)) & ((records[:, self.offset_level0 + 2] & 1) == 0)
                keep[keep] = wanted[labels[keep]]
                if keep.any():
                    labels = labels[keep]
                    wanted[labels] = False
                    yield labels, np.ascontiguousarray(records[keep, vector]).view(np.float32)


class _Unreadable(Exception):
    """The index file cannot be read again as it was loaded."""


def _identity(fh: io.FileIO) -> tuple[int, int, int, int]:
    stat = os.fstat(fh.fileno())
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _read_into(fh: io.FileIO, offset: int, out: np.ndarray) -> None:
    """Fill ``out`` from ``fh`` at ``offset`` (the reads release the GIL)."""
    view = out.data.cast("B")
    fh.seek(offset)
    done = 0
    while done < len(view):
        got = fh.readinto(view[done:])
        if not got:
            raise ValueError("index.hnsw is shorter than its header says")
        done += got
