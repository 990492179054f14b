"""Upserts and deletes through a real gRPC server: read-your-writes, restarts, snapshots, damage, errors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flux.api.convert import encode_vectors
from flux.core.serving.index import Limits
from flux.core.writes import wal
from flux.server import FluxServer
from flux_api.v1 import admin_service_pb2 as apb
from flux_api.v1 import admin_service_pb2_grpc, types_pb2, vector_service_pb2_grpc, write_service_pb2_grpc
from flux_api.v1 import vector_service_pb2 as vpb
from flux_api.v1 import write_service_pb2 as wpb
from flux_core.errors import ConfigError
from tests import support

DIM = 8


def writable(name: str, root: Path, backend: str = "exact", **writes: Any) -> dict[str, Any]:
    """A writable index that Flux creates empty on first start."""
    return {
        "name": name,
        "path": str(root / name),
        "backend": backend,
        "dimension": DIM,
        "metric": "l2",
        "poll_seconds": 0,
        "search_params": {"ef": 200} if backend == "hnsw" else {},
        "writes": {"enabled": True, "snapshot_every": 0, **writes},
    }


def vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


class Client:
    def __init__(self, channel: grpc.Channel) -> None:
        self.writes = write_service_pb2_grpc.WriteServiceStub(channel)
        self.vectors = vector_service_pb2_grpc.VectorServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)

    def upsert(self, index: str, ids: Sequence[str], matrix: np.ndarray, **fields: Any) -> wpb.UpsertResponse:
        request = wpb.UpsertRequest(index=index, ids=list(ids), vectors=encode_vectors(matrix), **fields)
        response: wpb.UpsertResponse = self.writes.Upsert(request)
        return response

    def delete(self, index: str, ids: Sequence[str]) -> wpb.DeleteResponse:
        response: wpb.DeleteResponse = self.writes.Delete(wpb.DeleteRequest(index=index, ids=list(ids)))
        return response

    def nearest(self, index: str, vector: np.ndarray, k: int = 1, **fields: Any) -> list[tuple[str, float]]:
        found = self.vectors.Search(vpb.SearchRequest(index=index, vector=encode_vectors(vector), k=k, **fields))
        return list(zip(found.neighbors.ids, found.neighbors.distances, strict=True))

    def count(self, index: str) -> int:
        return int(self.admin.GetIndex(apb.GetIndexRequest(name=index)).index.count)


@contextmanager
def serving(*indexes: dict[str, Any], **sections: Any) -> Iterator[tuple[FluxServer, Client]]:
    config = support.server_config(list(indexes), **sections)
    with support.running_server(config) as server, support.channel_to(server) as channel:
        yield server, Client(channel)


def code_of(call: Any, *args: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    return caught.value.code(), caught.value.details()


# -- read your writes ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_an_acknowledged_upsert_is_found_and_an_acknowledged_delete_never_again(tmp_path: Path, backend: str) -> None:
    base = vectors(50, seed=1)
    ids = [f"song:{i}" for i in range(50)]
    with serving(writable("songs", tmp_path, backend)) as (_, client):
        answer = client.upsert("songs", ids, base)
        assert (answer.index, answer.version, answer.inserted, answer.updated) == ("songs", 1, 50, 0)
        assert answer.log_sequence == 1
        for row in (0, 17, 49):
            assert client.nearest("songs", base[row]) == [(ids[row], 0.0)]
        gone = client.delete("songs", ["song:17", "song:99"])
        assert (gone.deleted, gone.not_found, gone.log_sequence) == (1, 1, 2)
        assert "song:17" not in [i for i, _ in client.nearest("songs", base[17], k=50)]
        assert client.count("songs") == 49
        code, details = code_of(client.vectors.SearchById, vpb.SearchByIdRequest(index="songs", id="song:17", k=3))
        assert code is grpc.StatusCode.NOT_FOUND
        assert "song:17" in details


def test_an_upsert_replaces_the_vector_and_the_item_keeps_its_place(tmp_path: Path) -> None:
    base = vectors(20, seed=2)
    ids = [f"u{i}" for i in range(20)]
    with serving(writable("users", tmp_path)) as (_, client):
        client.upsert("users", ids, base)
        moved = base[5] + 10.0
        answer = client.upsert("users", ["u5", "u20"], np.stack([moved, base[0] - 10.0]))
        assert (answer.inserted, answer.updated) == (1, 1)
        assert client.nearest("users", moved) == [("u5", 0.0)]
        assert client.nearest("users", base[5])[0][0] != "u5"
        assert client.count("users") == 21


def test_a_stream_loads_batches_in_order_and_answers_once(tmp_path: Path) -> None:
    data = vectors(400, seed=3)
    messages = [
        wpb.UpsertStreamRequest(
            index="bulk",
            ids=[f"b{i}" for i in range(start, start + 40)],
            vectors=encode_vectors(data[start : start + 40]),
        )
        for start in range(0, 400, 40)
    ]
    messages.append(wpb.UpsertStreamRequest(index="bulk", ids=["b0"], vectors=encode_vectors(data[399] + 5)))
    with serving(writable("bulk", tmp_path)) as (_, client):
        answer = client.writes.UpsertStream(iter(messages))
        assert (answer.index, answer.messages, answer.inserted, answer.updated) == ("bulk", 11, 400, 1)
        assert answer.log_sequence == 11
        assert client.count("bulk") == 400
        assert client.nearest("bulk", data[399] + 5) == [("b0", 0.0)]  # the later batch won
        assert client.nearest("bulk", data[123]) == [("b123", 0.0)]


# -- restarts, snapshots ---------------------------------------------------------------------------------


def test_writes_survive_restarts_from_the_log_and_from_snapshots(tmp_path: Path) -> None:
    index = writable("feed", tmp_path, "hnsw")
    data = vectors(60, seed=4)
    ids = [f"f{i}" for i in range(60)]
    with serving(index) as (_, client):
        client.upsert("feed", ids[:40], data[:40])
        client.delete("feed", ids[:10])
    with serving(index) as (_, client):  # version 1 plus the log replayed
        assert client.count("feed") == 30
        assert client.nearest("feed", data[25]) == [("f25", 0.0)]
        assert "f5" not in [i for i, _ in client.nearest("feed", data[5], k=30)]
        snapshot = client.writes.Snapshot(wpb.SnapshotRequest(index="feed"))
        assert (snapshot.version, snapshot.log_sequence) == (2, 2)
        assert client.nearest("feed", data[25]) == [("f25", 0.0)]  # answered by the same index, now version 2
        assert client.writes.Snapshot(wpb.SnapshotRequest(index="feed")).version == 2  # nothing new to save
        after = client.upsert("feed", ids[40:], data[40:])
        assert (after.version, after.log_sequence) == (2, 3)
    log_dir = tmp_path / "feed" / "wal"
    assert sorted(p.name for p in log_dir.glob("*.wal")) == [wal.segment_name(3)]  # records 1-2 went into version 2
    manifest = (tmp_path / "feed" / "2" / "manifest.json").read_text()
    assert '"wal_sequence": 2' in manifest
    with serving(index) as (_, client):  # version 2 plus record 3
        assert client.count("feed") == 50
        listed = client.admin.ListVersions(apb.ListVersionsRequest(index="feed"))
        assert listed.active_version == 2
        for row in (12, 39, 59):
            assert client.nearest("feed", data[row]) == [(ids[row], 0.0)]
        assert client.upsert("feed", ["late"], data[:1] + 1).log_sequence == 4


def test_snapshots_are_taken_every_so_many_writes(tmp_path: Path) -> None:
    index = writable("auto", tmp_path, snapshot_every=10)
    data = vectors(25, seed=5)
    with serving(index) as (_, client):
        for row in range(25):
            client.upsert("auto", [f"a{row}"], data[row : row + 1])
    # Stopping the server waited for the snapshots under way; each holds a prefix of the writes.
    versions = sorted(int(p.name) for p in (tmp_path / "auto").iterdir() if p.name.isdigit())
    assert versions[0] == 1
    assert len(versions) >= 2
    with serving(index) as (_, client):
        assert client.count("auto") == 25
        assert client.nearest("auto", data[24]) == [("a24", 0.0)]


def test_a_torn_last_record_is_dropped_on_restart_and_the_rest_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = writable("torn", tmp_path)
    data = vectors(5, seed=6)
    with serving(index) as (_, client):
        for row in range(5):
            client.upsert("torn", [f"t{row}"], data[row : row + 1])
    segment = tmp_path / "torn" / "wal" / wal.segment_name(1)
    with segment.open("ab") as fh:  # the crash came while record 6 was being written
        fh.write(wal.encode(6, b"U" + bytes(200))[:90])
    with caplog.at_level(logging.WARNING, logger="flux.core.writes.wal"), serving(index) as (_, client):
        assert "dropped a torn last record" in caplog.text
        assert client.count("torn") == 5
        assert client.nearest("torn", data[4]) == [("t4", 0.0)]
        assert client.upsert("torn", ["t5"], data[:1] + 3).log_sequence == 6
    with serving(index) as (_, client):
        assert client.count("torn") == 6


def test_a_corrupt_record_in_the_middle_fails_the_index_with_a_clear_error(tmp_path: Path) -> None:
    index = writable("rot", tmp_path)
    data = vectors(5, seed=7)
    with serving(index) as (_, client):
        for row in range(5):
            client.upsert("rot", [f"r{row}"], data[row : row + 1])
    segment = tmp_path / "rot" / "wal" / wal.segment_name(1)
    raw = bytearray(segment.read_bytes())
    second = wal.HEADER_BYTES + int.from_bytes(raw[:4], "little")
    raw[second + wal.HEADER_BYTES + 3] ^= 0x01  # one bit of record 2's payload
    segment.write_bytes(bytes(raw))
    with serving(writable("rot", tmp_path), writable("fine", tmp_path)) as (_, client):
        code, details = code_of(client.nearest, "rot", data[0])
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        where = segment.relative_to(tmp_path)  # readers see paths from the index's folder on, never from /
        assert f"{where}: the record at byte {second} (sequence 2) is corrupt: payload checksum mismatch" in details
        info = client.admin.GetIndex(apb.GetIndexRequest(name="rot")).index
        assert info.state == apb.INDEX_STATE_FAILED
        assert "sequence 2" in info.error
        code, _ = code_of(client.upsert, "rot", ["x"], data[:1])
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert client.upsert("fine", ["ok"], data[:1]).inserted == 1  # the other index is untouched


# -- what is refused, and why ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "rows", "dimension", "fields", "field", "message"),
    [
        ([], 1, DIM, {}, "ids", "ids is empty"),
        (["a", "b", "a"], 3, DIM, {}, "ids[2]", "ids[2] 'a' repeats ids[0]"),
        (["a", ""], 2, DIM, {}, "ids[1]", "ids[1] is empty"),
        (["a", "b"], 1, DIM, {}, "vectors", "vectors holds 1 vectors for 2 ids"),
        (["a"], 1, DIM + 1, {}, "vectors.dimension", f"vectors.dimension is {DIM + 1}, but index 'w' has dimension"),
        (
            ["a", "b"],
            2,
            DIM,
            {"attributes": [types_pb2.ItemAttributes()]},
            "attributes",
            "attributes holds 1 entries for 2 ids",
        ),
        (
            ["a"],
            1,
            DIM,
            {"attributes": [types_pb2.ItemAttributes(restricts=[types_pb2.Restrict(namespace="", tokens=["x"])])]},
            "attributes[0].restricts[0].namespace",
            "namespace is empty",
        ),
    ],
)
def test_a_malformed_upsert_is_refused_naming_the_field(
    tmp_path: Path, ids: list[str], rows: int, dimension: int, fields: dict[str, Any], field: str, message: str
) -> None:
    with serving(writable("w", tmp_path)) as (_, client):
        matrix = np.ones((rows, dimension), np.float32)
        with pytest.raises(grpc.RpcError) as caught:
            client.upsert("w", ids, matrix, **fields)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.details()
        assert field in str(caught.value.trailing_metadata())  # google.rpc.BadRequest names it
        assert client.count("w") == 0  # nothing of a refused request is applied


def test_a_nan_a_stream_of_two_indexes_and_an_empty_stream_are_refused(tmp_path: Path) -> None:
    with serving(writable("w", tmp_path), writable("v", tmp_path)) as (_, client):
        bad = np.ones((1, DIM), np.float32)
        bad[0, 3] = np.nan
        code, details = code_of(client.upsert, "w", ["a"], bad)
        assert (code, "vectors row 0 contains NaN or Inf" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
        good = encode_vectors(np.ones((1, DIM), np.float32))
        two = [wpb.UpsertStreamRequest(index="w", ids=["a"], vectors=good)] * 2
        two[1] = wpb.UpsertStreamRequest(index="v", ids=["b"], vectors=good)
        code, details = code_of(client.writes.UpsertStream, iter(two))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "messages[1].index is 'v', but this stream writes to 'w'" in details
        code, details = code_of(client.writes.UpsertStream, iter([]))
        assert (code, "the stream held no message" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
        assert client.count("v") == 0


def test_immutable_and_read_only_indexes_refuse_writes_saying_what_to_do(tmp_path: Path) -> None:
    base = vectors(30, seed=8)
    support.build_artifact(tmp_path / "annoy" / "1", base, backend="annoy", metric="l2", name="annoy")
    support.build_artifact(tmp_path / "plain", base, backend="exact", metric="l2", name="plain")
    annoy_writable = {**writable("annoy", tmp_path), "backend": "annoy"}
    with serving(annoy_writable, {"name": "plain", "path": str(tmp_path / "plain")}) as (_, client):
        for index in ("annoy", "plain"):
            code, details = code_of(client.upsert, index, ["x"], base[:1])
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            if index == "annoy":
                assert "the annoy backend, which is immutable: build a new version with `flux build`" in details
            else:
                assert "does not take writes; set writes.enabled: true in its config" in details
        code, details = code_of(client.delete, "annoy", ["item:000001"])
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert "publish it to the index's source" in details
        code, _ = code_of(client.delete, "nope", ["x"])
        assert code is grpc.StatusCode.NOT_FOUND


def test_config_refuses_writes_it_cannot_honour(tmp_path: Path) -> None:
    specific = {**writable("a", tmp_path), "versions": {"policy": "specific", "versions": [1]}}
    with pytest.raises(ConfigError, match=r"indexes\[0\]: writes.enabled needs versions.policy latest with keep 1"):
        support.server_config([specific])
    with pytest.raises(ConfigError, match=r"indexes\[0\].writes: an index that takes writes needs server.workers 1"):
        support.server_config([writable("a", tmp_path)], server={"workers": 2})


def test_a_writable_index_whose_path_is_an_artifact_fails_with_the_fix(tmp_path: Path) -> None:
    support.build_artifact(tmp_path / "single", vectors(5, seed=9), backend="exact", metric="l2")
    index = {"name": "single", "path": str(tmp_path / "single"), "writes": {"enabled": True}}
    with serving(index) as (_, client):
        code, details = code_of(client.nearest, "single", vectors(1, 0)[0])
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert "its path must be a directory of numbered versions" in details
        assert "move the artifact into single/1/" in details  # from the index's folder on, never from /


# -- the hnsw library's specifics, and concurrency ---------------------------------------------------------------


def test_hnsw_grows_with_upserts_and_reuses_the_slots_of_deleted_items(tmp_path: Path) -> None:
    data = vectors(600, seed=10)
    with serving(writable("g", tmp_path, "hnsw")) as (server, client):
        client.upsert("g", [f"g{i}" for i in range(300)], data[:300])  # from an empty index of one slot
        stats = client.admin.GetIndex(apb.GetIndexRequest(name="g")).index.stats
        capacity = stats["max_elements"]
        assert capacity >= 300
        client.delete("g", [f"g{i}" for i in range(100)])
        client.upsert("g", [f"g{i}" for i in range(300, 400)], data[300:400])  # new ids, in the freed slots
        stats = client.admin.GetIndex(apb.GetIndexRequest(name="g")).index.stats
        assert (stats["max_elements"], stats["deleted"]) == (capacity, 0)
        assert client.count("g") == 300
        hits = client.nearest("g", data[350], k=5)
        assert hits[0] == ("g350", 0.0)
        for row in (0, 50, 99):
            assert f"g{row}" not in [i for i, _ in client.nearest("g", data[row], k=20)]
        labels_before = server.catalog.get("g").label_of("g200")
        client.upsert("g", ["g200"], data[200:201] + 1)
        assert server.catalog.get("g").label_of("g200") == labels_before  # an id keeps its label


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_concurrent_writers_read_their_writes_while_others_search(tmp_path: Path, backend: str) -> None:
    data = vectors(400, seed=11)
    failures: list[str] = []
    with serving(writable("c", tmp_path, backend), server={"threads": 16}) as (_, client):
        client.upsert("c", [f"base{i}" for i in range(200)], data[:200])
        stop = threading.Event()

        def writer(number: int) -> None:
            try:
                for step in range(25):
                    row = 200 + number * 25 + step
                    item = f"w{number}-{step}"
                    client.upsert("c", [item], data[row : row + 1])
                    if client.nearest("c", data[row]) != [(item, 0.0)]:
                        failures.append(f"{item} not found after its upsert was acknowledged")
                    client.delete("c", [item])
                    if item in [i for i, _ in client.nearest("c", data[row], k=10)]:
                        failures.append(f"{item} returned after its delete was acknowledged")
            except grpc.RpcError as exc:
                failures.append(f"writer {number}: {exc.code()} {exc.details()}")

        def searcher() -> None:
            while not stop.is_set():
                try:
                    client.vectors.BatchSearch(
                        vpb.BatchSearchRequest(index="c", queries=encode_vectors(data[:32]), k=5)
                    )
                    client.vectors.SearchById(vpb.SearchByIdRequest(index="c", id="base7", k=5))  # reads a vector
                except grpc.RpcError as exc:
                    failures.append(f"searcher: {exc.code()} {exc.details()}")
                    return

        searchers = [threading.Thread(target=searcher) for _ in range(2)]
        writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for thread in [*searchers, *writers]:
            thread.start()
        for thread in writers:
            thread.join(60)
        stop.set()
        for thread in searchers:
            thread.join(60)
        assert not failures, failures[:5]
        assert client.count("c") == 200


def test_a_version_published_beside_the_writes_is_brought_up_to_date_before_it_serves(tmp_path: Path) -> None:
    data = vectors(40, seed=12)
    index = writable("pub", tmp_path)
    with serving(index) as (server, client):
        client.upsert("pub", [f"p{i}" for i in range(10)], data[:10])
        client.delete("pub", ["p0"])
        # A rebuilt base arrives as version 2 (its writes start from nothing, as the log does).
        support.build_artifact(
            tmp_path / "pub" / "2",
            data[20:30],
            backend="exact",
            metric="l2",
            name="pub",
            version=2,
            ids=[f"n{i}" for i in range(10)],
        )
        server.catalog.manager("pub").refresh()
        assert client.admin.ListVersions(apb.ListVersionsRequest(index="pub")).active_version == 2
        assert client.count("pub") == 19  # version 2's ten items, and the nine written ones replayed onto it
        assert client.nearest("pub", data[5]) == [("p5", 0.0)]
        assert client.upsert("pub", ["after"], data[30:31]).version == 2
        # After a snapshot the log no longer starts at record 1, so a base without the older writes is refused.
        client.writes.Snapshot(wpb.SnapshotRequest(index="pub"))
        support.build_artifact(tmp_path / "pub" / "4", data[30:35], backend="exact", metric="l2", name="pub", version=4)
        server.catalog.manager("pub").refresh()
        listed = client.admin.ListVersions(apb.ListVersionsRequest(index="pub"))
        assert listed.active_version == 3
        refused = next(v for v in listed.versions if v.version == 4)
        assert refused.state == apb.VERSION_STATE_FAILED
        assert "holds the log up to record 0, but the log now starts at record" in refused.error
        assert client.count("pub") == 20


def test_attributes_written_with_upserts_survive_a_restart_and_a_snapshot(tmp_path: Path) -> None:
    data = vectors(4, seed=13)
    index = writable("attr", tmp_path)
    us = types_pb2.ItemAttributes(restricts=[types_pb2.Restrict(namespace="market", tokens=["US"])])
    se = types_pb2.ItemAttributes(restricts=[types_pb2.Restrict(namespace="market", tokens=["SE"])])
    only_se = types_pb2.Filter(allow=[types_pb2.Restrict(namespace="market", tokens=["SE"])])

    def markets(client: Client) -> list[str]:
        return [i for i, _ in client.nearest("attr", data[0], k=4, filter=only_se)]

    with serving(index) as (_, client):
        client.upsert("attr", ["a", "b", "c", "d"], data, attributes=[us, se, us, se])
        assert sorted(markets(client)) == ["b", "d"]
    with serving(index) as (_, client):  # replayed from the log
        assert sorted(markets(client)) == ["b", "d"]
        client.writes.Snapshot(wpb.SnapshotRequest(index="attr"))
        client.upsert("attr", ["b"], data[1:2])  # an upsert without attributes leaves the item none
    with serving(index) as (_, client):  # from the snapshot, then the log
        assert markets(client) == ["d"]


def test_a_snapshot_cut_short_by_a_crash_is_cleaned_up_on_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = writable("left", tmp_path)
    with serving(index) as (_, client):
        client.upsert("left", ["a"], vectors(1, seed=14))
    staging = tmp_path / "left" / ".2.k3x9q1"  # what artifact.write had made when the process died
    (staging / "index").mkdir(parents=True)
    (staging / "index" / "vectors.npy").write_bytes(b"half a file")
    with caplog.at_level(logging.WARNING, logger="flux.core.writes.writer"), serving(index) as (_, client):
        assert f"removing {staging}, a snapshot a crash cut short" in caplog.text
        assert not staging.exists()
        assert client.count("left") == 1
        assert client.writes.Snapshot(wpb.SnapshotRequest(index="left")).version == 2


# -- limits on what a write may store: id length, vector norm ---------------------------------------------------


def violation(error: grpc.RpcError) -> error_details_pb2.BadRequest.FieldViolation:
    """The one google.rpc.BadRequest field violation an INVALID_ARGUMENT error carries."""
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert [d.Unpack(bad_request) for d in status.details if d.Is(bad_request.DESCRIPTOR)] == [True]
    assert len(bad_request.field_violations) == 1
    return bad_request.field_violations[0]


def refusal(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value


def test_an_id_longer_than_max_id_bytes_is_refused_and_readers_keep_their_answers(tmp_path: Path) -> None:
    # The audit's case: under 1 MiB messages a writer stored a 900,000-character id, after which
    # every BatchSearch of 8 x k=100 was too large to send. The id limit keeps it out.
    limit = 1024  # limits.max_id_bytes by default
    at_limit, over = "é" * (limit // 2), "é" * (limit // 2) + "x"  # UTF-8 bytes count, not characters
    with serving(writable("w", tmp_path), limits={"max_message_bytes": 1 << 20}) as (_, client):
        client.upsert("w", support.ids_for(200), vectors(200, seed=20))
        error = refusal(client.upsert, "w", ["fine", over], vectors(2, seed=21))
        field = violation(error)
        assert field.field == "ids[1]"
        assert "ids[1] is 1025 bytes long (UTF-8); ids may be at most 1024 bytes (limits.max_id_bytes)" in (
            field.description
        )
        huge = "x" * 900_000
        error = refusal(client.upsert, "w", [huge], vectors(1, seed=22))
        assert violation(error).field == "ids[0]"
        assert "ids[0] is 900000 bytes long" in error.details()
        assert len(error.details()) < 300
        stream = [wpb.UpsertStreamRequest(index="w", ids=[over], vectors=encode_vectors(vectors(1, seed=23)))]
        assert violation(refusal(client.writes.UpsertStream, iter(stream))).field == "messages[0].ids[0]"
        assert client.count("w") == 200  # nothing of the refused writes was stored

        assert client.upsert("w", [at_limit], vectors(1, seed=24)).inserted == 1
        queries = encode_vectors(vectors(8, seed=25))
        batch = client.vectors.BatchSearch(vpb.BatchSearchRequest(index="w", queries=queries, k=100))
        assert [len(row.ids) for row in batch.results] == [100] * 8

        # Lookups are not limited (a delete must reach ids stored under a higher limit), and their
        # errors quote a long id cut short: the whole id would not fit in the status trailers.
        long = "y" * 400_000  # twice in one request, under the 1 MiB message limit
        error = refusal(client.delete, "w", [long, long])
        assert error.details().startswith("ids[1] 'yyyy")
        assert "(400000 bytes) repeats ids[0]" in error.details()
        assert client.delete("w", [huge, at_limit]).deleted == 1
        code, details = code_of(client.vectors.SearchById, vpb.SearchByIdRequest(index="w", id=huge, k=1))
        assert code is grpc.StatusCode.NOT_FOUND
        assert "has no item with id 'xxxx" in details
        assert len(details) < 300


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_an_upsert_whose_distances_would_overflow_float32_is_refused_naming_the_row(
    tmp_path: Path, backend: str
) -> None:
    with serving(writable("w", tmp_path, backend)) as (_, client):
        batch = vectors(3, seed=26)
        batch[1] = 3e38  # finite values, but the squared norm is inf in float32
        error = refusal(client.upsert, "w", ["a", "b", "c"], batch)
        assert "vectors row 1 has a squared norm of inf in float32, above the largest Flux accepts" in error.details()
        assert violation(error).field == "vectors"
        batch[1] = 0.0
        batch[2, 0] = 8e18  # a finite squared norm (6.4e37), but distances to it could overflow
        error = refusal(client.upsert, "w", ["a", "b", "c"], batch)
        assert "vectors row 2 has a squared norm of 6.4e+37" in error.details()
        stream = [wpb.UpsertStreamRequest(index="w", ids=["a", "b", "c"], vectors=encode_vectors(batch))]
        error = refusal(client.writes.UpsertStream, iter(stream))
        assert violation(error).field == "messages[0].vectors"
        assert "messages[0].vectors row 2" in error.details()
        assert client.count("w") == 0

        # The largest vectors accepted stay apart by a finite distance, whichever the backend.
        edge = np.zeros((2, DIM), np.float32)
        edge[0, 0], edge[1, 0] = 6.4e18, -6.4e18  # squared norms 4.1e37, just under 2**125
        client.upsert("w", ["east", "west"], edge)
        found = client.nearest("w", edge[0], k=2)
        assert [item for item, _ in found] == ["east", "west"]
        assert found[0][1] == 0.0
        assert found[1][1] == pytest.approx(4 * 6.4e18**2, rel=1e-5)


def test_a_configured_max_id_bytes_is_what_the_server_enforces(tmp_path: Path) -> None:
    with serving(writable("w", tmp_path), limits={"max_id_bytes": 8}) as (_, client):
        assert client.upsert("w", ["12345678"], vectors(1, seed=30)).inserted == 1
        error = refusal(client.upsert, "w", ["123456789"], vectors(1, seed=31))
        assert violation(error).field == "ids[0]"
        assert "ids may be at most 8 bytes (limits.max_id_bytes)" in error.details()


def test_max_id_bytes_is_a_limit_of_the_config_with_the_core_default() -> None:
    assert support.server_config([]).limits.max_id_bytes == Limits().max_id_bytes == 1024
    assert support.server_config([], limits={"max_id_bytes": 64}).limits.max_id_bytes == 64
    with pytest.raises(ConfigError, match=r"limits.max_id_bytes: Input should be greater than or equal to 1"):
        support.server_config([], limits={"max_id_bytes": 0})
