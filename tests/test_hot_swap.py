"""Index versions on a live server: zero-downtime swap, refused bad versions, rollback, pin, unload."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from flux.core.serving.index import ServedIndex
from flux.core.serving.manager import IndexManager, VersionHooks
from flux.server import FluxServer
from flux_api.v1 import admin_service_pb2 as admin
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_client import id_hashes
from tests import support

DIM = 16


def publish(source: Path, version: int, *, backend: str = "hnsw", seed: int | None = None, n: int = 2000) -> Path:
    """Write version ``version`` into the source; its ids say which version they come from."""
    vectors = support.dataset(n=n, dimension=DIM, queries=1, seed=seed if seed is not None else version)[0]
    ids = [f"v{version}:{i}" for i in range(n)]
    return support.build_artifact(
        source / str(version), vectors, backend=backend, metric="l2", version=version, ids=ids
    )


def query() -> types_pb2.FloatVectors:
    return types_pb2.FloatVectors(dimension=DIM, data=np.ones(DIM, "<f4").tobytes())


def wait_for(condition: object, timeout: float = 30.0) -> None:
    """Poll an observable condition (not a blind sleep) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.02)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "tracks"
    publish(folder, 1)
    return folder


@contextmanager
def serve(source: Path, **index: object) -> Iterator[FluxServer]:
    config = support.server_config([{"name": "tracks", "path": str(source), "poll_seconds": 0.1, **index}])
    with support.running_server(config) as server:
        yield server


@pytest.fixture
def server(source: Path) -> Iterator[FluxServer]:
    with serve(source) as running:
        yield running


def test_publishing_a_version_under_load_swaps_with_no_failed_or_mixed_answer(server: FluxServer, source: Path) -> None:
    records: list[list[tuple[float, int, list[str]]]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    stop = time.monotonic() + 10.0
    warmed = threading.Barrier(5)

    def client(slot: list[tuple[float, int, list[str]]]) -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = VectorServiceStub(channel)
            try:
                for n in range(1_000_000):
                    started = time.monotonic()
                    if started > stop:
                        return
                    response = stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=10), timeout=5)
                    slot.append((started, response.version, list(response.neighbors.ids)))
                    if n == 50:
                        warmed.wait()
            except BaseException as exc:  # any failed request fails the test below
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(r,)) for r in records]
    for thread in threads:
        thread.start()
    warmed.wait()  # every client has answers from version 1 before version 2 appears
    publish(source, 2)
    manager = server.catalog.manager("tracks")
    wait_for(lambda: manager.active is not None and manager.active.version == 2)
    swapped_at = time.monotonic()
    for thread in threads:
        thread.join()

    assert not errors, errors[:3]
    everything = [r for slot in records for r in slot]
    assert len(everything) > 400
    for _, version, ids in everything:
        assert len(ids) == 10
        assert {i.split(":")[0] for i in ids} == {f"v{version}"}, "an answer mixed two versions"
    for slot in records:
        versions = [v for _, v, _ in slot]
        assert versions == sorted(versions), "a client went back to version 1 after seeing version 2"
        assert versions[0] == 1
        assert versions[-1] == 2
    assert all(v == 2 for started, v, _ in everything if started > swapped_at)


def test_a_corrupt_version_never_becomes_active(server: FluxServer, source: Path) -> None:
    staging = publish(source.parent / "staging", 2)
    index_file = staging / "index.hnsw"
    data = bytearray(index_file.read_bytes())
    data[100] ^= 0xFF
    index_file.write_bytes(bytes(data))
    shutil.move(staging, source / "2")  # appears whole, as a publisher's rename would make it
    manager = server.catalog.manager("tracks")
    wait_for(lambda: manager.slot(2).state.value == "failed" if 2 in {s.version for s in manager.slots()} else False)

    with support.channel_to(server) as channel:
        response = VectorServiceStub(channel).Search(pb.SearchRequest(index="tracks", vector=query(), k=3))
        assert response.version == 1
        info = AdminServiceStub(channel).GetIndex(admin.GetIndexRequest(name="tracks")).index
        assert info.version == 1
        assert "version 2" in info.error
        assert "index.hnsw: checksum mismatch" in info.error
        versions = AdminServiceStub(channel).ListVersions(admin.ListVersionsRequest(index="tracks"))
        states = {v.version: v.state for v in versions.versions}
        assert states == {2: admin.VERSION_STATE_FAILED, 1: admin.VERSION_STATE_ACTIVE}
    assert failures("artifact") >= 1


def test_a_version_that_fails_the_canary_never_becomes_active(source: Path) -> None:
    gate = {"canary_queries": 100, "k": 10, "min_recall": 0.9, "min_overlap": 0.3}
    with serve(source, gate=gate) as server:
        manager = server.catalog.manager("tracks")
        # Same ids, unrelated vectors: its answers share almost nothing with version 1's.
        vectors = support.dataset(n=2000, dimension=DIM, queries=1, seed=99)[0]
        ids = [f"v1:{i}" for i in range(2000)]
        support.build_artifact(source / "2", vectors, backend="hnsw", metric="l2", version=2, ids=ids)
        wait_for(lambda: any(s.version == 2 and s.state.value == "failed" for s in manager.slots()))
        failed = manager.slot(2)
        assert failed.report is not None
        assert failed.report.recall >= 0.9, "recall against exact search is fine; overlap is what fails"
        assert f"overlap@10 with version 1 {failed.report.overlap:.3f} is below 0.3" in failed.error
        with support.channel_to(server) as channel:
            assert VectorServiceStub(channel).Search(pb.SearchRequest(index="tracks", vector=query(), k=3)).version == 1
            info = AdminServiceStub(channel).GetIndex(admin.GetIndexRequest(name="tracks")).index
            assert "activation gate: overlap@10" in info.error
        assert failures("gate") >= 1


def failures(reason: str) -> float:
    """Versions refused for ``reason`` since the process started (the registry is process-wide)."""
    labels = {"index": "tracks", "state": "failed", "reason": reason}
    return REGISTRY.get_sample_value("flux_version_transitions_total", labels) or 0.0


def flux_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flux", *args], capture_output=True, text=True, timeout=120)


def test_rollback_pin_and_unload_from_the_command_line(source: Path) -> None:
    publish(source, 2, backend="annoy")
    with serve(source, versions={"policy": "latest", "keep": 2}) as server:
        target = ["--target", server.address, "--index", "tracks"]
        manager = server.catalog.manager("tracks")
        assert manager.active is not None
        assert manager.active.version == 2

        rolled = flux_cli("versions", "rollback", *target)
        assert rolled.returncode == 0, rolled.stderr
        assert "rolled back tracks from version 2 to 1" in rolled.stdout
        assert manager.active.version == 1
        assert manager.pinned == 1

        listed = flux_cli("versions", "list", *target)
        assert "active 1, pinned 1" in listed.stdout

        publish(source, 3)  # pinned: a new version must not take over
        manager.refresh()
        assert manager.active.version == 1

        unpinned = flux_cli("versions", "unpin", *target)
        assert unpinned.returncode == 0, unpinned.stderr
        assert manager.active.version == 3

        refused = flux_cli("versions", "unload", *target, "--version", "3")
        assert refused.returncode == 1
        assert "version 3 of index 'tracks' is active" in refused.stderr


def test_a_request_keeps_its_version_while_another_is_swapped_in(source: Path) -> None:
    with serve(source, poll_seconds=0) as server:  # no poller: this test makes every step itself
        manager = server.catalog.manager("tracks")
        publish(source, 2)
        held_answer(manager)


def held_answer(manager: IndexManager) -> None:
    with manager.acquire() as held:
        assert held.version == 1
        manager.activate(2)
        with manager.acquire() as fresh:
            assert fresh.version == 2
        slot = manager.slot(1)
        manager.unload(1)
        assert slot.loaded is None
        assert held.search(np.ones((1, DIM), np.float32), 3, held.default_params)[0][0].startswith("v1:")


def test_an_explicit_version_is_served_only_while_loaded(source: Path) -> None:
    publish(source, 2)
    with serve(source, versions={"policy": "latest", "keep": 2}) as server, support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        assert stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=3, version=1)).version == 1
        assert stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=3)).version == 2
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=3, version=7))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "has no loaded version 7 (loaded: 1, 2)" in caught.value.details()


def test_a_version_beyond_the_memory_budget_is_refused(source: Path) -> None:
    size = sum(f.stat().st_size for f in (source / "1").iterdir())
    config = support.server_config(
        [{"name": "tracks", "path": str(source), "poll_seconds": 0}], server={"memory_budget_bytes": int(size * 1.5)}
    )
    with support.running_server(config) as server, support.channel_to(server) as channel:
        publish(source, 2)
        with pytest.raises(grpc.RpcError) as caught:
            AdminServiceStub(channel).LoadVersion(admin.LoadVersionRequest(index="tracks", version=2))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "memory budget" in caught.value.details()
        assert VectorServiceStub(channel).Search(pb.SearchRequest(index="tracks", vector=query(), k=3)).version == 1
        versions = AdminServiceStub(channel).ListVersions(admin.ListVersionsRequest(index="tracks"))
        assert json.loads(json.dumps([v.state for v in versions.versions])) == [
            admin.VERSION_STATE_FAILED,
            admin.VERSION_STATE_ACTIVE,
        ]


def corrupt(folder: Path) -> None:
    """Flip one byte of the version's index file: its checksum no longer matches."""
    index_file = folder / "index.hnsw"
    data = bytearray(index_file.read_bytes())
    data[100] ^= 0xFF
    index_file.write_bytes(bytes(data))


def test_a_refused_version_leaves_the_kept_version_loaded(source: Path) -> None:
    publish(source, 2)
    with serve(source, versions={"policy": "latest", "keep": 2}) as server:
        manager = server.catalog.manager("tracks")
        kept = manager.slot(1).loaded
        assert kept is not None
        assert manager.active is not None
        assert manager.active.version == 2
        answered: list[int] = []
        failed: list[grpc.StatusCode] = []
        stop = threading.Event()

        def client() -> None:  # a caller paging on version 1 all the while
            with grpc.insecure_channel(server.address) as channel:
                stub = VectorServiceStub(channel)
                request = pb.SearchRequest(index="tracks", vector=query(), k=3, version=1)
                while not stop.is_set():
                    try:
                        answered.append(stub.Search(request, timeout=5).version)
                    except grpc.RpcError as exc:
                        failed.append(exc.code())

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_for(lambda: len(answered) > 20)
            staging = publish(source.parent / "staging", 3)
            corrupt(staging)
            shutil.move(staging, source / "3")
            wait_for(lambda: any(s.version == 3 and s.state.value == "failed" for s in manager.slots()))
            seen = len(answered)
            wait_for(lambda: len(answered) > seen + 20)  # requests after the refusal as well
        finally:
            stop.set()
            thread.join()
        assert failed == [], f"{len(failed)} requests for the kept version failed: {set(failed)}"
        assert set(answered) == {1}
        assert manager.slot(1).loaded is kept, "the kept version was unloaded and loaded again"
        assert manager.active.version == 2


class HeldLoad(VersionHooks):
    """Holds the load of one version at its last step until released: a slow load, made observable."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.reached = threading.Event()
        self.release = threading.Event()

    def loaded(self, index: ServedIndex) -> None:
        if index.version == self.version:
            self.reached.set()
            self.release.wait(60)


def test_pin_keeps_what_the_policy_keeps_so_rollback_and_unpin_are_pointer_swaps(source: Path) -> None:
    publish(source, 2)
    publish(source, 3)
    with serve(source, versions={"policy": "latest", "keep": 2}, poll_seconds=0) as server:
        manager = server.catalog.manager("tracks")
        loaded = {v: manager.slot(v).loaded for v in (2, 3)}
        assert None not in loaded.values()
        with support.channel_to(server) as channel:
            admin_stub = AdminServiceStub(channel)
            rolled = admin_stub.RollbackVersion(admin.RollbackVersionRequest(index="tracks"), timeout=10)
            assert (rolled.previous_version, rolled.version.version) == (3, 2)
            assert manager.slot(3).loaded is loaded[3], "the pin unloaded the version the policy keeps"
            admin_stub.PinVersion(admin.PinVersionRequest(index="tracks", version=0), timeout=10)
            assert manager.active is not None
            assert manager.active.version == 3
            assert {v: manager.slot(v).loaded for v in (2, 3)} == loaded, "a version was loaded again"
            rolled = admin_stub.RollbackVersion(admin.RollbackVersionRequest(index="tracks"), timeout=10)
            assert rolled.version.version == 2
            assert manager.slot(2).loaded is loaded[2], "the second rollback was not a pointer swap"


def test_unpin_answers_at_once_with_the_loaded_newest_and_loads_the_rest_in_the_background(source: Path) -> None:
    publish(source, 2)
    publish(source, 3)
    with serve(source, versions={"policy": "latest", "keep": 2}, poll_seconds=0) as server:
        manager = server.catalog.manager("tracks")
        newest = manager.slot(3).loaded
        held = HeldLoad(2)
        try:
            with support.channel_to(server) as channel:
                admin_stub = AdminServiceStub(channel)
                admin_stub.PinVersion(admin.PinVersionRequest(index="tracks", version=1), timeout=10)
                manager.hooks = held  # version 2 is not loaded now: the unpin must load it again
                # Returns while version 2 is still loading; the newest, loaded all along, answers already.
                admin_stub.PinVersion(admin.PinVersionRequest(index="tracks", version=0), timeout=10)
                assert manager.active is not None
                assert manager.active.version == 3
                assert manager.slot(3).loaded is newest
                assert held.reached.wait(30), "version 2 was not loaded in the background"
                assert manager.slot(2).state.value == "loading"
                search = VectorServiceStub(channel).Search
                assert search(pb.SearchRequest(index="tracks", vector=query(), k=3), timeout=5).version == 3
        finally:
            held.release.set()
        wait_for(lambda: manager.slot(2).state.value == "ready")
        assert manager.slot(1).loaded is None


def test_a_version_builds_its_exclusion_lookup_ahead_when_the_one_it_replaces_used_one(source: Path) -> None:
    """A version builds the table it finds excluded ids in on the first query that excludes any
    (seconds at tens of millions of items, while that query and those behind it wait); a version
    swapped in after one that had built it builds it while loading, and one after a version that
    never excluded an id does not (the table costs memory)."""
    with serve(source, poll_seconds=0) as server, support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        manager = server.catalog.manager("tracks")
        publish(source, 2)
        manager.activate(2)
        with manager.acquire() as active:
            assert active.version == 2
            assert not active.ids.lookup_ready
        plain = list(stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=10)).neighbors.ids)
        excluded = types_pb2.Filter(exclude_ids=plain[:2])
        answer = stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=8, filter=excluded))
        assert list(answer.neighbors.ids) == plain[2:]
        publish(source, 3)
        manager.load(3)
        slot = manager.slot(3)
        assert slot.loaded is not None
        assert slot.loaded.index.ids.lookup_ready  # before it answers a query
        manager.activate(3)
        with manager.acquire() as active:
            assert active.version == 3
            assert not active.ids.hash_lookup_ready  # no query left ids out by hash yet
        plain = list(stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=10)).neighbors.ids)
        by_hash = types_pb2.Filter(exclude_id_hashes=id_hashes(plain[:3]).tolist())
        answer = stub.Search(pb.SearchRequest(index="tracks", vector=query(), k=7, filter=by_hash))
        assert list(answer.neighbors.ids) == plain[3:]
        publish(source, 4)
        manager.load(4)
        loaded = manager.slot(4).loaded
        assert loaded is not None
        assert loaded.index.ids.lookup_ready
        assert loaded.index.ids.hash_lookup_ready
