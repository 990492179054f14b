"""The client rides through a server restart on its configured retries, and deadlines end calls with a typed error."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from flux.server import FluxServer, build_server
from flux_api.v1 import vector_service_pb2, vector_service_pb2_grpc
from flux_client import AsyncFluxClient, DeadlineExceeded, FluxClient, FluxError, Unavailable
from tests import support

MAX_CALLS = 20_000  # a bound on the caller, whatever happens
WAIT = 30.0  # the longest any step may take before the test fails


class Caller(threading.Thread):
    """Searches in a loop, as an application would, recording each call's outcome until stopped."""

    def __init__(self, client: FluxClient, query: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.query = query
        self.changed = threading.Condition()
        self.started = 0  # calls begun
        self.outcomes: dict[int, tuple[int, list[str]] | str] = {}  # call number -> (version, ids) or error
        self.stopping = False

    def run(self) -> None:
        while True:
            with self.changed:
                if self.stopping or self.started >= MAX_CALLS:
                    return
                number = self.started
                self.started += 1
                self.changed.notify_all()
            outcome: tuple[int, list[str]] | str
            try:
                result = self.client.search("items", self.query, k=5)
                outcome = (result.version, result.ids.tolist())
            except FluxError as error:
                outcome = repr(error)
            with self.changed:
                self.outcomes[number] = outcome
                self.changed.notify_all()

    def wait_until(self, condition: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, WAIT), "the caller made no progress"

    def answers_from(self, version: int) -> int:
        return sum(1 for o in self.outcomes.values() if isinstance(o, tuple) and o[0] == version)

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
        self.join(WAIT)


def serve(artifact: Path, port: int = 0) -> FluxServer:
    server = build_server(support.server_config([{"name": "items", "path": str(artifact)}], server={"port": port}))
    server.start()
    assert server.wait_ready(WAIT)
    return server


def test_a_server_restarted_mid_run_is_ridden_through_by_the_retries(tmp_path: Path) -> None:
    """Two restarts on the same port (one abrupt, one graceful) while a caller keeps searching.

    Each time, a probe call begins after the old server has stopped and before the new one
    starts: it can only succeed through the client's retries, and only the new server (its
    index version tells) can answer it. Every call, the caller's and the probes', must
    succeed with the right neighbours.
    """
    base, queries = support.dataset(n=300, dimension=16, queries=1)
    truth, _ = support.brute_force(base, queries, "l2", 5)
    expected = [support.ids_for(len(base))[i] for i in truth[0]]
    artifacts = [
        support.build_artifact(tmp_path / f"v{v}", base, backend="exact", metric="l2", name="items", version=v)
        for v in (1, 2, 3)
    ]
    server = serve(artifacts[0])
    port = server.port
    probes: dict[int, tuple[int, list[str]]] = {}  # version of the new server -> what the probe got
    with FluxClient(server.address) as client, futures.ThreadPoolExecutor(1) as pool:  # the client's defaults
        began = threading.Event()

        def probe() -> tuple[int, list[str]]:
            began.set()
            result = client.search("items", queries[0], k=5)
            return result.version, result.ids.tolist()

        caller = Caller(client, queries[0])
        caller.start()
        try:
            caller.wait_until(lambda: caller.answers_from(1) >= 20)
            for version, grace in ((2, 0.0), (3, 1.0)):
                server.stop(grace=grace)  # grace 0 cancels the calls in flight
                began.clear()
                answer = pool.submit(probe)
                assert began.wait(WAIT)
                server = serve(artifacts[version - 1], port)
                probes[version] = answer.result(WAIT)
                caller.wait_until(lambda: caller.answers_from(version) >= 20)  # noqa: B023 - used at once
        finally:
            caller.stop()
            server.stop(grace=0)
    assert probes == {2: (2, expected), 3: (3, expected)}
    errors = [o for o in caller.outcomes.values() if isinstance(o, str)]
    assert errors == []
    answers = [caller.outcomes[n] for n in sorted(caller.outcomes)]
    assert all(ids == expected for _, ids in answers)
    versions = [version for version, _ in answers]
    assert versions == sorted(versions)
    assert set(versions) == {1, 2, 3}


def test_without_a_server_a_call_fails_with_unavailable_once_retries_are_spent(tmp_path: Path) -> None:
    base, _ = support.dataset(n=50, dimension=8, queries=1)
    server = serve(support.build_artifact(tmp_path / "a", base, backend="exact", metric="l2", name="items"))
    server.stop(grace=0)
    with FluxClient(server.address, retries=0) as flux, pytest.raises(Unavailable) as caught:
        flux.search("items", base[0], k=1)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_wait_for_ready_holds_calls_until_a_server_comes_up(tmp_path: Path) -> None:
    base, _ = support.dataset(n=50, dimension=8, queries=1)
    artifact = support.build_artifact(tmp_path / "a", base, backend="exact", metric="l2", name="items", version=4)
    server = build_server(support.server_config([{"name": "items", "path": str(artifact)}]))  # bound, not started
    outcome: list[object] = []
    began = threading.Event()
    try:
        with FluxClient(server.address, wait_for_ready=True, timeout=WAIT) as flux:

            def call() -> None:
                began.set()
                try:
                    outcome.append(flux.search("items", base[0], k=1))
                except FluxError as error:
                    outcome.append(error)

            caller = threading.Thread(target=call)
            caller.start()
            assert began.wait(WAIT)
            server.start()
            caller.join(WAIT)
    finally:
        server.stop(grace=0)
    assert len(outcome) == 1
    result = outcome[0]
    assert not isinstance(result, FluxError), result
    assert result.version == 4  # type: ignore[attr-defined]


class Stalled(vector_service_pb2_grpc.VectorServiceServicer):
    """Never answers Search: holds each call until the client gives up on it."""

    def __init__(self) -> None:
        self.budgets: list[float] = []  # the deadline each call arrived with, in seconds

    def Search(self, request: vector_service_pb2.SearchRequest, context: grpc.ServicerContext) -> object:
        self.budgets.append(context.time_remaining())
        ended = threading.Event()
        context.add_callback(ended.set)
        ended.wait(WAIT)
        context.abort(grpc.StatusCode.ABORTED, "the client has gone")


@pytest.fixture
def stalled() -> Iterator[tuple[Stalled, str]]:
    servicer = Stalled()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vector_service_pb2_grpc.add_VectorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0).wait()


def test_an_exceeded_deadline_raises_a_typed_timeout(stalled: tuple[Stalled, str]) -> None:
    servicer, address = stalled
    with FluxClient(address, timeout=0.3) as flux:
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            flux.search("items", np.ones(8), k=1)
        elapsed = time.monotonic() - began
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(caught.value, TimeoutError)
    assert 0.25 <= elapsed < 5.0
    assert len(servicer.budgets) == 1  # sent once: an exceeded deadline is not retried
    assert 0 < servicer.budgets[0] <= 0.35  # and the deadline travelled with the call (clocks differ a little)


def test_a_per_call_timeout_overrides_the_default(stalled: tuple[Stalled, str]) -> None:
    servicer, address = stalled
    with FluxClient(address, timeout=WAIT) as flux, pytest.raises(DeadlineExceeded):
        flux.search("items", np.ones(8), k=1, timeout=0.2)
    assert 0 < servicer.budgets[-1] <= 0.25


def test_the_asyncio_client_raises_the_same_typed_timeout(stalled: tuple[Stalled, str]) -> None:
    servicer, address = stalled

    async def run() -> DeadlineExceeded:
        async with AsyncFluxClient(address, timeout=0.3) as flux:
            with pytest.raises(DeadlineExceeded) as caught:
                await flux.search("items", np.ones(8), k=1)
            return caught.value

    error = asyncio.run(run())
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(servicer.budgets) == 1
