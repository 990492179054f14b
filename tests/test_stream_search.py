"""StreamSearch: many queries over one call, each answered as Search answers it, against real servers.

Every server here is a real one on 127.0.0.1 (port 0); nothing is mocked. No test waits on a clock
to synchronise with the server: where a test needs a stretch of time in which the server could
misbehave (a client that stops reading), that stretch is the stream's own gRPC deadline, which ends
the call on both sides; where a test must know that the server has let go of a stream, it asks a
server with a single handler thread for something else, which it can only answer once that thread
is free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from flux import config as flux_config
from flux.api.auth import hash_token
from flux.server import FluxServer
from flux_api.v1 import admin_service_pb2, admin_service_pb2_grpc, types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_client import (
    AsyncFluxClient,
    DeadlineExceeded,
    DimensionMismatch,
    FluxClient,
    IndexNotFound,
    KOutOfRange,
    NotFinite,
    SearchResult,
    Unauthenticated,
)
from tests import support

STREAM = "flux_api.v1.VectorService/StreamSearch"
Data = tuple[np.ndarray, np.ndarray]


def _vector(values: Any) -> types_pb2.FloatVectors:
    array = np.asarray(values, dtype="<f4")
    return types_pb2.FloatVectors(dimension=len(array), data=array.tobytes())


def _as_search(request: pb.StreamSearchRequest) -> pb.SearchRequest:
    """The Search a query of a stream stands for: the same fields, by name."""
    return pb.SearchRequest(
        index=request.index,
        vector=request.vector,
        k=request.k,
        params=request.params,
        version=request.version,
        filter=request.filter if request.HasField("filter") else None,
        routing_key=request.routing_key,
    )


def _unary_status(stub: VectorServiceStub, request: pb.SearchRequest) -> tuple[grpc.StatusCode, str, bytes, str]:
    """How Search refuses ``request``: code, message, the google.rpc.Status bytes and the reason trailer."""
    with pytest.raises(grpc.RpcError) as refused:
        stub.Search(request, timeout=10)
    trailers = dict(refused.value.trailing_metadata())
    return (
        refused.value.code(),
        refused.value.details(),
        trailers["grpc-status-details-bin"],
        trailers["flux-error-reason"],
    )


def _details(status: status_pb2.Status) -> dict[str, Message]:
    """The status's details, unpacked by type (ErrorInfo, BadRequest): compared as messages, not bytes."""
    out: dict[str, Message] = {}
    for detail in status.details:
        kind = {"ErrorInfo": error_details_pb2.ErrorInfo, "BadRequest": error_details_pb2.BadRequest}[
            detail.type_url.rpartition(".")[2]
        ]()
        assert detail.Unpack(kind)
        out[type(kind).__name__] = kind
    return out


def _drain(answers: Iterator[Any], into: list[Any]) -> None:
    """Every answer into ``into``, until the iterator ends or raises."""
    for answer in answers:
        into.append(answer)


def _counted(code: str) -> float:
    return REGISTRY.get_sample_value("flux_requests_total", {"method": STREAM, "index": "", "code": code}) or 0.0


# --- answers: in order, as Search gives them ------------------------------------------------------


def test_answers_come_in_order_each_with_its_request_id_and_exactly_searchs_answer(
    vectors_stub: VectorServiceStub, data: Data
) -> None:
    """One stream of 200 queries over four indexes (each message may name another), with params and
    filters, under caller-chosen ids that are neither sorted nor unique: the answers come back in the
    order of the queries, each naming its query's id, each exactly the SearchResponse of a Search."""
    _, queries = data
    rng = np.random.default_rng(7)
    ids = [0, 2**64 - 1, 5, 5, *rng.integers(0, 2**63, size=len(queries) - 4).tolist()]
    indexes = ["hnsw-l2", "annoy-cosine", "exact-ip", "voyager-l2"]
    requests = []
    for number, (query, request_id) in enumerate(zip(queries, ids, strict=True)):
        index = indexes[number % len(indexes)]
        request = pb.StreamSearchRequest(index=index, vector=_vector(query), k=1 + number % 20, request_id=request_id)
        if index == "hnsw-l2" and number % 3 == 0:
            request.params["ef"] = 16 + number
        if number % 5 == 0:
            request.filter.exclude_ids.extend(support.ids_for(3))
        requests.append(request)

    answers = list(vectors_stub.StreamSearch(iter(requests), timeout=60))

    assert [a.request_id for a in answers] == ids  # in order: the contract promises it
    for request, answer in zip(requests, answers, strict=True):
        assert answer.WhichOneof("result") == "search"
        expected = vectors_stub.Search(_as_search(request), timeout=10)
        assert answer.search == expected  # index, version, alias, ids, distances, strategy
        assert len(answer.search.neighbors.ids) == request.k
        assert not set(answer.search.neighbors.ids) & set(request.filter.exclude_ids)


def test_the_bytes_of_a_search_request_are_a_stream_query_with_id_zero(
    vectors_stub: VectorServiceStub, data: Data
) -> None:
    _, queries = data
    search = pb.SearchRequest(index="exact-l2", vector=_vector(queries[0]), k=4)
    [answer] = vectors_stub.StreamSearch(iter([pb.StreamSearchRequest.FromString(search.SerializeToString())]))
    assert answer.request_id == 0
    assert answer.search == vectors_stub.Search(search)


# --- a failed query is answered with its status, and the stream goes on ---------------------------


def test_a_failed_query_gets_the_status_search_would_give_and_the_stream_goes_on(
    vectors_stub: VectorServiceStub, data: Data
) -> None:
    _, queries = data
    nan = queries[1].copy()
    nan[3] = np.nan
    bad = {
        "DIMENSION_MISMATCH": pb.StreamSearchRequest(index="exact-l2", vector=_vector(queries[0][:32]), k=5),
        "INDEX_NOT_FOUND": pb.StreamSearchRequest(index="no-such-index", vector=_vector(queries[0]), k=5),
        "K_OUT_OF_RANGE": pb.StreamSearchRequest(index="exact-l2", vector=_vector(queries[0]), k=257),
        "NOT_FINITE": pb.StreamSearchRequest(index="exact-l2", vector=_vector(nan), k=5),
        "UNKNOWN_PARAM": pb.StreamSearchRequest(index="hnsw-l2", vector=_vector(queries[0]), k=5, params={"nope": 1}),
    }
    requests = []
    for number, failing in enumerate(bad.values()):
        requests.append(
            pb.StreamSearchRequest(index="exact-l2", vector=_vector(queries[number]), k=3, request_id=2 * number)
        )
        failing.request_id = 2 * number + 1
        requests.append(failing)
    requests.append(pb.StreamSearchRequest(index="exact-l2", vector=_vector(queries[9]), k=3, request_id=100))

    call = vectors_stub.StreamSearch(iter(requests), timeout=60)
    answers = list(call)

    assert call.code() is grpc.StatusCode.OK  # five failures, and the stream ended as it should
    assert [a.request_id for a in answers] == [r.request_id for r in requests]
    for request, answer in zip(requests, answers, strict=True):
        if request.request_id % 2 == 0:
            assert answer.search == vectors_stub.Search(_as_search(request))  # the stream went on
            continue
        assert answer.WhichOneof("result") == "error"
        code, message, trailer, reason = _unary_status(vectors_stub, _as_search(request))
        streamed = status_pb2.Status.FromString(answer.error.SerializeToString())  # a google.rpc.Status, as promised
        unary = status_pb2.Status.FromString(trailer)
        assert (streamed.code, streamed.message) == (code.value[0], message) == (unary.code, unary.message)
        assert _details(streamed) == _details(unary)  # ErrorInfo (reason, domain, metadata) and BadRequest
        assert _details(streamed)["ErrorInfo"].reason == reason
    reasons = [_details(status_pb2.Status.FromString(a.error.SerializeToString()))["ErrorInfo"] for a in answers[1::2]]
    assert [r.reason for r in reasons] == list(bad)
    assert reasons[0].metadata["field"] == "vector.dimension"
    assert reasons[2].metadata["limit"] == "256"  # max_k, as a unary Search names it
    assert all(r.domain == "flux.vectors" for r in reasons)
    dimension = _details(status_pb2.Status.FromString(answers[1].error.SerializeToString()))["BadRequest"]
    assert [v.field for v in dimension.field_violations] == ["vector.dimension"]


def test_a_malformed_message_ends_the_stream_after_the_queries_before_it(server: FluxServer, data: Data) -> None:
    """Its request_id cannot be read, so no answer could name it: the stream ends INVALID_ARGUMENT."""
    _, queries = data
    good = pb.StreamSearchRequest(index="exact-l2", vector=_vector(queries[0]), k=2, request_id=1).SerializeToString()
    with support.channel_to(server) as channel:
        call = channel.stream_stream("/" + STREAM)(iter([good, b"\xff\xff\xff", good]), timeout=30)
        received: list[bytes] = []
        with pytest.raises(grpc.RpcError) as ended:
            _drain(call, received)
    assert [pb.StreamSearchResponse.FromString(r).request_id for r in received] == [1]
    assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(ended.value.trailing_metadata())["flux-error-reason"] == "MALFORMED_REQUEST"


# --- the Python clients ------------------------------------------------------------------------------


def test_the_client_yields_results_in_order_and_types_each_failure_as_search_raises_it(
    server: FluxServer, data: Data
) -> None:
    _, queries = data
    with FluxClient(server.address) as client:
        streamed = list(client.stream_search("hnsw-l2", queries, k=7, params={"ef": 64}))
        assert all(isinstance(r, SearchResult) for r in streamed)
        for query, result in zip(queries, streamed, strict=True):
            one = client.search("hnsw-l2", query, k=7, params={"ef": 64})
            assert (result.ids == one.ids).all()
            assert (result.distances == one.distances).all()
            assert (result.index, result.version) == (one.index, one.version)

        mixed = (v for v in [queries[0], queries[1][:10], queries[2], np.full(64, np.inf, np.float32), queries[4]])
        results = list(client.stream_search("exact-l2", mixed, k=3, return_exceptions=True))
        assert [type(r) for r in results] == [SearchResult, DimensionMismatch, SearchResult, NotFinite, SearchResult]
        with pytest.raises(DimensionMismatch) as unary:
            client.search("exact-l2", queries[1][:10], k=3)
        failed = results[1]
        assert isinstance(failed, DimensionMismatch)
        assert (failed.code, failed.message, failed.reason, failed.field, failed.metadata, failed.field_violations) == (
            unary.value.code,
            unary.value.message,
            unary.value.reason,
            unary.value.field,
            unary.value.metadata,
            unary.value.field_violations,
        )

        seen: list[SearchResult] = []
        failing = client.stream_search("exact-l2", [queries[0], queries[1][:10], queries[2]], k=3)
        with pytest.raises(DimensionMismatch):  # by default the failure is raised when its turn comes
            _drain(failing, seen)
        assert len(seen) == 1

        [too_many] = client.stream_search("exact-l2", queries[:1], k=300, return_exceptions=True)
        assert isinstance(too_many, KOutOfRange)
        assert too_many.limit == 256

        answered: list[SearchResult] = []
        unencodable = client.stream_search("exact-l2", [queries[0], queries[1], "not a vector"], k=3)
        with pytest.raises(ValueError, match=r"queries\[2\]"):  # encoded as sent: the queries before it answered
            _drain(unencodable, answered)
        assert len(answered) == 2


def test_the_asyncio_client_streams_the_same_answers(server: FluxServer, data: Data) -> None:
    _, queries = data

    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        async with AsyncFluxClient(server.address) as flux:

            async def some() -> Any:
                for query in queries[:20]:
                    yield query

            plain = [r async for r in flux.stream_search("annoy-l2", queries[:20], k=5)]
            lazy = [r async for r in flux.stream_search("annoy-l2", some(), k=5)]
            errors = [r async for r in flux.stream_search("no-such-index", queries[:2], k=5, return_exceptions=True)]
            return plain, lazy, errors

    plain, lazy, errors = asyncio.run(run())
    with FluxClient(server.address) as client:
        expected = [client.search("annoy-l2", q, k=5) for q in queries[:20]]
    for got in (plain, lazy):
        assert [list(r.ids) for r in got] == [list(r.ids) for r in expected]
    assert [type(e) for e in errors] == [IndexNotFound, IndexNotFound]


# --- flow control, cancellation, deadlines -------------------------------------------------------------


#: The flow-control tests' index: 1,200 items of 1,024 dimensions, so that a query is 4 KiB and, with
#: k = 1,000, an answer about 17 KB: gRPC's flow-control windows hold few of either.
DIMENSION, ITEMS = 1024, 1200
#: What gRPC's flow control lets one stream buffer of a client's queries (the server's receive window
#: and the client's send buffers: about 4.8 MB with grpcio 1.85) is well below this; a server reading
#: queries ahead of its answers takes ten times as much in the test's three seconds.
TRANSPORT_BYTES = 16 * 2**20


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FluxServer, np.ndarray]]:
    """A server with one handler thread, so that whether a stream has let go of it shows: another call
    is answered only once it has. The alias ``counted`` counts the queries the server answered."""
    base, queries = support.dataset(n=ITEMS, dimension=DIMENSION, queries=8, seed=3)
    path = support.build_artifact(tmp_path_factory.mktemp("flow") / "big", base, backend="exact", metric="l2")
    config = flux_config.parse(
        {
            "server": {"host": "127.0.0.1", "port": 0, "threads": 1, "grace_seconds": 1.0},
            "indexes": [{"name": "big", "path": str(path)}],
            "aliases": [{"name": "counted", "arms": [{"index": "big", "weight": 100}]}],
            "limits": {"max_k": 1024},
        },
        source="test config",
    )
    with support.running_server(config) as server:
        yield server, queries


def _answered(channel: grpc.Channel) -> int:
    """How many queries the server has answered through the alias ``counted`` (AdminService.ListAliases)."""
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    [alias] = stub.ListAliases(admin_service_pb2.ListAliasesRequest(), timeout=30).aliases
    requests: int = alias.arms[0].requests
    return requests


def _still_serving(channel: grpc.Channel, query: np.ndarray) -> None:
    """Answered only by a free handler thread: the server has one."""
    answer = VectorServiceStub(channel).Search(pb.SearchRequest(index="big", vector=_vector(query), k=3), timeout=30)
    assert len(answer.neighbors.ids) == 3


def test_a_client_that_stops_reading_stops_the_server_pulling_queries(
    one_thread: tuple[FluxServer, np.ndarray],
) -> None:
    """The client offers queries without end and reads no answer until its 3-second deadline ends the
    stream. The server answers only as many as the client's flow-control window can hold unread (64 KiB
    here: the client turns off BDP probing, which would let gRPC grow that window, in the client's
    memory), plus the one waiting for room and the one in hand; and it pulls no query beyond the one
    in hand, so gRPC stops taking queries from the client once its own windows are full, a few MB.
    A server that read queries ahead, or kept answers it could not send, would have taken every query
    the client offered: many thousands in three seconds."""
    server, queries = one_thread
    query = _vector(queries[0])
    request = pb.StreamSearchRequest(index="counted", vector=query, k=1000).SerializeToString()
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield request

    with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        before = _answered(channel)
        one_answer = VectorServiceStub(channel).Search(pb.SearchRequest(index="big", vector=query, k=1000))
        window = 65536 // (one_answer.ByteSize() + 16) + 2  # unread in the client's window, one waiting, one in hand
        call = channel.stream_stream("/" + STREAM)(endless(), timeout=3.0)
        assert call.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # waits for the call to end, reading nothing
        _still_serving(channel, queries[1])  # the stream let go of the one handler thread
        answered = _answered(channel) - before - 1  # less the Search above
    assert 1 <= answered <= window, (answered, window)
    assert 10 * window < pulled <= TRANSPORT_BYTES // len(request), pulled  # gRPC took what its windows hold


def test_the_server_pulls_again_as_the_client_reads(one_thread: tuple[FluxServer, np.ndarray]) -> None:
    """Reading answers makes room, and the server goes on: all of 100 large answers arrive, in order,
    through the same 64 KiB window."""
    server, queries = one_thread
    requests = [
        pb.StreamSearchRequest(index="counted", vector=_vector(queries[n % 8]), k=1000, request_id=n)
        for n in range(100)
    ]
    with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        before = _answered(channel)
        ids = [answer.request_id for answer in VectorServiceStub(channel).StreamSearch(iter(requests), timeout=120)]
        assert _answered(channel) - before == 100
    assert ids == list(range(100))


def test_the_client_cancels_a_stream_and_the_server_lets_go(one_thread: tuple[FluxServer, np.ndarray]) -> None:
    server, queries = one_thread
    release = threading.Event()

    def queries_then_wait() -> Iterator[pb.StreamSearchRequest]:
        for number in range(3):
            yield pb.StreamSearchRequest(index="big", vector=_vector(queries[number]), k=5, request_id=number)
        release.wait(60)  # the stream stays open, sending nothing, until the test ends

    with support.channel_to(server) as channel:
        call = VectorServiceStub(channel).StreamSearch(queries_then_wait(), timeout=60)
        assert [next(call).request_id for _ in range(3)] == [0, 1, 2]
        call.cancel()
        with pytest.raises(grpc.RpcError) as ended:
            next(call)
        assert ended.value.code() is grpc.StatusCode.CANCELLED
        _still_serving(channel, queries[0])  # only once the stream's handler has returned
    release.set()

    with FluxClient(server.address) as client:  # the client's iterator, closed early, cancels its stream
        results = client.stream_search("big", iter(queries), k=5)
        assert next(results).ids.shape == (5,)
        results.close()  # type: ignore[attr-defined]
        assert len(client.search("big", queries[0], k=5).ids) == 5  # one thread, free again


def test_a_deadline_that_passes_mid_stream_ends_it_on_both_sides(one_thread: tuple[FluxServer, np.ndarray]) -> None:
    server, queries = one_thread
    release = threading.Event()

    def queries_then_wait() -> Iterator[Any]:
        yield from queries[:3]
        release.wait(60)

    with FluxClient(server.address) as client:
        results = client.stream_search("big", queries_then_wait(), k=5, timeout=3.0)
        answered: list[SearchResult] = []
        with pytest.raises(DeadlineExceeded) as ended:
            _drain(results, answered)
        assert len(answered) == 3  # answered as they came, then the deadline of the whole stream passed
        assert ended.value.reason == "DEADLINE_EXCEEDED"
        assert len(client.search("big", queries[0], k=5).ids) == 5  # the one handler thread is free again
    release.set()


# --- interceptors: auth, tracing, metrics ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    base, queries = support.dataset(n=300, dimension=8, queries=3)
    return queries, support.build_artifact(
        tmp_path_factory.mktemp("small") / "small", base, backend="exact", metric="l2"
    )


def test_a_stream_needs_a_token_with_the_reader_role(small: tuple[np.ndarray, Path]) -> None:
    queries, path = small
    tokens = {"reader": "r-token-5e1", "writer": "w-token-77d"}
    config = support.server_config(
        [{"name": "small", "path": str(path)}],
        auth={"tokens": [{"name": name, "role": name, "sha256": hash_token(t)} for name, t in tokens.items()]},
    )
    with support.running_server(config) as server:
        for token in (None, "not-a-token"):
            with FluxClient(server.address, token=token, retries=0) as client:
                with pytest.raises(Unauthenticated) as refused:
                    list(client.stream_search("small", queries, k=2))
                assert refused.value.reason == "UNAUTHENTICATED"
                assert refused.value.metadata["required_role"] == "reader"
        for token in tokens.values():  # the writer role includes the reader's
            with FluxClient(server.address, token=token) as client:
                assert [r.ids.shape for r in client.stream_search("small", queries, k=2)] == [(2,)] * len(queries)


def test_a_stream_is_traced_and_counted_as_one_call(small: tuple[np.ndarray, Path], spans: Any) -> None:
    queries, path = small
    config = support.server_config([{"name": "small", "path": str(path)}], tracing={"enabled": True})
    ok = _counted("OK")
    with support.running_server(config) as server, FluxClient(server.address) as client:
        spans.clear()
        answers = list(client.stream_search("small", [*queries, queries[0][:2]], k=2, return_exceptions=True))
        assert [type(a) for a in answers] == [SearchResult] * len(queries) + [DimensionMismatch]
        [span] = [s for s in spans.get_finished_spans() if s.name == STREAM]
    assert span.attributes["flux.stream.messages"] == len(queries) + 1  # one span for the stream, not per query
    assert span.attributes["rpc.grpc.status_code"] == 0  # a failed query does not fail the stream
    assert span.attributes["rpc.method"] == "StreamSearch"
    assert len(span.attributes["flux.request_id"]) > 0
    assert _counted("OK") == ok + 1
