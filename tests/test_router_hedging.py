"""Hedging through the router: a shard with a slow replica and a fast one.

Both replicas are real gRPC servers on 127.0.0.1 ephemeral ports behind one static target
(``ipv4:slow,fast``, balanced round-robin). The fast one is a Flux server of the shard; the slow one
is a gate in front of it that, once told to hold, holds every Search until the test opens it, so
"slow" is a state the test controls, not a time. A call whose first attempt lands on the gate is
answered by the hedge to the fast replica while the gate still holds the first attempt, which the
router then cancels. Round-robin picks only among connected replicas, so each test first sends
calls until both replicas have answered one, the gate passing them on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from flux import config as flux_config
from flux.router.server import build_router
from flux.server import FluxServer
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from tests.support import build_artifact, dataset, running_server, server_config

SEARCH = "/flux_api.v1.VectorService/Search"
#: Calls sent until one has started on the gate; round-robin alternates, so two are enough once
#: both replicas are connected.
ATTEMPTS = 20
#: How long the router may take to connect to both replicas.
CONNECT_SECONDS = 30


class Gate:
    """A replica that answers every Search from the Flux server behind it; after ``hold``, only once ``open``."""

    def __init__(self, behind: str) -> None:
        self.holding = threading.Event()
        self.arrived = threading.Event()
        self.cancelled = threading.Event()
        self.opened = threading.Event()
        self.passed = 0  # calls answered before ``hold``
        self._behind = grpc.insecure_channel(behind)
        forward = self._behind.unary_unary(SEARCH)

        def search(request: bytes, context: grpc.ServicerContext) -> bytes:
            if not self.holding.is_set():
                self.passed += 1
                return forward(request, timeout=30)  # type: ignore[no-any-return]
            # Runs when the call ends; the gate has not answered yet, so before the gate opens that is
            # the caller giving the call up. The deadline is far off, so it is not the deadline.
            context.add_callback(lambda: None if self.opened.is_set() else self.cancelled.set())
            self.arrived.set()
            self.opened.wait(timeout=60)  # bounded only so that a failing test cannot hang
            return forward(request, timeout=30)  # type: ignore[no-any-return]

        handler = grpc.method_handlers_generic_handler(
            "flux_api.v1.VectorService", {"Search": grpc.unary_unary_rpc_method_handler(search)}
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def hold(self) -> None:
        self.holding.set()

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.open()
        self._server.stop(grace=0).wait(10)
        self._behind.close()


@contextmanager
def _shard(tmp_path: Path, **router: Any) -> Iterator[tuple[Gate, FluxServer, VectorServiceStub, np.ndarray]]:
    """A one-shard index whose replicas are the gate and a Flux server, and a router over them."""
    base, queries = dataset(400, 8, 8, seed=5)
    artifact = build_artifact(tmp_path / "items", base, backend="exact", metric="l2", name="items")
    with ExitStack() as stack:
        fast = stack.enter_context(running_server(server_config([{"name": "items", "path": str(artifact)}])))
        gate = Gate(fast.address)
        stack.callback(gate.close)
        raw = {
            "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.5},
            "router": {
                "indexes": [{"name": "items", "shard_count": 1, "shards": [f"ipv4:{gate.address},{fast.address}"]}],
                **router,
            },
        }
        routing = build_router(flux_config.parse(raw, source="hedging test config"))
        routing.start()
        stack.callback(routing.stop, 0)
        stub = VectorServiceStub(stack.enter_context(grpc.insecure_channel(routing.address)))
        _connect_both(stub, gate, queries[0])
        gate.hold()
        yield gate, fast, stub, queries


def _connect_both(stub: VectorServiceStub, gate: Gate, query: np.ndarray) -> None:
    """Calls through the router until one went through the gate and one did not: both replicas connected."""
    calls, end = 0, time.monotonic() + CONNECT_SECONDS
    while (gate.passed == 0 or gate.passed == calls) and time.monotonic() < end:
        stub.Search(_request(query), timeout=30)
        calls += 1
    assert 0 < gate.passed < calls, f"the router did not reach both replicas ({gate.passed} of {calls} via the gate)"


def _request(query: np.ndarray) -> pb.SearchRequest:
    vector = types_pb2.FloatVectors(dimension=len(query), data=np.asarray(query, dtype="<f4").tobytes())
    return pb.SearchRequest(index="items", vector=vector, k=5)


def test_a_hedged_call_gets_the_fast_replicas_answer_while_the_slow_one_holds_it(tmp_path: Path) -> None:
    with _shard(tmp_path, hedging={"enabled": True, "delay_seconds": 0.05}) as (gate, fast, stub, queries):
        with grpc.insecure_channel(fast.address) as channel:
            truth = [VectorServiceStub(channel).Search(_request(q), timeout=30) for q in queries]
        for n in range(ATTEMPTS):
            got = stub.Search(_request(queries[n % len(queries)]), timeout=30)
            assert list(got.neighbors.ids) == list(truth[n % len(queries)].neighbors.ids)
            assert list(got.missing_shards) == []
            if gate.arrived.is_set():
                break
        assert gate.arrived.is_set(), "no call started on the slow replica"
        # The answer came while the slow replica still held its attempt: it would answer only once opened.
        assert not gate.opened.is_set()
        # And the router gave that attempt up once the hedge had answered.
        assert gate.cancelled.wait(timeout=20)


def test_without_hedging_a_call_on_the_slow_replica_waits_for_its_deadline(tmp_path: Path) -> None:
    with _shard(tmp_path) as (gate, _, stub, queries):
        outcomes = []
        for n in range(ATTEMPTS):
            try:
                stub.Search(_request(queries[n % len(queries)]), timeout=1.0)
                outcomes.append("answered")
            except grpc.RpcError as error:
                outcomes.append(error.code().name)
            if gate.arrived.is_set():
                break
        assert gate.arrived.is_set(), "no call started on the slow replica"
        # The call that reached the gate had no second attempt: its shard missed the deadline.
        assert outcomes[-1] == "UNAVAILABLE"
        assert set(outcomes[:-1]) <= {"answered"}


def test_hedging_is_off_unless_configured() -> None:
    raw = {"router": {"indexes": [{"name": "items", "shard_count": 1, "shards": ["127.0.0.1:1"]}]}}
    router = flux_config.parse(raw, source="hedging test config").router
    assert router is not None
    assert router.hedging.enabled is False
