"""Search through the generated stubs against a real server: recall, exact distances, batch, by id."""

from __future__ import annotations

import numpy as np
import pytest

from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
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
