"""The router: one logical index over 4 shard servers answers as one index would.

Shard servers and routers are real gRPC servers on 127.0.0.1 ephemeral ports (in-process). The
data is split with the sharding function ``shard_of``: by crowding tag for the exact index (so the
crowding cap is exact over shards), by id for the hnsw one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from flux import config as flux_config
from flux.config_sections import LimitsConfig
from flux.core.query.model import MAX_EXCLUDE_IDS
from flux.router.channels import VECTOR_SERVICE
from flux.server import FluxServer
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_client import id_hashes
from flux_core.backend import Metric
from flux_core.errors import ConfigError
from flux_core.storage import builder
from flux_core.storage.attributes import ItemAttributes
from flux_core.storage.sharded import assign, shard_of
from tests.support import brute_force, dataset, ids_for, router_config, routing, running_server, server_config

SHARDS = 4
N, DIM, QUERIES = 4000, 32, 100
TAGS = 40
COLORS = ("red", "green", "blue")


def _attributes(n: int) -> list[ItemAttributes]:
    return [ItemAttributes.create({"color": [COLORS[i % 3]]}, crowding_tag=f"tag-{i % TAGS}") for i in range(n)]


def _build(path: Path, vectors: np.ndarray, ids: list[str], backend: str, name: str, **extra: Any) -> Path:
    builder.build(path, vectors, ids, backend=backend, metric=Metric.L2, name=name, threads=2, **extra)
    return path


def _query(vector: np.ndarray) -> types_pb2.FloatVectors:
    vector = np.atleast_2d(np.asarray(vector, dtype="<f4"))
    return types_pb2.FloatVectors(dimension=vector.shape[1], data=vector.tobytes())


def _target(*servers: FluxServer) -> str:
    return "ipv4:" + ",".join(s.address for s in servers)


class Cluster:
    """4 shard servers (exact split by crowding tag, hnsw split by id) and one server of all the data."""

    def __init__(self, folder: Path, stack: ExitStack) -> None:
        base, self.queries = dataset(N, DIM, QUERIES, seed=3)
        self.base, self.ids, attributes = base, ids_for(N), _attributes(N)
        by_tag = assign([a.crowding_tag for a in attributes], SHARDS)
        by_id = assign(self.ids, SHARDS)
        self.shards: list[FluxServer] = []
        for shard in range(SHARDS):
            tagged, owned = np.flatnonzero(by_tag == shard), np.flatnonzero(by_id == shard)
            exact = _build(
                folder / f"exact-{shard}",
                base[tagged],
                [self.ids[i] for i in tagged],
                "exact",
                "items",
                attributes=[attributes[i] for i in tagged],
            )
            hnsw = _build(folder / f"hnsw-{shard}", base[owned], [self.ids[i] for i in owned], "hnsw", "items-hnsw")
            versioned = [
                {"name": "items", "path": str(exact)},
                {"name": "items-hnsw", "path": str(hnsw)},
            ]
            self.shards.append(stack.enter_context(running_server(server_config(versioned))))
        everything = [
            {
                "name": "items",
                "path": str(_build(folder / "exact-all", base, self.ids, "exact", "items", attributes=attributes)),
            },
            {"name": "items-hnsw", "path": str(_build(folder / "hnsw-all", base, self.ids, "hnsw", "items-hnsw"))},
        ]
        self.single = stack.enter_context(running_server(server_config(everything)))
        self.single_stub = VectorServiceStub(stack.enter_context(grpc.insecure_channel(self.single.address)))
        config = router_config(
            [
                {
                    "name": "items",
                    "shard_count": SHARDS,
                    "sharded_by": "crowding_tag",
                    "shards": [_target(s) for s in self.shards],
                },
                {
                    "name": "hnsw",
                    "shard_index": "items-hnsw",
                    "shard_count": SHARDS,
                    "shards": [_target(s) for s in self.shards],
                },
                {
                    "name": "by-id",
                    "shard_index": "items",
                    "shard_count": SHARDS,
                    "shards": [_target(s) for s in self.shards],
                },
            ]
        )
        self.router, self.stub = stack.enter_context(routing(config))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with ExitStack() as stack:
        yield Cluster(tmp_path_factory.mktemp("router"), stack)


FILTERS = [
    None,
    types_pb2.Filter(allow=[types_pb2.Restrict(namespace="color", tokens=["red", "blue"])]),
    types_pb2.Filter(deny=[types_pb2.Restrict(namespace="color", tokens=["green"])], exclude_ids=ids_for(300)),
    types_pb2.Filter(max_per_crowding_tag=1),
    types_pb2.Filter(allow=[types_pb2.Restrict(namespace="color", tokens=["red"])], max_per_crowding_tag=2),
]


@pytest.mark.parametrize("spec", FILTERS, ids=["plain", "allow", "deny+exclude", "crowding", "allow+crowding"])
def test_exact_router_equals_one_index(cluster: Cluster, spec: types_pb2.Filter | None) -> None:
    for k in (1, 10, 37):
        for row in cluster.queries[:20]:
            request = pb.SearchRequest(index="items", vector=_query(row), k=k, filter=spec)
            got = cluster.stub.Search(request, timeout=10)
            want = cluster.single_stub.Search(request, timeout=10)
            assert list(got.neighbors.ids) == list(want.neighbors.ids)
            np.testing.assert_allclose(got.neighbors.distances, want.neighbors.distances, rtol=1e-5, atol=1e-5)
            assert got.index == "items"
            assert got.version == want.version
            assert not got.missing_shards
            assert got.neighbors.fewer_than_k_matched == want.neighbors.fewer_than_k_matched


def test_a_router_passes_excluded_id_hashes_on_to_the_shards(cluster: Cluster) -> None:
    excluded = cluster.ids[:400:2]
    hashed = types_pb2.Filter(exclude_id_hashes=id_hashes(excluded).tolist())
    listed = types_pb2.Filter(exclude_ids=excluded)
    for row in cluster.queries[:10]:
        got = cluster.stub.Search(pb.SearchRequest(index="items", vector=_query(row), k=37, filter=hashed), timeout=10)
        want = cluster.single_stub.Search(
            pb.SearchRequest(index="items", vector=_query(row), k=37, filter=listed), timeout=10
        )
        assert list(got.neighbors.ids) == list(want.neighbors.ids)
        assert not set(got.neighbors.ids) & set(excluded)
    item = cluster.ids[2]  # its own hash sent: still left out, and the rest as the single index leaves them
    by_id = cluster.stub.SearchById(pb.SearchByIdRequest(index="items", id=item, k=10, filter=hashed), timeout=10)
    want_by_id = cluster.single_stub.SearchById(
        pb.SearchByIdRequest(index="items", id=item, k=10, filter=listed), timeout=10
    )
    assert list(by_id.neighbors.ids) == list(want_by_id.neighbors.ids)
    assert item not in by_id.neighbors.ids


def test_exact_router_equals_brute_force(cluster: Cluster) -> None:
    labels, distances = brute_force(cluster.base, cluster.queries[:30], Metric.L2, 10)
    response = cluster.stub.BatchSearch(
        pb.BatchSearchRequest(index="items", queries=_query(cluster.queries[:30]), k=10), timeout=10
    )
    assert len(response.results) == 30
    for row, want, want_d in zip(response.results, labels, distances, strict=True):
        assert list(row.ids) == [cluster.ids[i] for i in want]
        np.testing.assert_allclose(row.distances, want_d, rtol=1e-4, atol=1e-3)


def test_batch_search_equals_one_index_rows_packed_and_overrides(cluster: Cluster) -> None:
    queries = cluster.queries[:12]
    overrides = [
        pb.QueryOverride(k=3 + i, filter=FILTERS[i % len(FILTERS)] or types_pb2.Filter()) for i in range(len(queries))
    ]
    for packed in (False, True):
        request = pb.BatchSearchRequest(
            index="items", queries=_query(queries), k=10, overrides=overrides, filter=FILTERS[1], packed=packed
        )
        got = cluster.stub.BatchSearch(request, timeout=10)
        want = cluster.single_stub.BatchSearch(request, timeout=10)
        if packed:
            assert list(got.packed.ids) == list(want.packed.ids)
            assert list(got.packed.counts) == list(want.packed.counts) == [3 + i for i in range(len(queries))]
        else:
            assert [list(r.ids) for r in got.results] == [list(r.ids) for r in want.results]


def test_hnsw_recall_through_the_router(cluster: Cluster) -> None:
    truth, _ = brute_force(cluster.base, cluster.queries, Metric.L2, 10)
    truth_ids = [{cluster.ids[i] for i in row} for row in truth]

    def recall(stub: VectorServiceStub, index: str) -> float:
        response = stub.BatchSearch(
            pb.BatchSearchRequest(index=index, queries=_query(cluster.queries), k=10), timeout=30
        )
        return float(np.mean([len(set(r.ids) & t) / 10 for r, t in zip(response.results, truth_ids, strict=True)]))

    routed, single = recall(cluster.stub, "hnsw"), recall(cluster.single_stub, "items-hnsw")
    print(f"recall@10 through the router {routed:.4f}, one index {single:.4f}")
    assert routed >= single - 0.005


def test_crowding_refused_on_an_index_sharded_by_id(cluster: Cluster) -> None:
    request = pb.SearchRequest(
        index="by-id", vector=_query(cluster.queries[0]), k=10, filter=types_pb2.Filter(max_per_crowding_tag=1)
    )
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.Search(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "crowding tag" in caught.value.details()


def test_shard_refusals_reach_the_caller_as_given(cluster: Cluster) -> None:
    bad = pb.SearchRequest(index="items", vector=_query(np.ones(DIM + 1)), k=10)
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.Search(bad, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(caught.value.trailing_metadata())
    assert trailers["flux-error-reason"] == "DIMENSION_MISMATCH"
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.Search(pb.SearchRequest(index="nope", vector=_query(cluster.queries[0]), k=1), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_describe_and_server_info(cluster: Cluster) -> None:
    described = cluster.stub.DescribeIndex(pb.DescribeIndexRequest(index="items"), timeout=10).index
    assert described.name == "items"
    assert described.count == N
    assert described.dimension == DIM
    assert cluster.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).contract_version


def test_stream_search_answers_each_query_as_search(cluster: Cluster) -> None:
    queries = [
        pb.StreamSearchRequest(index="items", vector=_query(q), k=5, request_id=i)
        for i, q in enumerate(cluster.queries[:5])
    ]
    queries.append(pb.StreamSearchRequest(index="items", vector=_query(np.ones(DIM + 1)), k=5, request_id=99))
    answers = list(cluster.stub.StreamSearch(iter(queries), timeout=10))
    assert [a.request_id for a in answers] == [0, 1, 2, 3, 4, 99]
    for query, answer in zip(queries[:5], answers, strict=False):
        want = cluster.single_stub.Search(pb.SearchRequest(index="items", vector=query.vector, k=5), timeout=10)
        assert list(answer.search.neighbors.ids) == list(want.neighbors.ids)
    assert answers[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # the failed query's answer is the one a single server's StreamSearch gives: code, message and details
    [alone] = list(cluster.single_stub.StreamSearch(iter(queries[-1:]), timeout=10))
    assert answers[-1] == alone
    unknown = pb.StreamSearchRequest(index="nope", vector=_query(cluster.queries[0]), k=5, request_id=7)
    [refused] = list(cluster.stub.StreamSearch(iter([unknown]), timeout=10))
    assert refused.request_id == 7
    assert refused.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    info = error_details_pb2.ErrorInfo()
    assert refused.error.details[0].Unpack(info)
    assert info.reason == "INDEX_NOT_FOUND"


# -- shards that do not answer, replicas, versions --------------------------------------------------


@contextmanager
def _small_shards(
    folder: Path, replicas: int = 1, versions: bool = False, n: int = 800
) -> Iterator[tuple[list[list[FluxServer]], np.ndarray, list[str]]]:
    base, queries = dataset(n, 16 if n <= 800 else 64, 20, seed=5)
    ids = ids_for(len(base))
    owner = assign(ids, SHARDS)
    with ExitStack() as stack:
        groups = []
        for shard in range(SHARDS):
            mine = np.flatnonzero(owner == shard)
            path = folder / f"shard-{shard}"
            _build(path / "1", base[mine], [ids[i] for i in mine], "exact", "small", version=1)
            if versions and shard == 0:  # a newer version on shard 0 only: the rollout is not over
                _build(path / "2", -base[mine], [ids[i] for i in mine], "exact", "small", version=2)
            index = {"name": "small", "path": str(path), "versions": {"policy": "latest", "keep": 2}}
            groups.append([stack.enter_context(running_server(server_config([index]))) for _ in range(replicas)])
        single = stack.enter_context(
            running_server(
                server_config([{"name": "small", "path": str(_build(folder / "all", base, ids, "exact", "small"))}])
            )
        )
        groups.append([single])
        yield groups, queries, ids


def _small_router(groups: list[list[FluxServer]], policy: str, **router: Any) -> flux_config.FluxConfig:
    shards = [_target(*servers) for servers in groups[:SHARDS]]
    return router_config(
        [{"name": "small", "shard_count": SHARDS, "shards": shards, "on_missing_shards": policy}], **router
    )


def test_a_stopped_shard_fails_or_is_named(tmp_path: Path) -> None:
    with _small_shards(tmp_path) as (groups, queries, _):
        with grpc.insecure_channel(groups[SHARDS][0].address) as channel:
            truth = [
                VectorServiceStub(channel).Search(pb.SearchRequest(index="small", vector=_query(q), k=10))
                for q in queries
            ]
        groups[2][0].stop(grace=0)
        with routing(_small_router(groups, "fail")) as (_, stub):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Search(pb.SearchRequest(index="small", vector=_query(queries[0]), k=10), timeout=3)
            elapsed = time.monotonic() - started
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "shard-00002-of-00004" in caught.value.details()
            assert elapsed < 3
        with routing(_small_router(groups, "partial")) as (_, stub):
            for query, want in zip(queries, truth, strict=True):
                got = stub.Search(pb.SearchRequest(index="small", vector=_query(query), k=10), timeout=3)
                assert list(got.missing_shards) == ["shard-00002-of-00004"]
                expected = [i for i in want.neighbors.ids if int(i.split(":")[1]) not in _owned(2)]
                assert list(got.neighbors.ids)[: len(expected)] == expected[: len(got.neighbors.ids)]
                assert all(int(i.split(":")[1]) not in _owned(2) for i in got.neighbors.ids)
            batch = stub.BatchSearch(pb.BatchSearchRequest(index="small", queries=_query(queries), k=10), timeout=3)
            assert list(batch.missing_shards) == ["shard-00002-of-00004"]
            assert len(batch.results) == len(queries)


def _owned(shard: int) -> set[int]:
    owner = assign(ids_for(800), SHARDS)
    return {int(i) for i in np.flatnonzero(owner == shard)}


def test_stopping_one_replica_under_load_loses_no_request(tmp_path: Path) -> None:
    calls, threads = 150, 6
    with _small_shards(tmp_path, replicas=2, n=24_000) as (groups, queries, _):
        batch = pb.BatchSearchRequest(index="small", queries=_query(queries), k=10, packed=True)
        with grpc.insecure_channel(groups[SHARDS][0].address) as channel:
            truth = list(VectorServiceStub(channel).BatchSearch(batch, timeout=30).packed.ids)
        with routing(_small_router(groups, "fail")) as (_, stub):
            done, failures, lock = [0], [], threading.Lock()
            halfway = threading.Event()

            def client(worker: int) -> None:
                for n in range(worker, calls, threads):
                    try:  # a batch per call keeps every shard busy, so the stop finds calls in flight
                        got = stub.BatchSearch(batch, timeout=20)
                        if list(got.packed.ids) != truth or got.missing_shards:
                            failures.append(f"call {n}: wrong answer")
                    except grpc.RpcError as error:
                        failures.append(f"call {n}: {error.code()} {error.details()}")
                    with lock:
                        done[0] += 1
                        if done[0] == calls // 4:
                            halfway.set()

            workers = [threading.Thread(target=client, args=(w,)) for w in range(threads)]
            for worker in workers:
                worker.start()
            assert halfway.wait(60)
            groups[1][0].stop(grace=0)  # one replica of shard 1 goes away mid-load, its calls cancelled
            for worker in workers:
                worker.join(120)
            assert not any(w.is_alive() for w in workers)
            assert done[0] == calls
            assert failures == []


def test_an_answer_never_mixes_versions(tmp_path: Path) -> None:
    with (
        _small_shards(tmp_path, versions=True) as (groups, queries, _),
        grpc.insecure_channel(groups[SHARDS][0].address) as channel,
        routing(_small_router(groups, "fail")) as (_, stub),
    ):
        single = VectorServiceStub(channel)
        for query in queries[:10]:
            request = pb.SearchRequest(index="small", vector=_query(query), k=10)
            got = stub.Search(request, timeout=5)
            want = single.Search(request, timeout=5)
            assert got.version == 1  # shard 0 serves 2 already, the others only 1
            assert list(got.neighbors.ids) == list(want.neighbors.ids)
        with pytest.raises(grpc.RpcError) as caught:  # version 2 is on shard 0 only
            stub.Search(pb.SearchRequest(index="small", vector=_query(query), k=10, version=2), timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_search_by_id_equals_one_index_on_the_exact_backend(tmp_path: Path) -> None:
    with (
        _small_shards(tmp_path) as (groups, _, ids),
        grpc.insecure_channel(groups[SHARDS][0].address) as channel,
        routing(_small_router(groups, "fail")) as (_, stub),
    ):
        single = VectorServiceStub(channel)
        spec = types_pb2.Filter(exclude_ids=ids[:50])
        for item in ids[::40]:
            for k, item_filter in ((1, None), (10, None), (25, spec)):
                request = pb.SearchByIdRequest(index="small", id=item, k=k, filter=item_filter)
                got, want = stub.SearchById(request, timeout=5), single.SearchById(request, timeout=5)
                assert list(got.neighbors.ids) == list(want.neighbors.ids)
                assert item not in got.neighbors.ids
                np.testing.assert_allclose(got.neighbors.distances, want.neighbors.distances, rtol=1e-5, atol=1e-5)
                assert got.index == "small"
                assert got.version == want.version
                assert not got.missing_shards
        # Exclusions at their limit: the router cannot add the item's id, and still answers as one index.
        full = [*ids[:50], *(f"absent-{i}" for i in range(MAX_EXCLUDE_IDS - 50))]
        for item, listed in ((ids[400], full), (ids[10], full), (ids[400], [*full[:-1], ids[400]])):
            request = pb.SearchByIdRequest(index="small", id=item, k=10, filter=types_pb2.Filter(exclude_ids=listed))
            got, want = stub.SearchById(request, timeout=5), single.SearchById(request, timeout=5)
            assert list(got.neighbors.ids) == list(want.neighbors.ids)
            assert len(got.neighbors.ids) == 10
            assert item not in got.neighbors.ids
        # ... except at the largest k: the shards refuse k + 1, and the router says what to change.
        at_most = LimitsConfig().max_k
        request = pb.SearchByIdRequest(index="small", id=ids[400], k=at_most, filter=types_pb2.Filter(exclude_ids=full))
        assert len(single.SearchById(request, timeout=5).neighbors.ids) > 0
        with pytest.raises(grpc.RpcError) as caught:
            stub.SearchById(request, timeout=5)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert dict(caught.value.trailing_metadata())["flux-error-reason"] == "K_OUT_OF_RANGE"
        assert f"asking each shard for k + 1 = {at_most + 1}" in caught.value.details()
        assert "ask for a smaller k, or send at most 9,999 ids" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.SearchById(pb.SearchByIdRequest(index="small", id="no-such-item", k=5), timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert dict(caught.value.trailing_metadata())["flux-error-reason"] == "ITEM_NOT_FOUND"
        with pytest.raises(grpc.RpcError) as caught:
            stub.SearchById(pb.SearchByIdRequest(index="small", id=ids[1], k=0), timeout=5)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_search_by_id_on_an_index_sharded_by_crowding_tag_asks_every_shard(cluster: Cluster) -> None:
    for item in cluster.ids[::500]:
        request = pb.SearchByIdRequest(index="items", id=item, k=10)
        got = cluster.stub.SearchById(request, timeout=10)
        want = cluster.single_stub.SearchById(request, timeout=10)
        assert list(got.neighbors.ids) == list(want.neighbors.ids)
    # A crowding cap with the exclusions at their limit: the item cannot be dropped after the merge
    # (it would hold a place of its tag), so the router says which limit it met.
    full = types_pb2.Filter(exclude_ids=[f"absent-{i}" for i in range(MAX_EXCLUDE_IDS)], max_per_crowding_tag=2)
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.SearchById(pb.SearchByIdRequest(index="items", id=cluster.ids[0], k=10, filter=full), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(caught.value.trailing_metadata())["flux-error-reason"] == "INVALID_FILTER"
    assert "at most 9,999" in caught.value.details()


def test_search_by_id_with_the_owning_shard_stopped_is_unavailable(tmp_path: Path) -> None:
    with _small_shards(tmp_path) as (groups, _, ids):
        owned = [i for i in ids if shard_of(i, SHARDS) == 2]
        groups[2][0].stop(grace=0)
        with routing(_small_router(groups, "partial")) as (_, stub):
            with pytest.raises(grpc.RpcError) as caught:
                stub.SearchById(pb.SearchByIdRequest(index="small", id=owned[0], k=5), timeout=3)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "shard-00002-of-00004" in caught.value.details()
            other = next(i for i in ids if shard_of(i, SHARDS) == 0)
            got = stub.SearchById(pb.SearchByIdRequest(index="small", id=other, k=5), timeout=3)
            assert list(got.missing_shards) == ["shard-00002-of-00004"]
            assert len(got.neighbors.ids) == 5


def test_router_config_is_checked() -> None:
    one = {"name": "x", "shard_count": 2, "shards": ["dns:///a:1"]}
    with pytest.raises(ConfigError, match="shard_count"):
        router_config([one])
    with pytest.raises(ConfigError, match="serves no indexes"):
        flux_config.parse(
            {"indexes": [{"name": "a", "path": "/x"}], "router": {"indexes": [{**one, "shards": ["a:1", "b:1"]}]}}
        )


def test_a_replica_reporting_not_serving_gets_no_calls_until_it_serves_again(tmp_path: Path) -> None:
    """The router's channels check each replica's health the gRPC way: a replica that says
    NOT_SERVING (loading, draining) is left out at once. The second replica here holds other
    vectors under the same ids, so any call it answered shows in the answer."""
    base, queries = dataset(400, 16, 20, seed=7)
    ids = ids_for(len(base))
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                running_server(
                    server_config(
                        [{"name": "small", "path": str(_build(tmp_path / name, vectors, ids, "exact", "small"))}]
                    )
                )
            )
            for name, vectors in (("kept", base), ("other", -base))
        ]
        with grpc.insecure_channel(replicas[0].address) as channel:
            truth = [list(VectorServiceStub(channel).Search(_search(q), timeout=10).neighbors.ids) for q in queries]
        replicas[1].health.set(VECTOR_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        config = router_config([{"name": "small", "shard_count": 1, "shards": [_target(*replicas)]}])
        with routing(config) as (_, stub):
            for _ in range(3):
                for query, want in zip(queries, truth, strict=True):
                    assert list(stub.Search(_search(query), timeout=10).neighbors.ids) == want
            replicas[1].health.set(VECTOR_SERVICE, health_pb2.HealthCheckResponse.SERVING)
            deadline = time.monotonic() + 30
            while all(
                list(stub.Search(_search(query), timeout=10).neighbors.ids) == want
                for query, want in zip(queries, truth, strict=True)
            ):
                assert time.monotonic() < deadline, "the replica serving again never got a call"


def _search(vector: np.ndarray) -> pb.SearchRequest:
    return pb.SearchRequest(index="small", vector=_query(vector), k=10)
