"""A second server on an index another server writes: it serves searches read-only and refuses writes.

Both servers run in this process; flock locks conflict between two opens of one file, so the
second server meets the first one's lock exactly as a second process would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from flux_api.v1 import write_service_pb2 as wpb
from tests import support
from tests.test_writes import Client, code_of, vectors, writable

WAIT = 30.0


def reason_of(call: Callable[[], object]) -> str:
    """The reason a refused call carries in its ``flux-error-reason`` trailer."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return dict(caught.value.trailing_metadata() or ())["flux-error-reason"]


def test_a_second_server_serves_reads_and_refuses_writes_while_the_first_writes(tmp_path: Path) -> None:
    first_index = writable("shared", tmp_path)
    second_index = {**writable("shared", tmp_path), "poll_seconds": 0.1}  # follows the first one's snapshots
    stray = tmp_path / "shared" / ".9.left-behind"  # what a snapshot under way looks like from outside

    first_config = support.server_config([first_index])
    second_config = support.server_config([second_index])
    with support.running_server(first_config) as first, support.channel_to(first) as first_channel:
        writer = Client(first_channel)
        writer.upsert("shared", ["a", "b"], vectors(2, seed=1))
        writer.writes.Snapshot(wpb.SnapshotRequest(index="shared"))
        stray.mkdir()

        with support.running_server(second_config) as second, support.channel_to(second) as second_channel:
            reader = Client(second_channel)
            assert reader.count("shared") == 2  # serving, from the first server's snapshot
            assert reader.nearest("shared", vectors(2, seed=1)[:1])[0][0] == "a"

            code, message = code_of(reader.upsert, "shared", ["c"], vectors(1, seed=2))
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            assert "read-only on this server" in message
            assert "another Flux server" in message
            code, _ = code_of(reader.delete, "shared", ["a"])
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            snapshot = wpb.SnapshotRequest(index="shared")
            assert [
                reason_of(refused)
                for refused in (
                    lambda: reader.upsert("shared", ["c"], vectors(1, seed=2)),
                    lambda: reader.delete("shared", ["a"]),
                    lambda: reader.writes.Snapshot(snapshot),
                )
            ] == ["INDEX_READ_ONLY"] * 3
            assert stray.is_dir(), "the second server removed a folder that belongs to the first one's work"

            # The first server still writes; its next snapshot reaches the second one.
            writer.upsert("shared", ["c"], vectors(1, seed=2))
            writer.writes.Snapshot(wpb.SnapshotRequest(index="shared"))
            deadline = time.monotonic() + WAIT
            while reader.count("shared") != 3:
                assert time.monotonic() < deadline, "the second server did not follow the first one's snapshot"
                time.sleep(0.05)
            assert reader.nearest("shared", vectors(1, seed=2))[0][0] == "c"


def test_the_writing_server_tidies_what_a_crashed_snapshot_left(tmp_path: Path) -> None:
    """The lock holder still removes staging folders a crash left, as before."""
    index = writable("alone", tmp_path)
    with support.running_server(support.server_config([index])) as server, support.channel_to(server) as channel:
        Client(channel).upsert("alone", ["a"], vectors(1, seed=1))
    stray = tmp_path / "alone" / ".7.cut-short"
    stray.mkdir()
    with support.running_server(support.server_config([index])) as server, support.channel_to(server) as channel:
        assert Client(channel).count("alone") == 1
    assert not stray.exists()
