"""Filtered Search, BatchSearch and SearchById through the generated stubs against a real server.

Every answer is checked against exact filtered search computed here, independently of Flux:
float64 brute force over the items that pass, crowding applied in distance order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flux.core.serving.index import ServedIndex
from flux.server import FluxServer
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_client import id_hashes
from flux_core.storage.attributes import ItemAttributes
from tests import support

N, DIM, K = 4000, 16, 10
BACKENDS = ("exact", "hnsw", "annoy", "faiss", "faiss-ivf")
GENRES, MARKETS = 100, 5


@dataclass(frozen=True)
class Catalog:
    """The indexed items: vectors, attributes as arrays, and held-out queries."""

    base: np.ndarray
    queries: np.ndarray
    genre: np.ndarray
    markets: np.ndarray  # (N, MARKETS) bool
    artist: np.ndarray

    def attributes(self) -> list[ItemAttributes]:
        return [
            ItemAttributes(
                {"genre": (f"g{self.genre[i]}",), "market": tuple(f"m{m}" for m in np.flatnonzero(self.markets[i]))},
                f"artist:{self.artist[i]}",
            )
            for i in range(len(self.base))
        ]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    base, queries = support.dataset(n=N, dimension=DIM, queries=60, seed=7)
    rng = np.random.default_rng(7)
    markets = rng.random((N, MARKETS)) < 0.4
    markets[np.arange(N), rng.integers(0, MARKETS, N)] = True
    # Neighbours often share an artist (a cell of 6 random hyperplanes), so crowding bites.
    artist = ((base - base.mean(0)) @ rng.standard_normal((DIM, 6)) > 0).astype(int) @ (1 << np.arange(6))
    return Catalog(base, queries, rng.integers(0, GENRES, N), markets, artist)


@pytest.fixture(scope="module")
def server(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    from flux_core.backend import Metric
    from flux_core.storage import builder

    root = tmp_path_factory.mktemp("filtered")
    indexes = []
    for backend in BACKENDS:
        builder.build(
            root / backend,
            catalog.base,
            support.ids_for(N),
            backend=backend,
            metric=Metric.L2,
            name=backend,
            threads=2,
            attributes=catalog.attributes(),
        )
        indexes.append({"name": backend, "path": str(root / backend)})
    tiny = support.build_artifact(root / "tiny", catalog.base[:4], backend="hnsw", metric="l2")  # no attributes
    indexes.append({"name": "tiny", "path": str(tiny)})
    with support.running_server(support.server_config(indexes, limits={"max_k": 256})) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: FluxServer) -> Iterator[VectorServiceStub]:
    with support.channel_to(server) as channel:
        yield VectorServiceStub(channel)


def vectors(matrix: np.ndarray) -> types_pb2.FloatVectors:
    matrix = np.atleast_2d(np.asarray(matrix, dtype="<f4"))
    return types_pb2.FloatVectors(dimension=matrix.shape[1], data=matrix.tobytes())


def labels(neighbors: types_pb2.Neighbors) -> list[int]:
    return [int(i.split(":")[1]) for i in neighbors.ids]


@dataclass(frozen=True)
class Case:
    """A filter on the wire, and which items it lets through."""

    message: types_pb2.Filter
    passes: np.ndarray  # (N,) bool
    cap: int


def random_case(catalog: Catalog, rng: np.random.Generator) -> Case:
    genres = rng.choice(GENRES, int(rng.choice([1, 3, 10, 60])), replace=False)
    market = int(rng.integers(MARKETS))
    excluded = rng.choice(N, 300, replace=False)
    cap = int(rng.choice([0, 1, 2]))
    message = types_pb2.Filter(
        allow=[types_pb2.Restrict(namespace="genre", tokens=[f"g{g}" for g in genres])],
        deny=[types_pb2.Restrict(namespace="market", tokens=[f"m{market}"])],
        exclude_ids=[f"item:{i:06d}" for i in excluded] + ["not-in-this-index"],
        max_per_crowding_tag=cap,
    )
    passes = np.isin(catalog.genre, genres) & ~catalog.markets[:, market]
    passes[excluded] = False
    return Case(message, passes, cap)


def exact(catalog: Catalog, query: np.ndarray, case: Case, k: int = K) -> tuple[list[int], np.ndarray]:
    """The exact filtered answer: labels and float64 distances, nearest first."""
    candidates = np.flatnonzero(case.passes)
    diff = catalog.base[candidates].astype(np.float64) - query.astype(np.float64)
    distances = np.einsum("ij,ij->i", diff, diff)
    order = np.argsort(distances, kind="stable")
    taken: list[int] = []
    per_tag: dict[int, int] = {}
    for position in order.tolist():
        label = int(candidates[position])
        tag = int(catalog.artist[label])
        if case.cap and per_tag.get(tag, 0) >= case.cap:
            continue
        per_tag[tag] = per_tag.get(tag, 0) + 1
        taken.append(position)
        if len(taken) == k:
            break
    return candidates[taken].tolist(), distances[taken]


def assert_obeys(catalog: Catalog, found: list[int], case: Case) -> None:
    """The guarantees that hold whatever the strategy: the filter, the exclusions, the crowding cap."""
    assert len(set(found)) == len(found)
    assert case.passes[found].all(), "an item that the filter excludes came back"
    if case.cap:
        _, counts = np.unique(catalog.artist[found], return_counts=True)
        assert counts.max(initial=0) <= case.cap


@pytest.mark.parametrize("backend", BACKENDS)
def test_filtered_search_finds_what_exact_filtered_search_finds(
    stub: VectorServiceStub, catalog: Catalog, backend: str
) -> None:
    rng = np.random.default_rng(1)
    hits = wanted = 0
    for query in catalog.queries:
        case = random_case(catalog, rng)
        response = stub.Search(pb.SearchRequest(index=backend, vector=vectors(query), k=K, filter=case.message))
        found = labels(response.neighbors)
        truth, truth_distances = exact(catalog, query, case)
        assert_obeys(catalog, found, case)
        assert len(found) == len(truth)
        assert response.neighbors.fewer_than_k_matched == (len(truth) < K)
        assert response.neighbors.strategy in (
            types_pb2.SEARCH_STRATEGY_EXACT_SCAN,
            types_pb2.SEARCH_STRATEGY_OVERFETCH,
            types_pb2.SEARCH_STRATEGY_NATIVE_FILTER,
        )
        assert (np.diff(response.neighbors.distances) >= 0).all()
        if backend == "exact":
            np.testing.assert_allclose(response.neighbors.distances, truth_distances, rtol=1e-5, atol=1e-5)
        hits += len(set(found) & set(truth))
        wanted += len(truth)
    assert hits / wanted >= (1.0 if backend == "exact" else 0.95)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_excluded_by_their_hashes_are_left_out_as_by_their_ids(
    stub: VectorServiceStub, catalog: Catalog, backend: str
) -> None:
    """The same exclusions sent as hashes, all or half of them, give the very same answer: the
    same items left out, the same strategy, nothing else changed; a hash no id has is ignored."""
    rng = np.random.default_rng(5)
    for query in catalog.queries[:20]:
        case = random_case(catalog, rng)
        ids = list(case.message.exclude_ids)
        as_ids = stub.Search(pb.SearchRequest(index=backend, vector=vectors(query), k=K, filter=case.message))
        assert_obeys(catalog, labels(as_ids.neighbors), case)
        for kept in (0, len(ids) // 2):
            hashed = types_pb2.Filter()
            hashed.CopyFrom(case.message)
            del hashed.exclude_ids[kept:]
            hashed.exclude_id_hashes.extend([*id_hashes(ids[kept:]).tolist(), 2**64 - 1])
            as_hashes = stub.Search(pb.SearchRequest(index=backend, vector=vectors(query), k=K, filter=hashed))
            assert as_hashes.neighbors == as_ids.neighbors
    # In a batch too, as the batch's filter and as one row's own.
    rows = catalog.queries[20:24]
    case = random_case(catalog, rng)
    hashed = types_pb2.Filter(exclude_id_hashes=id_hashes(list(case.message.exclude_ids)).tolist())
    listed = types_pb2.Filter(exclude_ids=case.message.exclude_ids)
    answers = [
        stub.BatchSearch(
            pb.BatchSearchRequest(
                index=backend,
                queries=vectors(rows),
                k=K,
                filter=shared,
                overrides=[pb.QueryOverride(), pb.QueryOverride(filter=own), pb.QueryOverride(), pb.QueryOverride()],
            )
        ).results
        for shared, own in ((listed, listed), (hashed, hashed), (types_pb2.Filter(), hashed))
    ]
    assert list(answers[1]) == list(answers[0])
    assert answers[2][1] == answers[0][1]  # the row's own filter, under a batch with none
    assert answers[2][0] != answers[0][0]  # and the batch's filter left something out


def test_the_answer_says_how_it_was_found_and_when_fewer_than_k_pass(stub: VectorServiceStub, catalog: Catalog) -> None:
    query = vectors(catalog.queries[0])
    plain = stub.Search(pb.SearchRequest(index="hnsw", vector=query, k=K))
    assert plain.neighbors.strategy == types_pb2.SEARCH_STRATEGY_INDEX
    assert not plain.neighbors.fewer_than_k_matched

    genre = int(np.bincount(catalog.genre, minlength=GENRES).argmin())
    few = int((catalog.genre == genre).sum())
    rare = types_pb2.Filter(allow=[types_pb2.Restrict(namespace="genre", tokens=[f"g{genre}"])])
    for backend in BACKENDS:
        response = stub.Search(pb.SearchRequest(index=backend, vector=query, k=few + 5, filter=rare))
        assert sorted(labels(response.neighbors)) == np.flatnonzero(catalog.genre == genre).tolist()
        assert response.neighbors.fewer_than_k_matched
        assert response.neighbors.strategy == types_pb2.SEARCH_STRATEGY_EXACT_SCAN

    nothing = types_pb2.Filter(allow=[types_pb2.Restrict(namespace="mood", tokens=["calm"])])
    response = stub.Search(pb.SearchRequest(index="annoy", vector=query, k=K, filter=nothing))
    assert list(response.neighbors.ids) == []
    assert response.neighbors.fewer_than_k_matched

    small = stub.Search(pb.SearchRequest(index="tiny", vector=query, k=K))  # 4 items, no filter
    assert len(small.neighbors.ids) == 4
    assert small.neighbors.fewer_than_k_matched
    assert small.neighbors.strategy == types_pb2.SEARCH_STRATEGY_INDEX


def test_an_empty_filter_is_no_filter(stub: VectorServiceStub, catalog: Catalog) -> None:
    query = vectors(catalog.queries[1])
    plain = stub.Search(pb.SearchRequest(index="hnsw", vector=query, k=K))
    empty = stub.Search(pb.SearchRequest(index="hnsw", vector=query, k=K, filter=types_pb2.Filter()))
    assert list(empty.neighbors.ids) == list(plain.neighbors.ids)
    assert empty.neighbors.strategy == types_pb2.SEARCH_STRATEGY_INDEX


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_filter_that_leaves_nothing_out_is_an_unfiltered_search(
    stub: VectorServiceStub, catalog: Catalog, backend: str
) -> None:
    """Ids the index does not hold exclude nothing: the plain search answers (on faiss it was pushed down)."""
    query = vectors(catalog.queries[1])
    plain = stub.Search(pb.SearchRequest(index=backend, vector=query, k=K))
    unknown = ["no-such-item", "item:999999999"]
    for leaves_nothing in (
        types_pb2.Filter(exclude_ids=unknown),
        types_pb2.Filter(exclude_id_hashes=id_hashes(unknown).tolist()),
    ):
        got = stub.Search(pb.SearchRequest(index=backend, vector=query, k=K, filter=leaves_nothing))
        assert list(got.neighbors.ids) == list(plain.neighbors.ids)
        assert got.neighbors.strategy == types_pb2.SEARCH_STRATEGY_INDEX
    capped = types_pb2.Filter(exclude_ids=["no-such-item"], max_per_crowding_tag=1)  # a cap still filters
    got = stub.Search(pb.SearchRequest(index=backend, vector=query, k=K, filter=capped))
    assert got.neighbors.strategy != types_pb2.SEARCH_STRATEGY_INDEX


@pytest.mark.parametrize("backend", ["exact", "hnsw", "faiss", "faiss-ivf"])
def test_batch_search_gives_each_query_its_own_filter(stub: VectorServiceStub, catalog: Catalog, backend: str) -> None:
    rng = np.random.default_rng(2)
    queries = catalog.queries[:6]
    shared = random_case(catalog, rng)
    own = [random_case(catalog, rng) for _ in queries]
    overrides = [
        pb.QueryOverride(filter=own[0].message),
        pb.QueryOverride(),  # the batch's filter
        pb.QueryOverride(filter=types_pb2.Filter()),  # an empty filter: none at all
        pb.QueryOverride(k=3, filter=own[3].message),
        pb.QueryOverride(filter=own[4].message),
        pb.QueryOverride(k=20),
    ]
    response = stub.BatchSearch(
        pb.BatchSearchRequest(index=backend, queries=vectors(queries), k=K, filter=shared.message, overrides=overrides)
    )
    expected_cases = [own[0], shared, None, own[3], own[4], shared]
    for row, (result, case) in enumerate(zip(response.results, expected_cases, strict=True)):
        k = overrides[row].k or K
        assert len(result.ids) == k
        if case is None:
            assert result.strategy == types_pb2.SEARCH_STRATEGY_INDEX
            continue
        assert_obeys(catalog, labels(result), case)
        single = stub.Search(pb.SearchRequest(index=backend, vector=vectors(queries[row]), k=k, filter=case.message))
        assert list(result.ids) == list(single.neighbors.ids)
        if backend == "exact":
            assert labels(result) == exact(catalog, queries[row], case, k)[0]

    packed = stub.BatchSearch(
        pb.BatchSearchRequest(
            index=backend, queries=vectors(queries), k=K, filter=shared.message, overrides=overrides, packed=True
        )
    )
    assert not packed.results
    for row, (result, case) in enumerate(zip(support.unpacked(packed.packed), expected_cases, strict=True)):
        k = overrides[row].k or K
        assert len(result.ids) == len(result.distances) == k
        assert list(result.ids) == list(response.results[row].ids)  # the same request, the same answer
        assert result.strategy == response.results[row].strategy
        if case is None:
            assert result.strategy == types_pb2.SEARCH_STRATEGY_INDEX
            continue
        assert_obeys(catalog, labels(result), case)
        if backend == "exact":
            assert labels(result) == exact(catalog, queries[row], case, k)[0]

    everyone = stub.BatchSearch(
        pb.BatchSearchRequest(index=backend, queries=vectors(queries), k=K, filter=shared.message)
    )
    assert [list(r.ids) for r in everyone.results][1] == list(response.results[1].ids)
    for result in everyone.results:
        assert_obeys(catalog, labels(result), shared)


def test_search_by_id_with_a_filter_leaves_the_item_out(stub: VectorServiceStub, catalog: Catalog) -> None:
    item = 1234
    keep = types_pb2.Filter(
        allow=[
            types_pb2.Restrict(
                namespace="genre", tokens=[f"g{g}" for g in range(GENRES // 2)] + [f"g{catalog.genre[item]}"]
            )
        ],
        max_per_crowding_tag=1,
    )
    passes = np.isin(catalog.genre, [*list(range(GENRES // 2)), catalog.genre[item]])
    passes[item] = False
    case = Case(keep, passes, 1)
    for backend in BACKENDS:
        response = stub.SearchById(pb.SearchByIdRequest(index=backend, id=f"item:{item:06d}", k=K, filter=keep))
        found = labels(response.neighbors)
        assert item not in found
        assert_obeys(catalog, found, case)
        truth, _ = exact(catalog, catalog.base[item], case)
        assert len(set(found) & set(truth)) >= (K if backend == "exact" else K - 1)
    plain = stub.SearchById(pb.SearchByIdRequest(index="hnsw", id=f"item:{item:06d}", k=K))
    assert plain.neighbors.strategy == types_pb2.SEARCH_STRATEGY_INDEX


def bad_request(call: Callable[[], object]) -> tuple[str, str]:
    """The field a BadRequest detail names, and the message, of a call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[-1].Unpack(detail)
    return detail.field_violations[0].field, error.details()


def test_bad_filters_are_invalid_argument_naming_the_field(stub: VectorServiceStub, catalog: Catalog) -> None:
    query = vectors(catalog.queries[0])
    too_many = types_pb2.Filter(exclude_ids=[f"item:{i:06d}" for i in range(10_001)])
    field, message = bad_request(
        lambda: stub.Search(pb.SearchRequest(index="hnsw", vector=query, k=K, filter=too_many))
    )
    assert field == "filter.exclude_ids"
    assert "10,001 ids; at most 10,000 per query" in message

    ids = [f"item:{i:06d}" for i in range(10_001)]
    for too_many, named, says in (
        (types_pb2.Filter(exclude_id_hashes=id_hashes(ids).tolist()), "exclude_id_hashes", "holds 10,001 ids"),
        (
            types_pb2.Filter(exclude_ids=ids[:5_000], exclude_id_hashes=id_hashes(ids[5_000:]).tolist()),
            "exclude_id_hashes",
            "filter.exclude_ids and filter.exclude_id_hashes hold 10,001 ids together",
        ),
    ):
        field, message = bad_request(
            lambda f=too_many: stub.Search(pb.SearchRequest(index="hnsw", vector=query, k=K, filter=f))
        )
        assert field == f"filter.{named}"
        assert says in message

    limit = types_pb2.Filter(exclude_ids=[f"item:{i:06d}" for i in range(10_000)])
    response = stub.Search(pb.SearchRequest(index="exact", vector=query, k=K, filter=limit))
    assert list(response.neighbors.ids) == []  # all 4,000 items are among the 10,000 excluded
    assert response.neighbors.fewer_than_k_matched

    unnamed = types_pb2.Filter(allow=[types_pb2.Restrict(tokens=["x"])])
    overrides = [pb.QueryOverride(), pb.QueryOverride(filter=unnamed)]
    field, _ = bad_request(
        lambda: stub.BatchSearch(
            pb.BatchSearchRequest(index="hnsw", queries=vectors(catalog.queries[:2]), k=K, overrides=overrides)
        )
    )
    assert field == "overrides[1].filter.allow[0].namespace"

    twice = types_pb2.Filter(
        deny=[
            types_pb2.Restrict(namespace="genre", tokens=["g1"]),
            types_pb2.Restrict(namespace="genre", tokens=["g2"]),
        ]
    )
    field, message = bad_request(
        lambda: stub.SearchById(pb.SearchByIdRequest(index="annoy", id="item:000001", k=K, filter=twice))
    )
    assert field == "filter.deny[1].namespace"
    assert "appears twice" in message

    no_tokens = types_pb2.Filter(allow=[types_pb2.Restrict(namespace="genre")])
    field, _ = bad_request(lambda: stub.Search(pb.SearchRequest(index="exact", vector=query, k=K, filter=no_tokens)))
    assert field == "filter.allow[0].tokens"


def test_filters_on_an_index_built_without_attributes(stub: VectorServiceStub, catalog: Catalog) -> None:
    query = vectors(catalog.base[0])
    allow = types_pb2.Filter(allow=[types_pb2.Restrict(namespace="genre", tokens=["g1"])])
    assert not stub.Search(pb.SearchRequest(index="tiny", vector=query, k=K, filter=allow)).neighbors.ids
    exclude = types_pb2.Filter(exclude_ids=["item:000000"], max_per_crowding_tag=1)  # no tags: no crowding
    response = stub.Search(pb.SearchRequest(index="tiny", vector=query, k=K, filter=exclude))
    assert sorted(response.neighbors.ids) == ["item:000001", "item:000002", "item:000003"]
    assert response.neighbors.fewer_than_k_matched


def test_the_cost_model_is_fixed_and_holds_for_scans_of_any_size() -> None:
    """Costs come from counts and constants, never from timings: the same counts, the same choice."""
    from flux.core.query.costs import Costs

    costs = Costs.of("hnsw", 64, copy=True)
    assert costs == Costs.of("hnsw", 64, copy=True)
    size = 200_000
    small, large, full = (costs.scan(items, size) for items in (2_000, 50_000, size))
    assert small < large <= full
    # A near-full scan reads every row in order: it costs what sweeping the index costs, not a
    # multiple of what a small scan cost per item (the learnt model predicted 2 ms for 20 ms).
    assert costs.sweeps(size - 1_000, size)
    assert not costs.sweeps(2_000, size)
    assert full >= 64 * size * 1e-9
    # faiss's bounded beam grows faster than linearly: deep push-downs lose to a scan.
    faiss = Costs.of("faiss", 64, copy=True)
    assert faiss.native(1_500, size) < faiss.scan(size - 1_000, size) < faiss.native(15_000, size)
    # An inverted file's scan grows with the depth alone: leaving out 10,000 nearest items is pushed down.
    ivf = Costs.of("faiss-ivf", 64, copy=True)
    assert ivf.native(15_000, size) < ivf.scan(size - 10_000, size) / 3
    # Without the vector copy, every scanned item is a call into the backend.
    assert Costs.of("hnsw", 64, copy=False).scan(2_000, size) > 10 * small
    # A filterable backend's push-down builds a bit per label: at 200,000 items a broad filter's
    # over-fetch of 40 candidates costs less than pushing it down.
    for name in ("faiss", "faiss-ivf"):
        model = Costs.of(name, 64, copy=True)
        assert model.fetch(40, size) < model.native(30, size)


def _served_with_free_fetching(catalog: Catalog, backend: str, tmp_path: Path) -> tuple[ServedIndex, list[str]]:
    """``backend``'s index of the catalog, served in process, its planner told that fetching costs
    nothing: push-down and over-fetch then win over a scan at the catalog's small size."""
    from dataclasses import replace

    from flux_core.backend import Metric
    from flux_core.storage import artifact, builder

    ids = support.ids_for(N)
    path = tmp_path / backend
    builder.build(path, catalog.base, ids, backend=backend, metric=Metric.L2, name="f", attributes=catalog.attributes())
    index = ServedIndex("f", artifact.load(path))
    index.planner.costs = replace(index.planner.costs, fetch_fixed=0.0, fetch_per_value=0.0, fetch_squared=0.0)
    return index, ids


@pytest.mark.parametrize("backend", ["faiss", "faiss-ivf"])
def test_a_filterable_backend_over_fetches_unless_excluded_items_lie_near_the_query(
    catalog: Catalog, backend: str, tmp_path: Path
) -> None:
    """With over-fetching made the cheaper way, a restrict alone is over-fetched; the same restrict
    with the query's nearest items excluded is pushed down (an over-fetch would have to read past
    them); and with as many items excluded far from the query, the first over-fetch, which tells
    the two apart, finds k passing ones and is the answer."""
    from flux.core.query.filters import Filter, Strategy

    index, ids = _served_with_free_fetching(catalog, backend, tmp_path)
    query = catalog.queries[3]
    order = np.argsort(((catalog.base - query) ** 2).sum(axis=1))
    half = [("genre", [f"g{g}" for g in range(GENRES // 2)])]
    for excluded, strategy in (
        (order[:0], Strategy.OVERFETCH),
        (order[:100], Strategy.NATIVE_FILTER),
        (order[-100:], Strategy.OVERFETCH),
    ):
        query_filter = Filter.create(allow=half, exclude_ids=[ids[i] for i in excluded])
        answer = index.planner.search(query[None], [K], [index.default_params], [query_filter])[0]
        assert answer.strategy == strategy
        passes = catalog.genre < GENRES // 2
        passes[excluded] = False
        truth, _ = exact(catalog, query, Case(types_pb2.Filter(), passes, 0))
        assert len(set(answer.labels.tolist()) & set(truth)) >= K - 1


@pytest.mark.parametrize("backend", ["faiss", "faiss-ivf"])
def test_push_down_of_excluded_ids_alone_builds_no_mask(
    catalog: Catalog, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter that only leaves ids out reaches the backend as their labels, with no mask over every
    label (which costs in proportion to the index on every query); with a restrict it is a mask."""
    from flux.core.query.filters import Filter, Strategy
    from flux_core.backend import Allowed

    index, ids = _served_with_free_fetching(catalog, backend, tmp_path)
    given: list[Allowed] = []
    search_filtered = index.backend.search_filtered

    def recorded(*args: object, **kwargs: object) -> object:
        given.append(args[3])  # type: ignore[arg-type]
        return search_filtered(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(index.backend, "search_filtered", recorded)
    query = catalog.queries[3]
    nearest = np.argsort(((catalog.base - query) ** 2).sum(axis=1))[:100]
    half = [("genre", [f"g{g}" for g in range(GENRES // 2)])]
    for allow in ((), half):
        given.clear()
        query_filter = Filter.create(allow=allow, exclude_ids=[ids[i] for i in nearest])
        answer = index.planner.search(query[None], [K], [index.default_params], [query_filter])[0]
        assert answer.strategy == Strategy.NATIVE_FILTER
        assert given, "the backend's filtered search was not called"
        if allow:
            assert all(a.mask is not None and not a.mask.flags.writeable for a in given)
            passes = catalog.genre < GENRES // 2
        else:
            assert all(a.mask is None and a.excluded.tolist() == sorted(nearest.tolist()) for a in given)
            assert not any(a.excluded.flags.writeable for a in given)  # it serves every row of the plan
            passes = np.ones(N, np.bool_)
        passes[nearest] = False
        truth, _ = exact(catalog, query, Case(types_pb2.Filter(), passes, 0))
        assert len(set(answer.labels.tolist()) & set(truth)) >= K - 1


@pytest.mark.parametrize("strategy", ["overfetch", "exact_scan"])
def test_an_item_being_written_is_left_out_when_its_id_is(catalog: Catalog, tmp_path: Path, strategy: str) -> None:
    """A write gives the new id its label, adds the vector to the backend, then its attributes: in
    between, a search whose filter only leaves ids out must still leave that one out, though the
    attribute table does not know its label yet (each way the planner may answer)."""
    from dataclasses import replace

    from flux.core.query.filters import Filter, Strategy

    index, _ = _served_with_free_fetching(catalog, "hnsw", tmp_path)
    if strategy == "exact_scan":  # make fetching dear: the planner scans
        index.planner.costs = replace(index.planner.costs, fetch_fixed=1.0)
    query = catalog.queries[5]
    labels = index.ids.assign(["being-written"])
    index.backend.add(query[None].astype(np.float32), labels)  # the attributes have not followed yet
    assert labels[0] >= index.attributes.table.size
    nearest = index.planner.search(query[None], [K], [index.default_params], [None])[0]
    assert labels[0] in nearest.labels  # the window is real: an unfiltered search returns it
    left_out = Filter.create(exclude_ids=["being-written", support.ids_for(N)[0]])
    answer = index.planner.search(query[None], [K], [index.default_params], [left_out])[0]
    assert answer.strategy == Strategy(strategy)
    assert labels[0] not in answer.labels
    assert len(answer.labels) == K
