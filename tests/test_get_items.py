"""VectorService.GetItems against a real server: stored vectors by id, absent ids, errors, roles, clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from flux.api.auth import hash_token
from flux.server import FluxServer
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_client import AsyncFluxClient, FluxClient
from tests.support import build_artifact, channel_to, dataset, ids_for, running_server, server_config

N, DIM = 300, 8
TOKENS = {"reader": "reader-token-get-items", "writer": "writer-token-get-items"}


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return dataset(N, DIM, 1, seed=11)[0].astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, base: np.ndarray) -> Iterator[FluxServer]:
    path = build_artifact(tmp_path_factory.mktemp("items") / "exact", base, backend="exact", metric="l2", name="exact")
    tokens = [{"name": f"{role}-1", "role": role, "sha256": hash_token(t)} for role, t in TOKENS.items()]
    with running_server(server_config([{"name": "exact", "path": str(path)}], auth={"tokens": tokens})) as running:
        yield running


def _reader() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS['reader']}"),)


def _reason(error: grpc.RpcError) -> str:
    return str(dict(error.trailing_metadata() or ()).get("flux-error-reason"))


def test_found_items_come_back_in_request_order_as_stored(server: FluxServer, base: np.ndarray) -> None:
    ids = ids_for(N)
    with channel_to(server) as channel:
        asked = [ids[7], "no-such-item", ids[0], ids[7]]
        got = VectorServiceStub(channel).GetItems(pb.GetItemsRequest(index="exact", ids=asked), metadata=_reader())
    assert got.index == "exact"
    assert got.version == 1
    assert [i.id for i in got.items] == asked
    assert [i.found for i in got.items] == [True, False, True, True]
    assert not got.items[1].HasField("vector")
    for item, row in zip([got.items[0], got.items[2]], [7, 0], strict=True):
        assert item.vector.dimension == DIM
        np.testing.assert_array_equal(np.frombuffer(item.vector.data, "<f4"), base[row])


def test_errors_carry_their_reasons(server: FluxServer) -> None:
    stub_calls = [
        (pb.GetItemsRequest(index="nope", ids=["item:000001"]), grpc.StatusCode.NOT_FOUND, "INDEX_NOT_FOUND"),
        (pb.GetItemsRequest(index="exact", ids=["item:000001"], version=9), grpc.StatusCode.NOT_FOUND, None),
        (pb.GetItemsRequest(index="exact"), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_BATCH"),
        (pb.GetItemsRequest(index="exact", ids=["x"] * 1025), grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE"),
    ]
    with channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        for request, code, reason in stub_calls:
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetItems(request, metadata=_reader(), timeout=10)
            assert caught.value.code() is code, request
            if reason:
                assert _reason(caught.value) == reason


def test_a_reader_token_is_enough_and_none_is_refused(server: FluxServer) -> None:
    with channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        request = pb.GetItemsRequest(index="exact", ids=["item:000003"])
        assert stub.GetItems(request, metadata=_reader(), timeout=10).items[0].found
        writer = (("authorization", f"Bearer {TOKENS['writer']}"),)
        assert stub.GetItems(request, metadata=writer, timeout=10).items[0].found
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetItems(request, timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_the_clients_return_found_ids_and_a_matrix(server: FluxServer, base: np.ndarray) -> None:
    ids = ids_for(N)
    with FluxClient(server.address, token=TOKENS["reader"], retries=0) as client:
        found, vectors = client.get_items("exact", [ids[5], "absent", ids[9]])
        assert found == [ids[5], ids[9]]
        np.testing.assert_array_equal(vectors, base[[5, 9]])
        none, empty = client.get_items("exact", ["absent"])
        assert none == []
        assert empty.shape[0] == 0

    async def run() -> None:
        async with AsyncFluxClient(server.address, token=TOKENS["reader"], retries=0) as client:
            found, vectors = await client.get_items("exact", [ids[2]])
            assert found == [ids[2]]
            np.testing.assert_array_equal(vectors, base[[2]])

    asyncio.run(run())
