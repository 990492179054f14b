"""The same request against the same index version returns the same ids in the same order, whatever
ran before it: 200 filtered and unfiltered requests per backend, sent twice to a real server, the
second time interleaved with other traffic (sequential requests between them, and a client
sending other filtered queries concurrently). The planner's choice between exact scan, over-fetch
and push-down depends only on counts and fixed constants (flux.core.query.costs), never on the
timings of earlier searches, so nothing that ran before can change an answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flux.server import FluxServer
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.backend import Metric
from flux_core.storage import builder
from flux_core.storage.attributes import ItemAttributes
from tests import support

N, DIM, K = 10_000, 16, 10
BACKENDS = ("hnsw", "annoy", "faiss", "faiss-ivf")
BUCKETS = 200


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base, queries = support.dataset(n=N, dimension=DIM, queries=300, seed=11)
    buckets = np.random.default_rng(11).integers(0, BUCKETS, N)
    return base, queries, buckets


@pytest.fixture(scope="module")
def server(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FluxServer]:
    base, _, buckets = data
    root: Path = tmp_path_factory.mktemp("determinism")
    attributes = [ItemAttributes({"bucket": (f"b{b}",)}, f"artist:{i % 700}") for i, b in enumerate(buckets.tolist())]
    indexes = []
    for backend in BACKENDS:
        builder.build(
            root / backend,
            base,
            support.ids_for(N),
            backend=backend,
            metric=Metric.L2,
            name=backend,
            threads=2,
            attributes=attributes,
        )
        indexes.append({"name": backend, "path": str(root / backend)})
    with support.running_server(support.server_config(indexes)) as srv:
        yield srv


def vectors(matrix: np.ndarray) -> types_pb2.FloatVectors:
    matrix = np.atleast_2d(np.asarray(matrix, dtype="<f4"))
    return types_pb2.FloatVectors(dimension=matrix.shape[1], data=matrix.tobytes())


def requests(
    backend: str, base: np.ndarray, queries: np.ndarray, seed: int
) -> list[pb.SearchRequest | pb.BatchSearchRequest]:
    """200 requests: unfiltered ones, token filters from 50% down to 0.5%, each query's own nearest
    items excluded (up to 2,000 of them), crowding caps, and BatchSearch calls mixing all of these."""
    rng = np.random.default_rng(seed)
    nearest = np.argsort(((queries[:, None, :] - base[None, :2000, :]) ** 2).sum(-1), axis=1)  # among the first 2,000
    out: list[pb.SearchRequest | pb.BatchSearchRequest] = []

    def a_filter(row: int) -> types_pb2.Filter:
        kind = int(rng.integers(5))
        if kind == 0:
            return types_pb2.Filter()
        allowed = rng.choice(BUCKETS, int(rng.choice([1, 5, 20, 100])), replace=False)
        allow = [types_pb2.Restrict(namespace="bucket", tokens=[f"b{b}" for b in allowed])]
        if kind == 1:
            return types_pb2.Filter(allow=allow)
        excluded = [f"item:{i:06d}" for i in nearest[row, : int(rng.choice([50, 500, 2000]))]]
        if kind == 2:
            return types_pb2.Filter(exclude_ids=excluded)
        if kind == 3:
            return types_pb2.Filter(allow=allow, exclude_ids=excluded[:300], max_per_crowding_tag=2)
        return types_pb2.Filter(max_per_crowding_tag=1)

    for number in range(200):
        row = int(rng.integers(len(queries)))
        if number % 10 == 9:
            rows = rng.choice(len(queries), 6, replace=False)
            overrides = [pb.QueryOverride(filter=a_filter(int(r))) for r in rows]
            out.append(pb.BatchSearchRequest(index=backend, queries=vectors(queries[rows]), k=K, overrides=overrides))
        else:
            out.append(pb.SearchRequest(index=backend, vector=vectors(queries[row]), k=K, filter=a_filter(row)))
    return out


def send(stub: VectorServiceStub, request: pb.SearchRequest | pb.BatchSearchRequest) -> list[tuple[list[str], int]]:
    """The ids and strategy of each row of the answer."""
    if isinstance(request, pb.BatchSearchRequest):
        return [(list(r.ids), r.strategy) for r in stub.BatchSearch(request).results]
    neighbors = stub.Search(request).neighbors
    return [(list(neighbors.ids), neighbors.strategy)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_requests_get_the_same_answers_whatever_ran_before(
    server: FluxServer, data: tuple[np.ndarray, np.ndarray, np.ndarray], backend: str
) -> None:
    base, queries, _ = data
    same = requests(backend, base, queries[:150], seed=1)
    other = requests(backend, base, queries[150:], seed=2)
    with support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        first = [send(stub, request) for request in same]
        strategies = {strategy for answer in first for _, strategy in answer}
        assert types_pb2.SEARCH_STRATEGY_EXACT_SCAN in strategies  # the mix takes more than one path
        assert len(strategies) >= 2, strategies

        stop = threading.Event()
        errors: list[BaseException] = []

        def traffic() -> None:  # other queries, concurrently, until the second pass is done
            try:
                while not stop.is_set():
                    for request in other:
                        send(stub, request)
                        if stop.is_set():
                            break
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        for request in other[:100]:  # and other queries first, sequentially
            send(stub, request)
        concurrent = threading.Thread(target=traffic)
        concurrent.start()
        try:
            second = []
            for number, request in enumerate(same):
                send(stub, other[(number * 7) % len(other)])  # interleaved: another request before each
                second.append(send(stub, request))
        finally:
            stop.set()
            concurrent.join()
    assert not errors, f"the concurrent traffic failed: {errors[0]!r}"
    differ = [number for number, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    assert not differ, (
        f"{len(differ)} of {len(same)} requests to {backend} were answered differently the second time "
        f"(first: request {differ[0]}: {first[differ[0]]} then {second[differ[0]]})"
    )
