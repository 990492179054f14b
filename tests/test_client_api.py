"""The Python client against a live server: numpy in and out, every call, typed errors, asyncio."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from flux import config as flux_config
from flux.server import FluxServer
from flux_api.v1 import admin_service_pb2, types_pb2, vector_service_pb2
from flux_client import (
    AsyncFluxClient,
    BatchTooLarge,
    DimensionMismatch,
    FailedPrecondition,
    Filter,
    FluxClient,
    IndexFailed,
    IndexNotFound,
    InvalidArgument,
    ItemNotFound,
    KOutOfRange,
    NotFound,
    UnknownParam,
    VersionNotFound,
    _channel,
    _codec,
    _status,
    id_hashes,
)
from tests import support
from tests.test_client_install import released_contract_version

Data = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def client(server: FluxServer) -> Iterator[FluxClient]:
    with FluxClient(server.address) as flux:
        yield flux


def test_one_vector_in_gives_1d_arrays_of_the_true_neighbours(client: FluxClient, data: Data) -> None:
    base, queries = data
    truth, distances = support.brute_force(base, queries[:1], "l2", 10)
    ids, found = client.search("exact-l2", queries[0], k=10)
    assert ids.shape == (10,)
    assert found.shape == (10,)
    assert found.dtype == np.float32
    assert ids.tolist() == [support.ids_for(len(base))[i] for i in truth[0]]
    np.testing.assert_allclose(found, distances[0], rtol=1e-4)


def test_a_matrix_goes_in_one_batch_and_matches_single_searches(client: FluxClient, data: Data) -> None:
    _, queries = data
    result = client.search("hnsw-cosine", queries[:7].tolist(), k=5)  # lists of floats are fine too
    assert result.ids.shape == (7, 5)
    assert result.distances.shape == (7, 5)
    assert (result.index, result.version) == ("hnsw-cosine", 3)
    for row in range(7):
        single = client.search("hnsw-cosine", queries[row], k=5)
        assert single.ids.tolist() == result.ids[row].tolist()
        np.testing.assert_allclose(single.distances, result.distances[row], rtol=1e-6)


def test_batch_search_with_a_k_per_query_pads_the_shorter_rows(client: FluxClient, data: Data) -> None:
    _, queries = data
    result = client.batch_search("exact-ip", queries[:3], k=4, ks=[1, 4, 2])
    assert result.ids.shape == (3, 4)
    assert [sum(1 for i in row if i) for row in result.ids] == [1, 4, 2]
    assert result.ids[0, 1:].tolist() == ["", "", ""]
    assert np.isinf(result.distances[0, 1:]).all()
    assert np.isfinite(result.distances[1]).all()


def test_search_by_id_leaves_the_item_out(client: FluxClient) -> None:
    ids, distances = client.search_by_id("exact-l2", "item:000042", k=5)
    assert len(ids) == 5
    assert "item:000042" not in ids.tolist()
    assert (np.diff(distances) >= 0).all()


def test_search_params_reach_the_backend(client: FluxClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.search("hnsw-l2", np.ones(64), k=5, params={"ef": 0})
    assert caught.value.field.startswith("params")
    assert len(client.search("hnsw-l2", np.ones(64), k=5, params={"ef": 200}).ids) == 5


def test_a_filter_excludes_ids_in_single_and_batch_searches(client: FluxClient, data: Data) -> None:
    _, queries = data
    plain = client.search("exact-l2", queries[:2], k=6)
    unwanted = [*plain.ids[0, :2], *plain.ids[1, :2]]
    one = client.search("exact-l2", queries[0], k=4, filter=Filter(exclude_ids=unwanted))
    assert one.ids.tolist() == plain.ids[0, 2:6].tolist()  # exact search: the next ones move up
    both = client.batch_search("exact-l2", queries[:2], k=4, filter=Filter(exclude_ids=unwanted))
    assert both.ids.tolist() == plain.ids[:, 2:6].tolist()
    by_id = client.search_by_id("exact-l2", "item:000042", k=3, filter=Filter(exclude_ids=unwanted))
    assert not set(by_id.ids.tolist()) & set(unwanted)
    hashed = Filter(exclude_id_hashes=id_hashes(unwanted))  # the same ids, by their hashes
    assert client.batch_search("exact-l2", queries[:2], k=4, filter=hashed).ids.tolist() == both.ids.tolist()
    as_list = Filter(exclude_ids=unwanted[:1], exclude_id_hashes=id_hashes(unwanted[1:]).tolist())
    assert client.search("exact-l2", queries[0], k=4, filter=as_list).ids.tolist() == one.ids.tolist()
    as_tuple = Filter(exclude_id_hashes=tuple(int(h) for h in id_hashes(unwanted)))
    assert client.search("exact-l2", queries[0], k=4, filter=as_tuple).ids.tolist() == one.ids.tolist()


def test_filters_that_cannot_be_encoded_are_refused_before_sending(client: FluxClient) -> None:
    for bad in (
        Filter(allow={"market": "SE"}),
        Filter(exclude_ids="item:000001"),
        Filter(max_per_crowding_tag=-1),
        Filter(exclude_id_hashes=[-1]),
        Filter(exclude_id_hashes=[2**64]),
        Filter(exclude_id_hashes=np.array([1.5])),
        Filter(exclude_id_hashes="item:000001"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidArgument) as caught:
            client.search("exact-l2", np.ones(64), filter=bad)
        assert caught.value.field.startswith("filter")


def test_a_request_can_name_the_version_that_answers(client: FluxClient) -> None:
    assert client.search("exact-l2", np.ones(64), k=3, version=3).version == 3
    with pytest.raises(NotFound) as caught:
        client.search("exact-l2", np.ones(64), k=3, version=99)
    assert "version 99" in caught.value.message
    with pytest.raises(InvalidArgument):
        client.search("exact-l2", np.ones(64), k=3, version=-1)


def test_an_alias_answers_under_its_name_and_a_routing_key_sticks_to_one_arm(
    artifacts: dict[str, Path],
) -> None:
    indexes = [{"name": n, "path": str(artifacts[n])} for n in ("exact-l2", "hnsw-l2")]
    alias = {"name": "experiment", "arms": [{"index": "exact-l2", "weight": 50}, {"index": "hnsw-l2", "weight": 50}]}
    raw = {"server": {"host": "127.0.0.1", "port": 0}, "indexes": indexes, "aliases": [alias]}
    with (
        support.running_server(flux_config.parse(raw, source="alias test")) as server,
        FluxClient(server.address) as flux,
    ):
        sticky = {flux.search("experiment", np.ones(64), k=3, routing_key="user-1").index for _ in range(20)}
        spread = {flux.search("experiment", np.ones(64), k=3, routing_key=f"user-{i}").index for i in range(40)}
        answer = flux.search("experiment", np.ones(64), k=3)
    assert len(sticky) == 1
    assert spread == {"exact-l2", "hnsw-l2"}
    assert answer.alias == "experiment"
    assert answer.index in {"exact-l2", "hnsw-l2"}


def test_describe_and_list_indexes(client: FluxClient) -> None:
    info = client.describe("hnsw-l2")
    assert (info.name, info.backend, info.dimension, info.metric) == ("hnsw-l2", "hnsw", 64, "l2")
    assert (info.count, info.version, info.state) == (5000, 3, "serving")
    assert "ef" in info.default_search_params
    assert info.capabilities["thread_safe_search"] is True
    indexes = {i.name: i for i in client.list_indexes()}
    assert {"exact-l2", "annoy-ip", "broken"} <= set(indexes)
    assert indexes["broken"].state == "failed"
    assert indexes["broken"].error


def test_errors_are_typed_and_carry_code_message_reason_and_field(client: FluxClient) -> None:
    with pytest.raises(IndexNotFound) as missing:
        client.search("no-such-index", np.ones(64))
    assert missing.value.code is grpc.StatusCode.NOT_FOUND
    assert missing.value.reason == "INDEX_NOT_FOUND"
    assert "no-such-index" in missing.value.message

    with pytest.raises(InvalidArgument) as wrong:
        client.search("exact-l2", np.ones(32))
    assert wrong.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(wrong.value, ValueError)
    assert wrong.value.field == "vector.dimension"
    assert "dimension 64" in wrong.value.message

    with pytest.raises(ItemNotFound) as item:
        client.search_by_id("exact-l2", "item:nope")
    assert isinstance(item.value, NotFound | KeyError)
    assert item.value.reason == "ITEM_NOT_FOUND"
    assert str(item.value).startswith("NOT_FOUND: ")

    with pytest.raises(FailedPrecondition) as broken:
        client.search("broken", np.ones(64))
    assert broken.value.code is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.search("exact-l2", np.ones(64), k=0), "k"),
        (lambda c: c.search("exact-l2", np.ones((2, 2, 64))), "vectors"),
        (lambda c: c.search("exact-l2", ["a", "b"]), "vectors"),
        (lambda c: c.batch_search("exact-l2", np.ones(64)), "queries"),
        (lambda c: c.batch_search("exact-l2", np.ones((2, 64)), ks=[1]), "ks"),
        (lambda c: c.search("exact-l2", np.ones(64), params={"ef": "high"}), "params"),
    ],
)
def test_input_that_cannot_be_encoded_is_refused_before_sending(
    client: FluxClient, call: Callable[[FluxClient], object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        call(client)
    assert caught.value.field == field
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_nan_is_refused_by_the_server_naming_the_field(client: FluxClient) -> None:
    vector = np.ones(64)
    vector[3] = np.nan
    with pytest.raises(InvalidArgument) as caught:
        client.search("exact-l2", vector)
    assert "NaN" in caught.value.message
    assert caught.value.field == "vector"


def test_short_answers_are_padded_to_k() -> None:
    neighbors = types_pb2.Neighbors(ids=["a", "b"], distances=[0.5, 1.5])
    result = _codec.result(vector_service_pb2.SearchResponse(index="i", version=2, neighbors=neighbors), 4)
    assert result.ids.tolist() == ["a", "b", "", ""]
    assert result.distances.tolist() == [0.5, 1.5, np.inf, np.inf]


def test_batch_answers_packed_or_not_give_the_same_padded_arrays() -> None:
    rows = [types_pb2.Neighbors(ids=["a", "b"], distances=[0.5, 1.5]), types_pb2.Neighbors(ids=["c"], distances=[2.0])]
    packed = types_pb2.PackedNeighbors(ids=["a", "b", "c"], distances=[0.5, 1.5, 2.0], counts=[2, 1])
    for response in (  # a server older than packed answers sends rows whatever the request asked
        vector_service_pb2.BatchSearchResponse(index="i", version=2, results=rows),
        vector_service_pb2.BatchSearchResponse(index="i", version=2, packed=packed),
    ):
        result = _codec.batch_result(response, 3)
        assert result.ids.tolist() == [["a", "b", ""], ["c", "", ""]]
        assert result.distances.tolist() == [[0.5, 1.5, np.inf], [2.0, np.inf, np.inf]]
        assert (result.index, result.version) == ("i", 2)


def test_the_reason_falls_back_to_the_trailer_when_details_are_absent() -> None:
    assert _status.details([(_status.REASON_KEY, "INDEX_NOT_FOUND")]).reason == "INDEX_NOT_FOUND"
    assert _status.details([(_status.DETAILS_KEY, b"\xff\xff not a status")]) == _status.Details()
    assert _status.details(None) == _status.Details()


def test_the_asyncio_client_has_the_same_answers(server: FluxServer, client: FluxClient, data: Data) -> None:
    _, queries = data

    async def run() -> None:
        async with AsyncFluxClient(server.address) as flux:
            one, batch, by_id, info = await asyncio.gather(
                flux.search("hnsw-l2", queries[0], k=5),
                flux.batch_search("hnsw-l2", queries[:4], k=5),
                flux.search_by_id("hnsw-l2", "item:000007", k=5),
                flux.describe("hnsw-l2"),
            )
            assert one.ids.tolist() == client.search("hnsw-l2", queries[0], k=5).ids.tolist()
            assert batch.ids.tolist() == client.batch_search("hnsw-l2", queries[:4], k=5).ids.tolist()
            assert by_id.ids.tolist() == client.search_by_id("hnsw-l2", "item:000007", k=5).ids.tolist()
            assert info == client.describe("hnsw-l2")
            assert len(await flux.list_indexes()) == len(client.list_indexes())
            with pytest.raises(IndexNotFound):
                await flux.search("no-such-index", queries[0])

    asyncio.run(run())


def test_only_calls_that_read_are_retried() -> None:
    config = json.loads(_channel.service_config(retries=4, load_balancing="round_robin", wait_for_ready=False))
    [method] = config["methodConfig"]
    assert method["retryPolicy"]["maxAttempts"] == 5
    names = method["name"]
    assert {"service": "flux_api.v1.VectorService"} in names
    admin = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]
    retried = {n["method"] for n in names if n["service"] == admin.full_name}
    assert retried <= set(admin.methods_by_name)  # no stale names
    assert retried == {m for m in admin.methods_by_name if m.startswith(("List", "Get"))}


def test_constructor_arguments_are_checked() -> None:
    for kwargs, fragment in [
        ({"retries": 5}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"load_balancing": "random"}, "load_balancing"),
        ({"token": ""}, "token"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            FluxClient("127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


def test_errors_are_typed_by_their_reason_and_carry_metadata_and_field_violations(client: FluxClient) -> None:
    with pytest.raises(DimensionMismatch) as wrong:
        client.search("exact-l2", np.ones(32))
    assert isinstance(wrong.value, InvalidArgument | ValueError)
    assert (wrong.value.reason, wrong.value.domain) == ("DIMENSION_MISMATCH", "flux.vectors")
    assert wrong.value.metadata == {"field": "vector.dimension", "index": "exact-l2"}
    [violation] = wrong.value.field_violations
    assert violation.field == "vector.dimension"
    assert "dimension 64" in violation.description

    with pytest.raises(KOutOfRange) as k:
        client.search("exact-l2", np.ones(64), k=257)
    assert (k.value.field, k.value.limit) == ("k", 256)
    with pytest.raises(BatchTooLarge) as batch:
        client.search("exact-l2", np.ones((513, 64)), k=1)
    assert batch.value.limit == 512
    with pytest.raises(UnknownParam):
        client.search("annoy-l2", np.ones(64), params={"ef": 10})
    with pytest.raises(VersionNotFound):
        client.search("exact-l2", np.ones(64), version=99)
    with pytest.raises(IndexFailed) as broken:
        client.search("broken", np.ones(64))
    assert isinstance(broken.value, FailedPrecondition)
    with pytest.raises(KOutOfRange) as local:  # refused before sending, typed alike
        client.search("exact-l2", np.ones(64), k=0)
    assert (local.value.reason, local.value.domain, local.value.field) == ("K_OUT_OF_RANGE", "", "k")


def test_a_reader_learns_what_it_needs_to_query_an_index(client: FluxClient) -> None:
    info = client.describe_index("hnsw-l2")
    admin = client.describe("hnsw-l2")
    assert (info.name, info.backend, info.dimension, info.metric, info.count, info.version, info.state) == (
        admin.name,
        admin.backend,
        admin.dimension,
        admin.metric,
        admin.count,
        admin.version,
        admin.state,
    )
    assert info.default_search_params == admin.default_search_params == {"ef": 64.0}
    assert info.capabilities == admin.capabilities
    assert (info.build_params, info.stats, info.alias) == ({}, {}, "")  # an admin's only
    broken = client.describe_index("broken")
    assert (broken.state, broken.dimension) == ("failed", 0)
    with pytest.raises(IndexNotFound):
        client.describe_index("no-such-index")


def test_an_alias_is_described_by_the_arm_its_routing_key_selects(artifacts: dict[str, Path]) -> None:
    indexes = [{"name": n, "path": str(artifacts[n])} for n in ("exact-l2", "hnsw-cosine")]
    alias = {"name": "split", "arms": [{"index": "exact-l2", "weight": 50}, {"index": "hnsw-cosine", "weight": 50}]}
    raw = {"server": {"host": "127.0.0.1", "port": 0}, "indexes": indexes, "aliases": [alias]}
    with (
        support.running_server(flux_config.parse(raw, source="alias test")) as server,
        FluxClient(server.address) as flux,
    ):
        described = {key: flux.describe_index("split", routing_key=key) for key in (f"user-{i}" for i in range(40))}
        answered = {key: flux.search("split", np.ones(64), k=1, routing_key=key).index for key in described}
    assert {key: info.name for key, info in described.items()} == answered
    assert {info.name: info.metric for info in described.values()} == {"exact-l2": "l2", "hnsw-cosine": "cosine"}
    assert {info.alias for info in described.values()} == {"split"}


def test_server_info_names_the_contract_release_the_software_and_the_backends(client: FluxClient) -> None:
    import flux
    from flux_client import CONTRACT_VERSION

    info = client.server_info()
    assert info.contract_version == CONTRACT_VERSION == released_contract_version()
    assert info.server_version == flux.__version__
    backends = {b.name: b for b in info.backends}
    assert {"exact", "hnsw", "annoy", "voyager"} <= set(backends)
    assert backends["hnsw"].default_search_params == {"ef": 64.0}
    assert backends["hnsw"].capabilities["mutable"] is True
    assert backends["annoy"].capabilities["mutable"] is False
    assert info.supports("1.0.0")
    assert info.supports(CONTRACT_VERSION)
    assert not info.supports("2.0.0")
    major, minor, _ = (int(p) for p in CONTRACT_VERSION.split("."))
    assert not info.supports(f"{major}.{minor + 1}.0")


def test_the_asyncio_client_reads_and_types_errors_alike(server: FluxServer, client: FluxClient) -> None:
    async def run() -> None:
        async with AsyncFluxClient(server.address) as flux:
            assert await flux.describe_index("hnsw-l2") == client.describe_index("hnsw-l2")
            assert await flux.server_info() == client.server_info()
            with pytest.raises(DimensionMismatch) as wrong:
                await flux.search("exact-l2", np.ones(32))
            assert wrong.value.metadata == {"field": "vector.dimension", "index": "exact-l2"}
            with pytest.raises(KOutOfRange) as k:
                await flux.batch_search("exact-l2", np.ones((2, 64)), k=300)
            assert k.value.limit == 256

    asyncio.run(run())
