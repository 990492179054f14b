"""Health Watch streams: watchers come and go while statuses change, and the server keeps answering.

gRPC's reference health servicer sends Watch updates while holding its lock, and a Watch that ends
takes the same lock on gRPC's event thread: a watcher leaving during a status change stopped that
thread and every call on the port hung (in the first round of the test below, every time), and
the server's stop with it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flux.server import FluxServer
from tests.support import build_artifact, dataset, running_server, server_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE = "flux.test.watched"  # a service of the test's own: the server's real statuses stay as they are


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    base, _ = dataset(200, 8, 1, seed=5)
    path = build_artifact(tmp_path_factory.mktemp("health") / "items", base, backend="exact", metric="l2")
    config = server_config([{"name": "items", "path": str(path)}], server={"health_port": 0})
    with running_server(config) as server:
        yield server


def _health_port(flux: FluxServer) -> str:
    """The probes' port, where a Watch holds no thread (on the main port the interceptors' wrapping
    makes it an ordinary stream, counted by server.max_streams)."""
    assert flux.health_port is not None
    return f"127.0.0.1:{flux.health_port.port}"


def test_watchers_leaving_while_the_status_changes_leave_the_server_answering(flux: FluxServer) -> None:
    flux.health.set(SERVICE, SERVING)
    done = threading.Event()

    def flip() -> None:
        serving = False
        while not done.is_set():
            flux.health.set(SERVICE, SERVING if serving else NOT_SERVING)
            serving = not serving

    flipping = threading.Thread(target=flip)
    flipping.start()
    try:
        with grpc.insecure_channel(_health_port(flux)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(10):
                watches = [stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30) for _ in range(20)]
                for watch in watches:
                    assert next(watch).status in (SERVING, NOT_SERVING)
                for watch in watches:
                    watch.cancel()  # each ends while updates are being sent to it
                assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    finally:
        done.set()
        flipping.join()


def test_a_watcher_sees_the_changes_in_order_and_ends_on_the_latest(flux: FluxServer) -> None:
    changes = [NOT_SERVING, SERVING, NOT_SERVING, SERVING, NOT_SERVING]
    with grpc.insecure_channel(_health_port(flux)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        flux.health.set(SERVICE, SERVING)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30)
        assert next(watch).status == SERVING
        for status in changes:
            flux.health.set(SERVICE, status)
        assert flux.health.flush(5)
        flux.health.set(SERVICE, UNKNOWN)  # a last change, to know where the stream has got to
        seen = []
        for answer in watch:
            seen.append(answer.status)
            if answer.status == UNKNOWN:
                break
        watch.cancel()
        # Each update carries the status as it is when sent: changes made faster than they are sent
        # may be skipped, never reordered, so the stream ends on the last two.
        assert 2 <= len(seen) <= len(changes) + 1
        assert seen[-2:] == [NOT_SERVING, UNKNOWN]


def test_shutdown_tells_each_watcher_not_serving_then_ends_its_watch(tmp_path: Path) -> None:
    """An open Watch is a call in flight: left open, it would hold the server's stop for the whole
    grace period. Shutdown sends NOT_SERVING, then ends every watch with OK."""
    base, _ = dataset(200, 8, 1, seed=6)
    path = build_artifact(tmp_path / "items", base, backend="exact", metric="l2")
    config = server_config([{"name": "items", "path": str(path)}], server={"health_port": 0})
    with (
        running_server(config) as flux,
        grpc.insecure_channel(flux.address) as main,
        grpc.insecure_channel(_health_port(flux)) as probes,
    ):
        watches = [
            health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service), timeout=60)
            for channel in (main, probes)
            for service in ("", "flux.index.items")
        ]
        for watch in watches:
            assert next(watch).status == SERVING
        flux.stop(grace=30)
        for watch in watches:
            assert [answer.status for answer in watch] == [NOT_SERVING]  # then the stream ends, OK
            assert watch.code() == grpc.StatusCode.OK
