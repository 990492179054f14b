"""The write-ahead log on real files: records, segments, torn tails, corruption, the lock, group commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from flux.core.writes import wal
from flux.core.writes.commit import GroupCommit, Ticket
from flux_core.errors import Code, FailedPrecondition, LogCorrupt


def payload(sequence: int) -> bytes:
    return f"write number {sequence}".encode() * (1 + sequence % 3)


def written(directory: Path, count: int) -> Path:
    """A log holding records 1..count, closed; returns its only segment."""
    log = wal.Log.open(directory)
    for sequence in range(1, count + 1):
        log.append([(sequence, payload(sequence))])
    log.close()
    return directory / wal.segment_name(1)


def offsets(segment: Path) -> list[int]:
    """The byte offset of each record in a segment, and the end."""
    data, at, found = segment.read_bytes(), 0, []
    while at < len(data):
        found.append(at)
        at += wal.HEADER_BYTES + int.from_bytes(data[at : at + 4], "little")
    return [*found, at]


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def test_records_come_back_in_order_after_a_reopen(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)
    log.append([(1, payload(1))])
    log.append([(2, payload(2)), (3, payload(3)), (4, payload(4))])
    assert (log.first, log.last, log.syncs) == (1, 4, 2)
    log.close()
    reopened = wal.Log.open(tmp_path)
    assert (reopened.first, reopened.last, reopened.torn) == (1, 4, None)
    assert list(reopened.read(0, 4)) == [(s, payload(s)) for s in range(1, 5)]
    assert list(reopened.read(2, 3)) == [(3, payload(3))]
    reopened.append([(5, payload(5))])
    assert [s for s, _ in reopened.read(4, 5)] == [5]
    reopened.close()


def test_a_record_out_of_sequence_is_refused_before_it_is_written(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)
    log.append([(1, b"a")])
    with pytest.raises(ValueError, match="does not follow record 1"):
        log.append([(3, b"c")])
    log.close()
    assert wal.Log.open(tmp_path).last == 1


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("header cut", "header cut short"),
        ("payload cut", "payload cut short"),
        ("zeros", "only zeros"),
        ("payload flipped", "payload checksum mismatch"),
    ],
)
def test_a_torn_tail_is_dropped_with_a_warning_and_the_log_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, why: str
) -> None:
    segment = written(tmp_path, 5)
    ends = offsets(segment)
    last_start = ends[4]
    data = segment.read_bytes()
    if damage == "header cut":  # record 6 was being written: its first 11 bytes made it
        segment.write_bytes(data + wal.encode(6, payload(6))[:11])
    elif damage == "payload cut":
        segment.write_bytes(data + wal.encode(6, payload(6))[:-3])
    elif damage == "zeros":  # a file system that extended the file but never wrote the data
        segment.write_bytes(data + bytes(64))
    else:  # record 5's payload never fully reached the disk
        flip(segment, ends[5] - 2)
    good_end = ends[5] if damage != "payload flipped" else last_start
    with caplog.at_level(logging.WARNING, logger="flux.core.writes.wal"):
        log = wal.Log.open(tmp_path)
    assert log.torn is not None
    assert log.torn.offset == good_end
    assert why in log.torn.why
    assert f"dropped a torn last record at byte {good_end}" in caplog.text
    assert segment.stat().st_size == good_end  # cut back, so that new records do not follow garbage
    last = 5 if damage != "payload flipped" else 4
    assert log.last == last
    log.append([(last + 1, b"after the crash")])
    log.close()
    again = wal.Log.open(tmp_path)
    assert again.torn is None
    assert list(again.read(last, last + 1)) == [(last + 1, b"after the crash")]
    again.close()


@pytest.mark.parametrize("where", ["payload", "header"])
def test_a_corrupt_record_in_the_middle_stops_recovery_with_a_clear_error(tmp_path: Path, where: str) -> None:
    segment = written(tmp_path, 5)
    ends = offsets(segment)
    flip(segment, ends[1] + (wal.HEADER_BYTES + 1 if where == "payload" else 2))  # record 2
    size = segment.stat().st_size
    with pytest.raises(LogCorrupt) as caught:
        wal.Log.open(tmp_path)
    message = caught.value.message
    assert str(segment) in message
    assert f"the record at byte {ends[1]} (sequence 2) is corrupt" in message
    assert "checksum mismatch" in message
    assert f"truncate {segment.name} to {ends[1]} bytes" in message
    assert caught.value.code is Code.DATA_LOSS
    assert segment.stat().st_size == size  # nothing was cut: the operator decides
    with pytest.raises(LogCorrupt):
        wal.Log.open(tmp_path)


def test_damage_at_the_end_of_an_older_segment_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)
    log.append([(1, b"one"), (2, b"two")])
    log.rotate()
    log.append([(3, b"three")])
    log.close()
    first = tmp_path / wal.segment_name(1)
    flip(first, first.stat().st_size - 1)  # the last record of a segment that was synced and sealed
    with pytest.raises(LogCorrupt, match="sequence 2"):
        wal.Log.open(tmp_path)


def test_a_record_with_the_wrong_sequence_is_corruption(tmp_path: Path) -> None:
    (tmp_path / wal.segment_name(1)).write_bytes(wal.encode(1, b"a") + wal.encode(3, b"c") + wal.encode(4, b"d"))
    with pytest.raises(LogCorrupt, match=r"\(sequence 2\) is corrupt: it holds sequence 3"):
        wal.Log.open(tmp_path)


def test_segments_a_snapshot_covers_are_dropped_and_reads_need_the_rest(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)
    log.append([(1, b"1"), (2, b"2")])
    log.rotate()
    log.rotate()  # nothing written since: no empty segment is made
    log.append([(3, b"3")])
    log.rotate()
    log.append([(4, b"4"), (5, b"5")])
    names = sorted(p.name for p in tmp_path.glob("*.wal"))
    assert names == [wal.segment_name(1), wal.segment_name(3), wal.segment_name(4)]
    assert log.drop_through(3) == 2  # a snapshot holds records 1..3
    assert log.first == 4
    assert [s for s, _ in log.read(3, 5)] == [4, 5]
    with pytest.raises(LogCorrupt, match="records 2 to 5 are missing"):
        list(log.read(1, 5))
    assert log.drop_through(4) == 0  # segment 4 still holds record 5
    log.close()
    reopened = wal.Log.open(tmp_path)
    assert (reopened.first, reopened.last) == (4, 5)
    reopened.close()


def test_advance_numbers_the_next_record_after_a_snapshot_the_log_never_saw(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)  # an empty log (say its directory was lost) beside a snapshot of record 40
    log.advance(40)
    assert (log.first, log.last) == (41, 40)
    assert not (tmp_path / wal.segment_name(1)).exists()  # the empty segment was replaced
    log.append([(41, b"x")])
    log.close()
    reopened = wal.Log.open(tmp_path)
    assert (reopened.first, reopened.last) == (41, 41)
    reopened.close()


def test_one_process_writes_a_log(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)
    with pytest.raises(FailedPrecondition, match="locked by another process"):
        wal.Log.open(tmp_path)
    log.close()
    wal.Log.open(tmp_path).close()


class _Held:
    """An apply function whose first call waits until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.groups: list[list[int]] = []

    def __call__(self, tickets: Sequence[Ticket]) -> list[int]:
        if not self.groups:
            self.entered.set()
            self.release.wait()
        self.groups.append([t.sequence for t in tickets])
        return [t.sequence * 10 for t in tickets]


@pytest.mark.parametrize(("group", "syncs"), [(True, 2), (False, 100)])
def test_group_commit_shares_one_sync_among_the_writes_queued_meanwhile(
    tmp_path: Path, group: bool, syncs: int
) -> None:
    log = wal.Log.open(tmp_path)
    apply = _Held()
    commit = GroupCommit(log, apply, group=group, name="test")
    first = commit.submit(b"first", None)
    assert apply.entered.wait(10)  # the flusher synced the first write and is applying it
    rest = [commit.submit(f"write {n}".encode(), None) for n in range(99)]  # they queue meanwhile
    apply.release.set()
    assert [t.wait() for t in [first, *rest]] == [s * 10 for s in range(1, 101)]
    assert log.syncs == syncs
    assert [s for group in apply.groups for s in group] == list(range(1, 101))  # applied once each, in log order
    commit.close()
    log.close()
    payloads = [p for _, p in wal.Log.open(tmp_path).read(0, 100)]
    assert payloads == [b"first", *(f"write {n}".encode() for n in range(99))]


def test_after_a_failed_apply_every_write_is_refused_until_a_restart(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)

    def apply(tickets: Sequence[Ticket]) -> list[None]:
        raise RuntimeError("the backend broke")

    commit = GroupCommit(log, apply, name="broken")
    with pytest.raises(FailedPrecondition, match="applying logged writes failed"):
        commit.submit(b"x", None).wait()
    with pytest.raises(FailedPrecondition, match="restart the server to recover the index from its log"):
        commit.submit(b"y", None)
    commit.close()
    log.close()
    assert wal.Log.open(tmp_path).last == 1  # the record was durable before the apply failed
