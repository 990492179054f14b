"""Search through the generated stubs against a real server: recall, exact distances, batch, by id."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_backends.exact import ExactBackend
from flux_core.backend import Metric
from tests import support
from tests.conftest import BACKENDS, METRICS

K = 10


def vectors(matrix: np.ndarray) -> types_pb2.FloatVectors:
    matrix = np.atleast_2d(np.asarray(matrix, dtype="<f4"))
    return types_pb2.FloatVectors(dimension=matrix.shape[1], data=matrix.tobytes())


def label(item_id: str) -> int:
    return int(item_id.split(":")[1])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_recall_at_10_against_exact_search(
    vectors_stub: VectorServiceStub, data: tuple[np.ndarray, np.ndarray], backend: str, metric: str
) -> None:
    base, queries = data
    truth, truth_distances = support.brute_force(base, queries, metric, K)
    found, hits = [], 0
    for row, query in enumerate(queries):
        response = vectors_stub.Search(pb.SearchRequest(index=f"{backend}-{metric}", vector=vectors(query), k=K))
        assert response.index == f"{backend}-{metric}"
        assert response.version == 3
        assert len(response.neighbors.ids) == K
        labels = [label(i) for i in response.neighbors.ids]
        distances = np.array(response.neighbors.distances)
        assert (np.diff(distances) >= -1e-6).all(), "neighbours must come nearest first"
        hits += len(set(labels) & set(truth[row].tolist()))
        found.append(distances)
    recall = hits / (len(queries) * K)
    if backend == "exact":
        assert recall == 1.0
        np.testing.assert_allclose(np.array(found), truth_distances, rtol=1e-5, atol=1e-5)
    else:
        assert recall >= 0.95, f"{backend}/{metric}: recall@10 {recall:.3f}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_search_matches_single_searches(
    vectors_stub: VectorServiceStub, data: tuple[np.ndarray, np.ndarray], backend: str
) -> None:
    _, queries = data
    index = f"{backend}-l2"
    batch = vectors_stub.BatchSearch(pb.BatchSearchRequest(index=index, queries=vectors(queries[:50]), k=K))
    assert (batch.index, batch.version, len(batch.results)) == (index, 3, 50)
    for row, result in enumerate(batch.results):
        single = vectors_stub.Search(pb.SearchRequest(index=index, vector=vectors(queries[row]), k=K))
        assert list(result.ids) == list(single.neighbors.ids)
        np.testing.assert_allclose(result.distances, single.neighbors.distances, rtol=1e-6)
    request = pb.BatchSearchRequest(index=index, queries=vectors(queries[:50]), k=K, packed=True)
    packed = vectors_stub.BatchSearch(request)
    assert (packed.index, packed.version, len(packed.results)) == (index, 3, 0)
    assert support.unpacked(packed.packed) == list(batch.results)


def test_batch_overrides_give_each_query_its_own_k_and_params(
    vectors_stub: VectorServiceStub, data: tuple[np.ndarray, np.ndarray]
) -> None:
    _, queries = data
    overrides = [pb.QueryOverride(k=3), pb.QueryOverride(), pb.QueryOverride(k=20, params={"ef": 200})]
    response = vectors_stub.BatchSearch(
        pb.BatchSearchRequest(index="hnsw-l2", queries=vectors(queries[:3]), k=5, overrides=overrides)
    )
    assert [len(r.ids) for r in response.results] == [3, 5, 20]
    packed = pb.BatchSearchRequest(index="hnsw-l2", queries=vectors(queries[:3]), k=5, overrides=overrides, packed=True)
    assert support.unpacked(vectors_stub.BatchSearch(packed).packed) == list(response.results)
    exact = vectors_stub.BatchSearch(pb.BatchSearchRequest(index="exact-l2", queries=vectors(queries[:3]), k=20))
    assert list(response.results[0].ids) == list(exact.results[0].ids[:3])


def test_a_batch_row_gets_what_search_gives_it_whatever_k_other_rows_ask(
    vectors_stub: VectorServiceStub, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """hnswlib widens its beam to k: rows searched together at the largest k among them got a wider
    beam than they asked for, so a row's answer changed with its neighbours' k."""
    _, queries = data
    rows = queries[:20]
    low = {"ef": 10}
    overrides = [pb.QueryOverride(params=low)] * (len(rows) - 1) + [pb.QueryOverride(k=200, params=low)]
    batch = vectors_stub.BatchSearch(
        pb.BatchSearchRequest(index="hnsw-l2", queries=vectors(rows), k=10, overrides=overrides)
    )
    for row, got in zip(rows[:-1], batch.results[:-1], strict=True):
        alone = vectors_stub.Search(pb.SearchRequest(index="hnsw-l2", vector=vectors(row), k=10, params=low))
        assert list(got.ids) == list(alone.neighbors.ids)
    assert len(batch.results[-1].ids) == 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_by_id_excludes_the_item_itself(
    vectors_stub: VectorServiceStub, data: tuple[np.ndarray, np.ndarray], backend: str
) -> None:
    base, _ = data
    item = 1234
    response = vectors_stub.SearchById(pb.SearchByIdRequest(index=f"{backend}-cosine", id=f"item:{item:06d}", k=K))
    labels = [label(i) for i in response.neighbors.ids]
    assert len(labels) == K
    assert item not in labels
    truth, _ = support.brute_force(base, base[item : item + 1], "cosine", K + 1)
    expected = [t for t in truth[0].tolist() if t != item][:K]
    assert len(set(labels) & set(expected)) >= 9


def test_k_larger_than_the_index_returns_every_item(vectors_stub: VectorServiceStub, tmp_path: object) -> None:
    # The shared indexes hold 5,000 items and max_k is 256, so use a tiny index of its own.
    from pathlib import Path

    small = np.eye(4, 8, dtype=np.float32) + 0.1
    with (
        support.running_server(
            support.server_config(
                [
                    {
                        "name": b,
                        "path": str(support.build_artifact(Path(str(tmp_path)) / b, small, backend=b, metric="l2")),
                    }
                    for b in BACKENDS
                ]
            )
        ) as srv,
        support.channel_to(srv) as ch,
    ):
        stub = VectorServiceStub(ch)
        for backend in BACKENDS:
            response = stub.Search(pb.SearchRequest(index=backend, vector=vectors(small[0]), k=10))
            assert sorted(response.neighbors.ids) == ["item:000000", "item:000001", "item:000002", "item:000003"]
            assert response.neighbors.ids[0] == "item:000000"
            assert response.neighbors.fewer_than_k_matched
            batch = stub.BatchSearch(pb.BatchSearchRequest(index=backend, queries=vectors(small[:2]), k=10))
            assert [row.ids[0] for row in batch.results] == ["item:000000", "item:000001"]
            assert [len(row.ids) == len(row.distances) == 4 for row in batch.results] == [True, True]
            assert all(row.fewer_than_k_matched for row in batch.results)
            request = pb.BatchSearchRequest(index=backend, queries=vectors(small[:2]), k=10, packed=True)
            assert support.unpacked(stub.BatchSearch(request).packed) == list(batch.results)


# -- queries too large for float32, answers too large to send ---------------------------------------------------


def refused(call: Any, request: Any) -> tuple[str, str]:
    """The details and the BadRequest field of a call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert [d.Unpack(bad_request) for d in status.details if d.Is(bad_request.DESCRIPTOR)] == [True]
    return caught.value.details(), bad_request.field_violations[0].field


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_query_whose_distances_would_overflow_float32_is_refused_naming_its_row(
    vectors_stub: VectorServiceStub, data: tuple[np.ndarray, np.ndarray], backend: str, metric: str
) -> None:
    _, queries = data
    index = f"{backend}-{metric}"
    huge = queries[:3].copy()
    huge[2] = 1e38  # finite values whose squared norm is inf in float32
    details, field = refused(vectors_stub.BatchSearch, pb.BatchSearchRequest(index=index, queries=vectors(huge), k=K))
    assert field == "queries"
    assert "queries row 2 has a squared norm of inf in float32, above the largest Flux accepts" in details
    details, field = refused(vectors_stub.Search, pb.SearchRequest(index=index, vector=vectors(huge[2]), k=K))
    assert (field, details.startswith("vector row 0 has a squared norm of inf")) == ("vector", True)
    far = queries[:3].copy()
    far[1, 0] = 8e18  # a finite squared norm, 6.4e37, but above 2**125: distances to it could overflow
    details, _ = refused(vectors_stub.BatchSearch, pb.BatchSearchRequest(index=index, queries=vectors(far), k=K))
    assert "queries row 1 has a squared norm of 6.4e+37" in details

    edge = queries[0] / np.linalg.norm(queries[0]) * 6.4e18  # squared norm 4.1e37, just under 2**125
    response = vectors_stub.Search(pb.SearchRequest(index=index, vector=vectors(edge), k=K))
    assert len(response.neighbors.ids) == K
    assert np.isfinite(response.neighbors.distances).all()


def test_exact_gives_stored_vectors_too_large_for_float32_distance_inf_without_a_warning() -> None:
    # Only an artifact built from such vectors elsewhere holds them: the API refuses them.
    stored = np.array([[3e38, 0.0], [1.0, 1.0]], np.float32)
    with np.errstate(over="ignore"):
        backend = ExactBackend.build(stored, Metric.L2, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels, distances = backend.search(np.zeros((1, 2), np.float32), 2, {})
    assert labels.tolist() == [[1, 0]]
    assert distances.tolist() == [[2.0, np.inf]]


@pytest.fixture(scope="module")
def long_ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 items whose ids are 1,000 bytes long: within limits.max_id_bytes, yet 100 of them are 100 KB."""
    base, _ = support.dataset(n=300, dimension=8, queries=1)
    ids = [f"{i:04d}" + "x" * 996 for i in range(300)]
    return support.build_artifact(tmp_path_factory.mktemp("long") / "long", base, backend="exact", metric="l2", ids=ids)


def test_an_answer_too_large_to_send_is_refused_naming_the_limit_and_counted_as_the_caller_saw_it(
    long_ids: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 256 * 1024
    config = support.server_config(
        [{"name": "long", "path": str(long_ids)}], limits={"max_message_bytes": limit}, logging={"requests": True}
    )
    method = "flux_api.v1.VectorService/BatchSearch"

    def counted(code: str) -> float:
        return REGISTRY.get_sample_value("flux_requests_total", {"method": method, "index": "long", "code": code}) or 0

    before = {code: counted(code) for code in ("OK", "RESOURCE_EXHAUSTED")}
    queries = vectors(np.ones((8, 8), np.float32))
    with (
        caplog.at_level(logging.INFO, logger="flux.requests"),
        support.running_server(config) as server,
        support.channel_to(server) as channel,
    ):
        stub = VectorServiceStub(channel)
        for packed in (False, True):  # 8 x k=100 ids of 1,000 bytes: about 800 KB
            with pytest.raises(grpc.RpcError) as caught:
                stub.BatchSearch(pb.BatchSearchRequest(index="long", queries=queries, k=100, packed=packed))
            error = caught.value
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "more than the server may send (limits.max_message_bytes: 262,144 bytes)" in error.details()
            assert "a smaller k or fewer queries per batch" in error.details()
            trailers = dict(error.trailing_metadata())
            assert trailers["flux-error-reason"] == "RESPONSE_TOO_LARGE"
            logged = [r.__dict__ for r in caplog.records if r.__dict__.get("request_id") == trailers["x-request-id"]]
            assert [(r["method"], r["code"]) for r in logged] == [(method, "RESOURCE_EXHAUSTED")]
        answer = stub.BatchSearch(pb.BatchSearchRequest(index="long", queries=queries, k=20))  # about 160 KB
        assert [len(row.ids) for row in answer.results] == [20] * 8
        assert answer.ByteSize() > 100_000
    assert counted("RESOURCE_EXHAUSTED") - before["RESOURCE_EXHAUSTED"] == 2
    assert counted("OK") - before["OK"] == 1
    codes = [r.__dict__["code"] for r in caplog.records if r.name == "flux.requests"]
    assert codes == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "OK"]


def test_a_streamed_answer_too_large_to_send_is_refused_and_counted_likewise(long_ids: Path) -> None:
    # Server reflection answers in a stream; at the smallest message limit, a file descriptor does not fit.
    config = support.server_config([{"name": "long", "path": str(long_ids)}], limits={"max_message_bytes": 1024})
    method = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

    def counted(code: str) -> float:
        return REGISTRY.get_sample_value("flux_requests_total", {"method": method, "index": "", "code": code}) or 0

    before = {code: counted(code) for code in ("OK", "RESOURCE_EXHAUSTED")}
    with support.running_server(config) as server, support.channel_to(server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol="flux_api.v1.VectorService")
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ServerReflectionInfo(iter([ask])))
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(limits.max_message_bytes: 1,024 bytes)" in caught.value.details()
        services = reflection_pb2.ServerReflectionRequest(list_services="")  # a small answer still goes through
        (answer,) = stub.ServerReflectionInfo(iter([services]))
        assert "flux_api.v1.VectorService" in [s.name for s in answer.list_services_response.service]
    assert counted("RESOURCE_EXHAUSTED") - before["RESOURCE_EXHAUSTED"] == 1
    assert counted("OK") - before["OK"] == 1
