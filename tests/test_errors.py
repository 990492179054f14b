"""Bad requests get the right status code and a message that names the problem; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flux.api.errors import shortened
from flux.server import FluxServer
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from tests import support

DIM = 64


def raw(values: np.ndarray, dimension: int = DIM) -> types_pb2.FloatVectors:
    return types_pb2.FloatVectors(dimension=dimension, data=np.asarray(values, dtype="<f4").tobytes())


def good_query() -> types_pb2.FloatVectors:
    return raw(np.ones(DIM))


def expect_error(call: Callable[[], object], code: grpc.StatusCode, *fragments: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in error.details(), error.details()
    return error


@pytest.fixture(autouse=True)
def still_serving(vectors_stub: VectorServiceStub) -> object:
    """After every bad request, a good one on the same server still succeeds."""
    yield
    response = vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=good_query(), k=5))
    assert len(response.neighbors.ids) == 5


def test_wrong_dimension(vectors_stub: VectorServiceStub) -> None:
    error = expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=raw(np.ones(32), 32), k=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "vector.dimension is 32",
        "dimension 64",
    )
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[-1].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "vector.dimension"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(vectors_stub: VectorServiceStub, value: float) -> None:
    query = np.ones((3, DIM))
    query[2, 7] = value
    expect_error(
        lambda: vectors_stub.BatchSearch(pb.BatchSearchRequest(index="hnsw-l2", queries=raw(query), k=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "row 2 contains NaN or Inf",
    )


def test_k_zero(vectors_stub: VectorServiceStub) -> None:
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=good_query(), k=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "k must be between 1 and 256, got 0",
    )


def test_k_above_the_maximum(vectors_stub: VectorServiceStub) -> None:
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="annoy-l2", vector=good_query(), k=257)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "k must be between 1 and 256, got 257",
    )


def test_override_k_above_the_maximum(vectors_stub: VectorServiceStub) -> None:
    request = pb.BatchSearchRequest(
        index="exact-l2", queries=raw(np.ones((2, DIM))), k=5, overrides=[pb.QueryOverride(), pb.QueryOverride(k=999)]
    )
    expect_error(lambda: vectors_stub.BatchSearch(request), grpc.StatusCode.INVALID_ARGUMENT, "overrides[1].k")


def test_empty_batch(vectors_stub: VectorServiceStub) -> None:
    expect_error(
        lambda: vectors_stub.BatchSearch(pb.BatchSearchRequest(index="hnsw-l2", queries=raw(np.empty((0, DIM))), k=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "queries holds no vectors",
    )


def test_batch_above_the_maximum(vectors_stub: VectorServiceStub) -> None:
    expect_error(
        lambda: vectors_stub.BatchSearch(pb.BatchSearchRequest(index="hnsw-l2", queries=raw(np.ones((513, DIM))), k=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "queries holds 513 vectors; the limit is 512",
    )


def test_bytes_that_do_not_fit_the_dimension(vectors_stub: VectorServiceStub) -> None:
    vector = types_pb2.FloatVectors(dimension=DIM, data=np.ones(DIM, "<f4").tobytes() + b"\x00\x00")
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=vector, k=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "vector.data holds 258 bytes",
        "256 bytes each",
    )


def test_missing_dimension(vectors_stub: VectorServiceStub) -> None:
    vector = types_pb2.FloatVectors(data=np.ones(DIM, "<f4").tobytes())
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="exact-l2", vector=vector, k=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "vector.dimension is 0",
    )


def test_several_vectors_in_a_single_search(vectors_stub: VectorServiceStub) -> None:
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=raw(np.ones((2, DIM))), k=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exactly one vector, got 2",
        "BatchSearch",
    )


def test_unknown_index(vectors_stub: VectorServiceStub) -> None:
    error = expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="no-such-index", vector=good_query(), k=5)),
        grpc.StatusCode.NOT_FOUND,
        "no index named 'no-such-index'",
        "(indexes: annoy-cosine, annoy-ip, annoy-l2, broken, exact-cosine,",  # auth is off: names are no secret
    )
    assert ("flux-error-reason", "INDEX_NOT_FOUND") in (error.trailing_metadata() or ())


@pytest.mark.parametrize("name", ["x" * 20_000, "\u00e9" * 20_000])
def test_a_huge_made_up_name_is_cut_in_the_error_not_turned_into_another_error(
    vectors_stub: VectorServiceStub, name: str
) -> None:
    """gRPC refuses trailers past 16 KiB: echoed whole, the name would reach the caller as
    RESOURCE_EXHAUSTED (metadata too large), which reads as overload and invites retries."""
    error = expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index=name, vector=good_query(), k=5)),
        grpc.StatusCode.NOT_FOUND,
        "no index named '" + name[:100],
        " ... ",
        "' (indexes: annoy-cosine,",  # the end of the message survives the cut
    )
    assert ("flux-error-reason", "INDEX_NOT_FOUND") in (error.trailing_metadata() or ())
    assert len(error.details().encode()) <= 1024
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=good_query(), k=5, params={name: 1.0})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown parameter '" + name[:100],
        "(accepted: ef)",
    )


def test_shortened_cuts_the_middle_on_character_boundaries() -> None:
    assert shortened("short", 16) == "short"
    # Two bytes a character: 7 bytes each side of " ... " fall inside a character, which is dropped.
    assert shortened("ab" + "\u00e9" * 50 + "yz", 20) == "ab\u00e9\u00e9 ... \u00e9\u00e9yz"
    assert len(shortened("\u00e9" * 5000, 1024).encode()) <= 1024


def test_unknown_id(vectors_stub: VectorServiceStub) -> None:
    error = expect_error(
        lambda: vectors_stub.SearchById(pb.SearchByIdRequest(index="hnsw-l2", id="item:nope", k=5)),
        grpc.StatusCode.NOT_FOUND,
        "has no item with id 'item:nope'",
    )
    assert ("flux-error-reason", "ITEM_NOT_FOUND") in (error.trailing_metadata() or ())


def test_unknown_search_param(vectors_stub: VectorServiceStub) -> None:
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="annoy-l2", vector=good_query(), k=5, params={"ef": 10})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown parameter 'ef' (accepted: search_k)",
    )


def test_search_param_out_of_range(vectors_stub: VectorServiceStub) -> None:
    expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=good_query(), k=5, params={"ef": 0.5})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "params.ef must be between 1 and 100000, got 0.5",
    )


def test_index_that_failed_to_load(server: FluxServer, vectors_stub: VectorServiceStub) -> None:
    error = expect_error(
        lambda: vectors_stub.Search(pb.SearchRequest(index="broken", vector=good_query(), k=5)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "index 'broken' has no version to serve: nothing-here ",
    )
    assert str(server.config.indexes[-1].path.parent) not in error.details()  # its name, not where it is


def test_oversized_message_is_refused_and_the_server_survives(tmp_path: object, data: object) -> None:
    from pathlib import Path

    base = np.ones((10, DIM), np.float32) * np.arange(10)[:, None]
    path = support.build_artifact(Path(str(tmp_path)) / "small", base, backend="exact", metric="l2")
    config = support.server_config([{"name": "small", "path": str(path)}], limits={"max_message_bytes": 4096})
    with support.running_server(config) as srv, support.channel_to(srv) as ch:
        stub = VectorServiceStub(ch)
        big = raw(np.ones((32, DIM)))  # 8 KiB of vectors
        expect_error(
            lambda: stub.BatchSearch(pb.BatchSearchRequest(index="small", queries=big, k=1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert stub.Search(pb.SearchRequest(index="small", vector=good_query(), k=1)).neighbors.ids == ["item:000001"]


def test_an_unexpected_error_is_internal_without_a_traceback(
    server: FluxServer, vectors_stub: VectorServiceStub
) -> None:
    index = server.catalog.get("exact-l2")

    def explode(*args: object, **kwargs: object) -> object:
        raise RuntimeError("secret internals")

    original = index.backend.search
    index.backend.search = explode  # type: ignore[method-assign]
    try:
        error = expect_error(
            lambda: vectors_stub.Search(pb.SearchRequest(index="exact-l2", vector=good_query(), k=5)),
            grpc.StatusCode.INTERNAL,
            "request id",
        )
    finally:
        index.backend.search = original  # type: ignore[method-assign]
    assert "secret" not in error.details()
    assert "Traceback" not in error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INTERNAL", "flux.vectors")
    assert info.metadata["request_id"] in error.details()  # the id to report, also as metadata
