"""hnswlib's index file, read without hnswlib: the header's layout, a load that lets go of the GIL
while it reads, and stored vectors read in blocks (what the activation gate scans)."""

from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from flux_core.backend import Labels, Matrix

#: Items per read of the index file in ``vector_blocks``: about 5 MB at 128 dimensions.
ITEMS_PER_READ = 8192
#: The seed hnswlib draws the levels of items added after a load from (its own default).
_LOADED_SEED = 100


#: hnswlib's index file header (hnswalg.h, ``saveIndex``): offsetLevel0_, max_elements_, cur_element_count,
#: size_data_per_element_, label_offset_, offsetData_ (size_t), maxlevel_ (int), enterpoint_node_ (unsigned),
#: maxM_, maxM0_, M_ (size_t), mult_ (double), ef_construction_ (size_t). Then every item's level-0 record
#: (its links, vector and label), one after another; then each item's upper-level links, as a uint32 byte
#: count and that many bytes.
HEADER = struct.Struct("<6QiI3QdQ")


@dataclass(frozen=True)
class IndexFile:
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
    def open(cls, path: Path) -> IndexFile:
        with path.open("rb", buffering=0) as fh:
            header = fh.read(HEADER.size)
            identity = _identity(fh)
        if len(header) < HEADER.size:
            raise ValueError(f"{path.name} is too short to be an hnswlib index")
        layout = cls(path, identity, *HEADER.unpack(header))
        if (
            layout.offset_level0 != 0
            or layout.data_offset != layout.max_m0 * 4 + 4
            or layout.record != layout.label_offset + 8
            or layout.label_offset < layout.data_offset
            or (layout.label_offset - layout.data_offset) % 4
            or HEADER.size + layout.count * layout.record > identity[2]
        ):
            raise ValueError(f"{path.name} is not an hnswlib index this version of hnswlib reads, or is corrupt")
        return layout

    @property
    def dimension(self) -> int:
        return (self.label_offset - self.data_offset) // 4

    def load(self, space: str, dimension: int, max_elements: int) -> hnswlib.Index:
        """The index, as hnswlib's ``load_index`` would make it.

        The file is mapped (its pages come from the page cache, where checksumming it left them)
        and parsed with numpy, then handed to hnswlib's unpickling constructor, which holds the
        GIL only while it copies the arrays in: about 35 ms for 100,000 x 128 on an idle core
        (mostly the kernel providing hnswlib's new memory), where ``load_index`` holds it 0.1 to
        0.2 s. No Python loop runs over the items: one would hold the GIL against the requests.
        """
        with self._mapped() as data:
            end = HEADER.size + self.count * self.record
            records = data[HEADER.size : end].reshape(self.count, self.record)
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
                "data_level0": data[HEADER.size : end].view(np.int8),
                "link_lists": links.view(np.int8),
            }
            index = hnswlib.Index(params)
            del params, records
        return index

    def _upper_levels(self, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each item's number of upper levels, and all their links one item after another, from the
        file's last part: per item, a uint32 byte count and that many bytes of links.

        Most counts are 0, so between two items with upper levels every word is the zero count
        of an item without. From each non-zero word, as if it were such a count, the next one
        is the first non-zero word past the links it counts; the items with upper levels are
        those reached from the first non-zero word, found by doubling jumps.
        """
        corrupt = ValueError(f"{self.path.name}: its upper-level links do not add up; the file is corrupt")
        if len(tail) % 4:
            raise corrupt
        words = tail.view("<u4").astype(np.int64)
        per_level = self.max_m * 4 + 4  # bytes of links per level: a count, then max_m links
        nonzero = np.flatnonzero(words)
        nexts = np.searchsorted(nonzero, nonzero + 1 + words[nonzero] // 4)  # len(nonzero): none
        jump = np.append(nexts, len(nonzero))
        reached = np.zeros(min(len(nonzero), 1), np.int64)  # the first non-zero word starts an item's links
        while True:  # after round r, ``reached`` holds the first 2**r of them and ``jump`` goes 2**r ahead
            ahead = jump[reached]
            ahead = ahead[ahead < len(nonzero)]
            if not len(ahead):
                break
            reached = np.concatenate([reached, ahead])
            jump = jump[jump]
        starts = nonzero[reached]
        levels, rest = np.divmod(words[starts], per_level)
        lengths = levels * (per_level // 4)
        before = np.cumsum(lengths) - lengths  # link words ahead of each item's count
        items = starts - before  # counts ahead of it: its item number
        if (
            rest.any()
            or (levels > self.max_level).any()
            or len(words) - int(lengths.sum()) != self.count
            or (len(items) and (items[-1] >= self.count or starts[-1] + 1 + lengths[-1] > len(words)))
        ):
            raise corrupt
        element_levels = np.zeros(self.count, np.int32)
        element_levels[items] = levels
        where = np.repeat(starts + 1 - before, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
        return element_levels, words[where].astype("<u4")

    def vectors(self, wanted: np.ndarray, dimension: int) -> Iterator[tuple[Labels, Matrix]]:
        """The level-0 vectors of the labels ``wanted`` marks, a block of items at a time; each label
        found is unmarked. Raises ``Unreadable`` when the file is gone or no longer the one loaded."""
        vector = slice(self.data_offset, self.data_offset + dimension * 4)
        with self._mapped() as data:
            level0 = data[HEADER.size : HEADER.size + self.count * self.record].reshape(self.count, self.record)
            for start in range(0, self.count, ITEMS_PER_READ):
                records = level0[start : start + ITEMS_PER_READ]
                labels = np.ascontiguousarray(records[:, self.label_offset : self.label_offset + 8])
                labels = labels.view("<u8").ravel().astype(np.int64)
                keep = (labels < len(wanted)) & ((records[:, self.offset_level0 + 2] & 1) == 0)
                keep[keep] = wanted[labels[keep]]
                if keep.any():
                    labels = labels[keep]
                    wanted[labels] = False
                    yield labels, np.ascontiguousarray(records[keep, vector]).view(np.float32)

    @contextmanager
    def _mapped(self) -> Iterator[np.ndarray]:
        """The file's bytes, mapped read-only with its pages mapped in at once; ``Unreadable`` when
        the file is gone or is no longer the one first opened."""
        try:
            with self.path.open("rb", buffering=0) as fh:
                if _identity(fh) != self.identity:
                    raise Unreadable(f"{self.path.name} is not the file it was")
                flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
                mapped = mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        except OSError as exc:
            raise Unreadable(str(exc)) from exc
        try:
            yield np.frombuffer(mapped, np.uint8)
        finally:
            with suppress(BufferError):  # views still held: the mapping goes with the last of them
                mapped.close()


class Unreadable(OSError):
    """The index file cannot be read as it was first opened: it is gone, or another file now."""


def _identity(fh: io.FileIO) -> tuple[int, int, int, int]:
    stat = os.fstat(fh.fileno())
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
