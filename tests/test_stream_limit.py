"""Open streams are capped (server.max_streams), so that streams cannot take every handler thread.

A stream holds a handler thread while it is open. These tests hold streams open against a real
server on 127.0.0.1 and check that unary calls keep being answered, that the stream beyond the
cap is refused at once with RESOURCE_EXHAUSTED (reason OVERLOADED), and that a closed stream's
place is taken by the next. A stream counts as started once it has answered a query: the server
holds its place from then until the stream ends. Without the cap, the same idle streams leave a
unary call waiting for a thread until its deadline, which is the harm the cap prevents.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from flux import config as flux_config
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from tests.support import build_artifact, dataset, running_server, server_config

DIMENSION = 8


class Stream:
    """A StreamSearch whose queries the test sends one at a time, open until ``close``."""

    def __init__(self, stub: VectorServiceStub) -> None:
        self._queries: queue.Queue[pb.StreamSearchRequest | None] = queue.Queue()
        self.answers = stub.StreamSearch(self._requests(), timeout=60)
        self._sent = 0

    def _requests(self) -> Iterator[pb.StreamSearchRequest]:
        while (request := self._queries.get()) is not None:
            yield request

    def ask(self, vector: np.ndarray) -> pb.StreamSearchResponse:
        self._sent += 1
        vectors = types_pb2.FloatVectors(dimension=DIMENSION, data=vector.astype("<f4").tobytes())
        self._queries.put(pb.StreamSearchRequest(index="items", vector=vectors, k=3, request_id=self._sent))
        answer: pb.StreamSearchResponse = next(self.answers)
        return answer

    def close(self) -> None:
        """End the stream from this side and wait until the server has ended it too."""
        self._queries.put(None)
        assert list(self.answers) == []

    def cancel(self) -> None:
        self._queries.put(None)
        self.answers.cancel()


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    base, queries = dataset(200, DIMENSION, 4, seed=3)
    return build_artifact(tmp_path_factory.mktemp("streams") / "items", base, backend="exact", metric="l2"), queries


def _search(stub: VectorServiceStub, vector: np.ndarray, timeout: float) -> pb.SearchResponse:
    request = pb.SearchRequest(
        index="items", k=3, vector=types_pb2.FloatVectors(dimension=DIMENSION, data=vector.astype("<f4").tobytes())
    )
    response: pb.SearchResponse = stub.Search(request, timeout=timeout)
    return response


@contextmanager
def _serving(path: Path, threads: int, max_streams: int) -> Iterator[tuple[VectorServiceStub, ExitStack]]:
    """A server over ``items`` with these threads and stream cap, a stub to it, and a stack that
    cancels the streams the test registers before the server stops."""
    config = server_config(
        [{"name": "items", "path": str(path)}], server={"threads": threads, "max_streams": max_streams}
    )
    with running_server(config) as flux, grpc.insecure_channel(flux.address) as channel, ExitStack() as stack:
        yield VectorServiceStub(channel), stack


def _opened(stub: VectorServiceStub, stack: ExitStack) -> Stream:
    stream = Stream(stub)
    stack.callback(stream.cancel)
    return stream


def test_streams_beyond_the_cap_are_refused_and_unary_calls_keep_their_threads(
    items: tuple[Path, np.ndarray],
) -> None:
    path, queries = items
    with _serving(path, threads=3, max_streams=2) as (stub, stack):
        streams = [_opened(stub, stack), _opened(stub, stack)]
        for stream in streams:
            assert stream.ask(queries[0]).search.neighbors.ids  # started: it holds its place now

        refused = _opened(stub, stack)
        with pytest.raises(grpc.RpcError) as caught:
            refused.ask(queries[1])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_streams" in caught.value.details()
        rich = status_pb2.Status.FromString(dict(caught.value.trailing_metadata())["grpc-status-details-bin"])
        info = error_details_pb2.ErrorInfo()
        assert rich.details[0].Unpack(info)
        assert (info.reason, info.metadata["limit"]) == ("OVERLOADED", "2")

        # Two streams hold two of the three threads: unary calls are answered on the third.
        for vector in queries:
            assert _search(stub, vector, timeout=10).neighbors.ids
        assert [s.ask(queries[2]).request_id for s in streams] == [2, 2]  # the streams still answer

        streams[0].close()  # its place is free once the server has ended it
        assert _opened(stub, stack).ask(queries[3]).search.neighbors.ids


def test_without_the_cap_idle_streams_leave_unary_calls_waiting_past_their_deadline(
    items: tuple[Path, np.ndarray],
) -> None:
    path, queries = items
    with _serving(path, threads=2, max_streams=0) as (stub, stack):
        for _ in range(2):
            assert _opened(stub, stack).ask(queries[0]).search.neighbors.ids
        # The deadline is the stretch of time in which a free thread would have answered.
        with pytest.raises(grpc.RpcError) as caught:
            _search(stub, queries[1], timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_stream_cap_defaults_to_half_the_threads_and_may_not_exceed_them() -> None:
    def server(**settings: int) -> flux_config.ServerConfig:
        return flux_config.parse({"server": settings, "indexes": []}, source="test config").server

    assert server(threads=16).stream_limit == 8
    assert server(threads=1).stream_limit == 1
    assert server(threads=16, max_streams=0).stream_limit == 0  # no limit
    assert server(threads=4, max_streams=4).stream_limit == 4
    with pytest.raises((ValidationError, flux_config.ConfigError)) as caught:
        server(threads=4, max_streams=5)
    assert "max_streams (5) is more than threads (4)" in str(caught.value)


def test_health_watches_on_the_health_port_leave_probes_answered(items: tuple[Path, np.ndarray]) -> None:
    """Kubelet probes the health port with Check, and anyone who can reach it may hold Watch streams
    open. The port's Watch answers from gRPC's callback, without a thread per stream, so more open
    watches than the port has threads leave every probe answered."""
    path, _ = items
    config = server_config([{"name": "items", "path": str(path)}], server={"health_port": 0})
    with running_server(config) as flux, ExitStack() as stack:
        assert flux.health_port is not None
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{flux.health_port.port}"))
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(8):  # the port has 2 threads
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
            stack.callback(watch.cancel)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # open, waiting for a change
        for _ in range(20):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_health_watches_on_the_main_port_hold_no_thread_and_no_stream_place(items: tuple[Path, np.ndarray]) -> None:
    """Clients that check health the gRPC way (a Watch per connection, as a load-balancing channel
    with healthCheckConfig does) are many: their watches must not take the threads or the stream
    places that searches need."""
    path, queries = items
    config = server_config([{"name": "items", "path": str(path)}], server={"threads": 2, "max_streams": 1})
    with running_server(config) as flux, grpc.insecure_channel(flux.address) as channel, ExitStack() as stack:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(8):  # four times the threads, eight times the stream cap
            watch = health.Watch(health_pb2.HealthCheckRequest(service="flux_api.v1.VectorService"), timeout=60)
            stack.callback(watch.cancel)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stub = VectorServiceStub(channel)
        for vector in queries:
            assert _search(stub, vector, timeout=10).neighbors.ids
        assert _opened(stub, stack).ask(queries[0]).search.neighbors.ids  # the one stream place is free
