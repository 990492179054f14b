"""Load generation: client processes that send pre-encoded requests to a gRPC server.

Every server mode and the echo baseline are driven by this same client, which sends
request bytes prepared before the clock starts and keeps response bytes unparsed
until it stops, so the client costs the same whatever server it loads. The clients may be
pinned to CPUs of their own, away from the server's, and a run may read the server's CPU
time just before the clients start and just after the last one stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from flux_bench.procs import Child, cpu_set, sendable

_MESSAGE_BYTES = 64 * 1024 * 1024
#: What a client process runs per job: ``run(conn, call, job, offset)`` -> (started, stopped, latencies, responses).
Run = Callable[[Connection, Any, Any, int], tuple[float, float, np.ndarray, dict[int, bytes]]]


@dataclass(frozen=True)
class Job:
    """What every client sends: ``requests[i]`` asks query group ``i``; clients start at different offsets.

    A client runs for ``seconds``, and longer if it has not yet made ``cover`` calls: ``LoadClients.run``
    sets it so that together they ask every request once, and a row's recall is over every query, not
    over those a slow server reached in time.
    """

    target: str
    method: str
    requests: Sequence[bytes]
    seconds: float
    max_calls: int
    warmup: int = 20
    cover: int = 0


@dataclass(frozen=True)
class LoadResult:
    """Merged over clients: wall time from the first start to the last stop, every call's latency."""

    calls: int
    seconds: float
    latencies_ms: np.ndarray
    responses: dict[int, bytes]  # request index -> the first response to it
    server_cpu_seconds: float | None = None  # what the server spent while the clients ran, warm-up left out


class LoadClients:
    """A fixed set of client processes, started once and reused for every run; with ``cpus``,
    each runs on those CPUs only."""

    def __init__(self, count: int, cpus: Collection[int] | None = None) -> None:
        self._clients = [
            Child(client_main, "unary_unary", _run, name=f"flux-bench-client-{i}", cpus=cpus) for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self._clients)

    def cpu_sets(self) -> dict[int, list[int]]:
        """The CPUs each client process (any thread of it) may run on."""
        return {client.pid: cpu_set(client.pid) for client in self._clients}

    def run(self, job: Job, clients: int, server_cpu: Callable[[], float] | None = None) -> LoadResult:
        """Run ``job`` on the first ``clients`` processes at once; they start together after warming up.

        ``server_cpu`` reads the server's CPU seconds so far; it is read once the clients have
        warmed up and wait for the start, and again once the last one has stopped.
        """
        if not 1 <= clients <= len(self._clients):
            raise ValueError(f"clients must be between 1 and {len(self._clients)}, got {clients}")
        active = self._clients[:clients]
        job = replace(job, cover=min(job.max_calls, -(-len(job.requests) // clients)))
        for number, client in enumerate(active):
            client.send((job, number * len(job.requests) // clients))
        for client in active:
            client.recv()  # connected and warmed up
        cpu_before = server_cpu() if server_cpu else 0.0
        for client in active:
            client.send("go")
        parts = [client.recv() for client in active]
        cpu = server_cpu() - cpu_before if server_cpu else None
        starts, stops, latencies, responses = zip(*parts, strict=True)
        merged: dict[int, bytes] = {}
        for part in responses:
            for index, response in part.items():
                merged.setdefault(index, response)
        all_latencies = np.concatenate(latencies).astype(np.float64) / 1e6
        return LoadResult(len(all_latencies), max(stops) - min(starts), all_latencies, merged, cpu)

    def close(self) -> None:
        for client in self._clients:
            client.close()


def client_main(conn: Connection, kind: str, run: Run) -> None:
    """A load client process: for each (job, offset) it is sent, a channel of its own and
    ``run(conn, call, job, offset)`` on the job's method as a multi-callable of ``kind``
    (``unary_unary``, ``stream_stream``), whose result (or error) goes back; until sent None."""
    import grpc

    options = [("grpc.max_receive_message_length", _MESSAGE_BYTES), ("grpc.max_send_message_length", _MESSAGE_BYTES)]
    while True:
        message = conn.recv()
        if message is None:
            return
        job, offset = message
        try:
            with grpc.insecure_channel(job.target, options=options) as channel:
                call = getattr(channel, kind)(job.method)  # bytes in, bytes out: no client-side protobuf work
                result = run(conn, call, job, offset)
        except Exception as exc:
            conn.send(sendable(exc))
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
        if before >= deadline and calls >= job.cover:
            break
        response = call(requests[index], timeout=60)
        latencies[calls] = clock() - before
        if index not in responses:
            responses[index] = response
        calls += 1
    return started, time.perf_counter(), latencies[:calls], responses
