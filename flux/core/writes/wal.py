"""The write-ahead log of one writable index: checksummed records in numbered segment files.

Layout of a log directory::

    LOCK                       held (flock) by the one process that writes the log
    00000000000000000001.wal   a segment: the records from sequence 1 on
    00000000000000004097.wal   the next segment, begun when a snapshot was taken

A record is a 20-byte header followed by its payload, little-endian::

    u32 payload length | u64 sequence | u32 crc32(payload) | u32 crc32(the 16 bytes before)

Sequences start at 1 and rise by one from record to record, across segments. The payload is
opaque here (``flux.core.writes.mutations`` defines it).

Durability: ``append`` writes a batch of records with one write and makes them durable with
one fdatasync before it returns. A new segment's directory entry is synced too.

Recovery (``Log.open``) reads every record and tells a crash from damage:

* A torn tail is what a crash during an append leaves: the last segment ends in a cut-short
  header or payload, in zeros, or in a final record whose payload checksum fails. Nobody was
  told those writes succeeded, so they are dropped with a warning, and the file is cut back to
  its last whole record so that new records never follow garbage.
* A corrupt record is any other failed check: a bad checksum with more data after it, a
  sequence out of order, or damage in an earlier segment (each was synced before the next was
  begun). Recovery raises LogCorrupt naming the file, the offset and the sequence: an index
  missing the writes from there on would answer with wrong data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from flux_core.errors import FailedPrecondition, LogCorrupt
from flux_core.storage.fsync import fsync_path

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IQI")  # payload length, sequence, payload crc32
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size
MAX_PAYLOAD = 1 << 30
SUFFIX = ".wal"
LOCK = "LOCK"


def encode(sequence: int, payload: bytes) -> bytes:
    """One record as it is stored: header, then payload."""
    head = _HEADER.pack(len(payload), sequence, zlib.crc32(payload))
    return head + _HEADER_CRC.pack(zlib.crc32(head)) + payload


def segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


class LogLocked(FailedPrecondition):
    """Another process holds the log's lock: it writes the index, this one may only read it."""


@dataclass(frozen=True)
class Torn:
    """What recovery cut off the end of the log."""

    segment: Path
    offset: int
    dropped_bytes: int
    why: str


class _TornTail(Exception):
    def __init__(self, offset: int, why: str) -> None:
        super().__init__(why)
        self.offset = offset
        self.why = why


class Log:
    """An open log: appends go to its newest segment; reads may run beside them.

    Only ``Log.open`` creates one, after recovering the directory. ``first`` is the oldest
    sequence the log can still replay, ``last`` the newest record's (``first - 1`` when empty).
    """

    def __init__(self, directory: Path, lock_fd: int, segments: list[int], last: int, torn: Torn | None) -> None:
        self.directory = directory
        self.torn = torn
        self.last = last
        self.syncs = 0  # fdatasyncs of appended records, for tests and benchmarks
        self._lock_fd = lock_fd
        self._segments = segments
        self._io = threading.Lock()  # appends, rotation and pruning
        self._fd = -1
        self._open_segment(segments[-1] if segments else last + 1, create=not segments)

    @property
    def first(self) -> int:
        return self._segments[0]

    # -- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path) -> Log:
        """Lock ``directory`` (creating it), check every record and cut off a torn tail."""
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise LogLocked(
                f"{directory} is locked by another process: only one Flux server may write an index"
            ) from None
        try:
            segments = sorted(int(p.name[: -len(SUFFIX)]) for p in directory.glob("*" + SUFFIX) if _is_segment(p))
            last, torn = 0, None
            for number, first in enumerate(segments):
                path = directory / segment_name(first)
                newest = number == len(segments) - 1
                last = first - 1
                try:
                    for _, sequence, _ in _records(path, first, sealed=not newest):
                        last = sequence
                except _TornTail as tail:
                    torn = _cut(path, tail)
            return cls(directory, lock_fd, segments, last, torn)
        except BaseException:
            os.close(lock_fd)
            raise

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[int, bytes]]) -> None:
        """Write ``records`` (sequence, payload), which continue the log, and sync them to disk."""
        with self._io:
            if records[0][0] != self.last + 1:
                raise ValueError(f"record {records[0][0]} does not follow record {self.last}")
            data = b"".join(encode(sequence, payload) for sequence, payload in records)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
            self.syncs += 1
            self.last = records[-1][0]

    def rotate(self) -> None:
        """Send the records after ``last`` to a new segment, so that a snapshot can free the older ones."""
        with self._io:
            if self._segments[-1] != self.last + 1:  # else the newest segment is still empty
                self._open_segment(self.last + 1, create=True)

    def advance(self, sequence: int) -> None:
        """Number the next record ``sequence + 1`` or later: a snapshot already holds the writes up to
        ``sequence``, so records numbered below it would be skipped when the log is replayed."""
        with self._io:
            if sequence <= self.last:
                return
            empty = self._segments[-1] == self.last + 1
            self._open_segment(sequence + 1, create=True)
            if empty:
                self._remove(self._segments.pop(-2))
            self.last = sequence

    def drop_through(self, sequence: int) -> int:
        """Delete the segments whose every record is at or before ``sequence``; how many went."""
        with self._io:
            gone = 0
            while len(self._segments) > 1 and self._segments[1] <= sequence + 1:
                self._remove(self._segments.pop(0))
                gone += 1
            if gone:
                fsync_path(self.directory)
            return gone

    def close(self) -> None:
        with self._io:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    def _open_segment(self, first: int, *, create: bool) -> None:
        path = self.directory / segment_name(first)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
        if create:
            os.fsync(fd)
            fsync_path(self.directory)
            self._segments.append(first)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd

    def _remove(self, first: int) -> None:
        (self.directory / segment_name(first)).unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------

    def read(self, after: int, until: int) -> Iterator[tuple[int, bytes]]:
        """The records numbered ``after + 1`` to ``until``, in order; every one must be there.

        Safe beside appends, for records already appended: ``until`` must not pass ``last``.
        """
        expected = after + 1
        segments = list(self._segments)
        for number, first in enumerate(segments):
            following = segments[number + 1] if number + 1 < len(segments) else None
            if expected > until:
                return
            if following is not None and following <= expected:
                continue  # every record of this segment comes before the ones wanted
            if first > expected:
                break
            path = self.directory / segment_name(first)
            for _, sequence, payload in _records(path, first, sealed=following is not None):
                if sequence >= expected:
                    yield sequence, payload
                    expected = sequence + 1
                    if sequence == until:
                        return
        if expected <= until:
            raise LogCorrupt(
                f"{self.directory}: records {expected} to {until} are missing (segments start at "
                f"{', '.join(map(str, segments)) or 'none'}); the index cannot be brought up to date"
            )


def _is_segment(path: Path) -> bool:
    stem = path.name[: -len(SUFFIX)]
    return stem.isdigit() and path.is_file()


def _records(path: Path, first: int, *, sealed: bool) -> Iterator[tuple[int, int, bytes]]:
    """(offset, sequence, payload) of each record in one segment file, checked.

    Raises LogCorrupt for damage, and _TornTail for a torn end of the newest (unsealed) segment.
    """

    def bad(offset: int, why: str, torn: bool = False) -> Exception:
        if torn and not sealed:
            return _TornTail(offset, why)
        return LogCorrupt(
            f"{path}: the record at byte {offset} (sequence {expected}) is corrupt: {why}. Recovery of this "
            f"index stops here rather than serve it without the writes from this record on; to accept losing "
            f"them, truncate {path.name} to {offset} bytes and remove the segments after it"
        )

    expected = first
    with path.open("rb", buffering=1 << 20) as fh:
        size = os.fstat(fh.fileno()).st_size
        offset = 0
        while offset < size:
            header = fh.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                raise bad(offset, f"a header cut short at {len(header)} of {HEADER_BYTES} bytes", torn=True)
            length, sequence, payload_crc = _HEADER.unpack_from(header)
            (header_crc,) = _HEADER_CRC.unpack_from(header, _HEADER.size)
            if zlib.crc32(header[: _HEADER.size]) != header_crc:
                zeros = not header.strip(b"\0") and _rest_is_zero(fh)
                raise bad(offset, "only zeros from here on" if zeros else "header checksum mismatch", torn=zeros)
            if sequence != expected:
                raise bad(offset, f"it holds sequence {sequence}")
            if length > MAX_PAYLOAD:
                raise bad(offset, f"a payload of {length} bytes is beyond any Flux writes")
            end = offset + HEADER_BYTES + length
            if end > size:
                raise bad(offset, f"a payload cut short at {size - offset - HEADER_BYTES} of {length} bytes", torn=True)
            payload = fh.read(length)
            if zlib.crc32(payload) != payload_crc:
                raise bad(offset, "payload checksum mismatch", torn=end == size)
            yield offset, sequence, payload
            offset = end
            expected += 1


def _rest_is_zero(fh: BinaryIO) -> bool:
    while chunk := fh.read(1 << 20):
        if chunk.strip(b"\0"):
            return False
    return True


def _cut(path: Path, tail: _TornTail) -> Torn:
    size = path.stat().st_size
    torn = Torn(path, tail.offset, size - tail.offset, tail.why)
    log.warning(
        "%s: dropped a torn last record at byte %d (%d bytes: %s); it was being written when the "
        "process stopped and was never acknowledged",
        path,
        tail.offset,
        torn.dropped_bytes,
        tail.why,
    )
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, tail.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return torn
