"""Load generation: client processes that send pre-encoded requests to a gRPC server.

Every server mode and the echo baseline are driven by this same client, which sends
request bytes prepared before the clock starts and keeps response bytes unparsed
until it stops, so the client costs the same whatever server it loads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from flux.bench.procs import Child

_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Job:
    """What every client sends: ``requests[i]`` asks query group ``i``; clients start at different offsets."""

    target: str
    method: str
    requests: Sequence[bytes]
    seconds: float
    max_calls: int
    warmup: int = 20


@dataclass(frozen=True)
class LoadResult:
    """Merged over clients: wall time from the first start to the last stop, every call's latency."""

    calls: int
    seconds: float
    latencies_ms: np.ndarray
    responses: dict[int, bytes]  # request index -> the first response to it


class LoadClients:
    """A fixed set of client processes, started once and reused for every run."""

    def __init__(self, count: int) -> None:
        self._clients = [Child(_client_main, name=f"flux-bench-client-{i}") for i in range(count)]

    def __len__(self) -> int:
        return len(self._clients)

    def run(self, job: Job, clients: int) -> LoadResult:
        """Run ``job`` on the first ``clients`` processes at once; they start together after warming up."""
        if not 1 <= clients <= len(self._clients):
            raise ValueError(f"clients must be between 1 and {len(self._clients)}, got {clients}")
        active = self._clients[:clients]
        for number, client in enumerate(active):
            client.send((job, number * len(job.requests) // clients))
        for client in active:
            client.recv()  # connected and warmed up
        for client in active:
            client.send("go")
        parts = [client.recv() for client in active]
        starts, stops, latencies, responses = zip(*parts, strict=True)
        merged: dict[int, bytes] = {}
        for part in responses:
            for index, response in part.items():
                merged.setdefault(index, response)
        all_latencies = np.concatenate(latencies).astype(np.float64) / 1e6
        return LoadResult(len(all_latencies), max(stops) - min(starts), all_latencies, merged)

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _client_main(conn: Connection) -> None:
    import grpc

    options = [("grpc.max_receive_message_length", _MESSAGE_BYTES), ("grpc.max_send_message_length", _MESSAGE_BYTES)]
    while True:
        message = conn.recv()
        if message is None:
            return
        job, offset = message
        try:
            with grpc.insecure_channel(job.target, options=options) as channel:
                call = channel.unary_unary(job.method)  # bytes in, bytes out: no client-side protobuf work
                result = _run(conn, call, job, offset)
        except Exception as exc:
            conn.send(exc)
        else:
            conn.send(result)


def _run(conn: Connection, call: Any, job: Job, offset: int) -> tuple[float, float, np.ndarray, dict[int, bytes]]:
    requests, n = job.requests, len(job.requests)
    for i in range(min(job.warmup, job.max_calls)):
        call(requests[(offset + i) % n], timeout=60)
    conn.send("ready")
    conn.recv()  # "go"
    latencies = np.empty(job.max_calls, np.int64)
    responses: dict[int, bytes] = {}
    clock = time.perf_counter_ns
    started = time.perf_counter()
    deadline = clock() + int(job.seconds * 1e9)
    calls = 0
    while calls < job.max_calls:
        index = (offset + calls) % n
        before = clock()
        if before >= deadline:
            break
        response = call(requests[index], timeout=60)
        latencies[calls] = clock() - before
        if index not in responses:
            responses[index] = response
        calls += 1
    return started, time.perf_counter(), latencies[:calls], responses
