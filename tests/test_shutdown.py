"""SIGTERM while 8 clients search: health turns NOT_SERVING, new calls are refused, every call the
server had accepted finishes with its answer, and the process exits 0 within the grace period.
A call still running when the grace period ends is cut off, and the process does not wait for it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flux_api.v1 import types_pb2, vector_service_pb2
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from tests import support

CLIENTS = 8
GRACE = 20.0
DIMENSION = 128
BATCH = 256  # exact search of 256 queries over 20,000 x 128: long enough to be caught in flight


def _start(config: Path, log: list[str]) -> tuple[subprocess.Popen[str], str, str, threading.Thread]:
    process = subprocess.Popen(
        [sys.executable, "-m", "flux", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    address = metrics = ""
    for line in process.stderr:  # the server logs its addresses, then "ready" once indexes are loaded
        log.append(line)
        if match := re.search(r"listening on (\S+)", line):
            address = match.group(1)
        if match := re.search(r"metrics on (\S+)", line):
            metrics = match.group(1)
        if " ready: " in line:
            break
    assert address, "".join(log)
    assert metrics, "".join(log)
    drain = threading.Thread(target=lambda: log.extend(process.stderr or ()), daemon=True)  # keep the pipe drained
    drain.start()
    return process, address, metrics, drain


def _exit_code(process: subprocess.Popen[str], timeout: float, log: list[str], drain: threading.Thread) -> int:
    """The server's exit code; a server still running after ``timeout`` is aborted, which makes it
    print every thread's stack (faulthandler), and the test fails with its log."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(timeout=30)
        drain.join(30)
        stacks = "".join(log[-200:])
        raise AssertionError(f"the server did not exit within {timeout:.0f}s of SIGTERM:\n{stacks}") from None


def _in_flight(metrics: str) -> float:
    text = urllib.request.urlopen(metrics, timeout=5).read().decode()
    return float(re.search(r"^flux_requests_in_flight (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_sigterm_lets_every_accepted_call_finish_and_exits_within_the_grace_period(tmp_path: Path) -> None:
    base, queries = support.dataset(n=20_000, dimension=DIMENSION, queries=BATCH)
    artifact = support.build_artifact(tmp_path / "big", base, backend="exact", metric="l2", name="big")
    config = tmp_path / "flux.yaml"
    config.write_text(
        f"server: {{port: 0, metrics_port: 0, grace_seconds: {GRACE}, threads: 16, search_threads: 1}}\n"
        f"indexes: [{{name: big, path: {artifact}}}]\n"
    )
    log: list[str] = []
    process, address, metrics, drain = _start(config, log)
    vectors = types_pb2.FloatVectors(dimension=DIMENSION, data=queries.astype("<f4").tobytes())
    request = vector_service_pb2.BatchSearchRequest(index="big", queries=vectors, k=10)
    calls: list[list[tuple[float, float, grpc.StatusCode, int]]] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()

    def client(number: int) -> None:
        with grpc.insecure_channel(address) as channel:
            search = VectorServiceStub(channel).BatchSearch
            while not stop.is_set():
                started = time.monotonic()
                try:
                    answer = search(request, timeout=60)
                    calls[number].append((started, time.monotonic(), grpc.StatusCode.OK, len(answer.results)))
                except grpc.RpcError as exc:
                    calls[number].append((started, time.monotonic(), exc.code(), 0))
                    return  # refused: the server is going away

    statuses: list[tuple[float, int]] = []
    with grpc.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=120)

        def watcher() -> None:  # the server ends the watch after NOT_SERVING, so it does not hold the drain
            for answer in watch:
                statuses.append((time.monotonic(), answer.status))

        watching = threading.Thread(target=watcher)
        clients = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        try:
            for thread in (watching, *clients):
                thread.start()
            deadline = time.monotonic() + 60
            while _in_flight(metrics) < CLIENTS:  # every client has a call inside the server
                assert time.monotonic() < deadline, "the clients never had 8 calls in flight"
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            exit_code = _exit_code(process, GRACE + 30, log, drain)
            exited = time.monotonic()
        finally:  # whatever failed above, no client loops on and no server outlives the test
            stop.set()
            watch.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            for thread in (*clients, watching):
                thread.join(30)

    assert exit_code == 0
    assert exited - signalled < GRACE, f"the drain took {exited - signalled:.1f}s"
    assert statuses[0][1] == health_pb2.HealthCheckResponse.SERVING
    assert watch.code() == grpc.StatusCode.OK  # ended by the server, not cut off
    assert statuses[-1][1] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert signalled <= statuses[-1][0] <= exited
    in_flight = []
    for number, made in enumerate(calls):
        during = [c for c in made if c[0] < signalled < c[1]]
        assert len(during) == 1, f"client {number} had no call in flight at SIGTERM: {made}"
        in_flight.append(during[0])
        after = [c for c in made if c[0] > signalled]
        assert all(code is grpc.StatusCode.UNAVAILABLE for _, _, code, _ in after), after  # refused, not cut off
    assert all(code is grpc.StatusCode.OK and results == BATCH for _, _, code, results in in_flight), in_flight
    assert max(end for _, end, _, _ in in_flight) <= exited


def test_a_call_still_running_when_the_grace_period_ends_does_not_keep_the_process(tmp_path: Path) -> None:
    grace = 1.0
    rng = np.random.default_rng(7)
    base = rng.standard_normal((20_000, DIMENSION)).astype(np.float32)
    queries = rng.standard_normal((16_384, DIMENSION)).astype(np.float32)  # ~40 GFLOP: seconds on any machine
    artifact = support.build_artifact(tmp_path / "big", base, backend="exact", metric="l2", name="big")
    config = tmp_path / "flux.yaml"
    config.write_text(
        f"server: {{port: 0, metrics_port: 0, grace_seconds: {grace}, search_threads: 1}}\n"
        f"limits: {{max_batch: {len(queries)}}}\n"
        f"indexes: [{{name: big, path: {artifact}}}]\n"
    )
    log: list[str] = []
    process, address, metrics, drain = _start(config, log)
    vectors = types_pb2.FloatVectors(dimension=DIMENSION, data=queries.tobytes())
    request = vector_service_pb2.BatchSearchRequest(index="big", queries=vectors, k=10)
    with grpc.insecure_channel(address) as channel:
        call = VectorServiceStub(channel).BatchSearch.future(request, timeout=120)
        try:
            deadline = time.monotonic() + 60
            while _in_flight(metrics) < 1:  # the search has started inside the server
                assert time.monotonic() < deadline, "the call never reached the server"
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            exit_code = _exit_code(process, grace + 30, log, drain)
            exited = time.monotonic()
            outcome = call.exception(timeout=30)
        finally:
            call.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
    drain.join(30)
    assert exit_code == 0
    assert exited - signalled <= grace + 0.2, f"exited {exited - signalled:.2f}s after SIGTERM, grace {grace}s"
    assert isinstance(outcome, grpc.RpcError), "the call was answered: it was not long enough to test anything"
    assert outcome.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert any(f"the grace period ({grace}s) ended with calls still running" in line for line in log), "".join(log)
