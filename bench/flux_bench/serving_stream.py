"""``flux bench serving``'s StreamSearch mode: one stream per client process, beside unary Search.

Each load client opens one bidirectional StreamSearch and keeps ``window`` queries in flight on
it: it sends the next query's bytes (encoded before the clock starts, ``request_id`` the query's
number) as soon as an answer comes back, and keeps the answers as bytes until it stops. At the
end of the phase it stops sending, reads the answers still in flight and closes its side, so
the stream ends OK. A query's latency is from the moment gRPC takes its bytes to its answer.

The servers are the same as unary's, with one gRPC handler thread per stream at least (an open
stream holds a thread for its whole life): Flux, and the echo answering every message of a
stream with bytes as large as Flux's answer. Rows are ``flux-stream`` and ``echo-stream``; the
targets compare Flux's StreamSearch with its unary Search under the same number of clients,
and every answer the stream gave with the one Search gave to the same query.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TextIO

import numpy as np

from flux_api.v1 import vector_service_pb2 as pb
from flux_bench import report
from flux_bench.load import Job, LoadClients, client_main
from flux_bench.procs import Child

STREAM_SEARCH = "/flux_api.v1.VectorService/StreamSearch"
#: Queries each stream keeps in flight: enough that the server always has the next one at hand.
WINDOW = 16
#: The issue's StreamSearch targets, against Flux's unary Search under the same number of clients.
CPU_OVER_UNARY = 0.6  # server CPU per query, stream over unary
QPS_OVER_UNARY = 1.8  # QPS of N streams over N unary clients


@dataclass(frozen=True)
class StreamJob(Job):
    """A ``Job`` sent over one stream per client: ``requests`` are StreamSearchRequest bytes."""

    window: int = WINDOW


class StreamClients(LoadClients):
    """``LoadClients`` whose processes each open one StreamSearch per run and pipeline the job over it;
    ``run`` is unary's (same start, same clock, same server CPU readings)."""

    def __init__(self, count: int, cpus: Collection[int] | None = None) -> None:  # no super(): another client
        self._clients = [
            Child(client_main, "stream_stream", _run, name=f"flux-bench-stream-{i}", cpus=cpus) for i in range(count)
        ]


def stream_requests(unary: Sequence[bytes]) -> list[bytes]:
    """StreamSearchRequest bytes for SearchRequest bytes: the same fields (numbers 1 to 7), plus the
    query's number as request_id."""
    out = []
    for number, raw in enumerate(unary):
        request = pb.StreamSearchRequest.FromString(raw)  # the same field numbers: the bytes parse as one
        request.request_id = number
        out.append(request.SerializeToString())
    return out


def echo_stream_answer(unary_answer: bytes) -> bytes:
    """What the echo sends per stream message: Flux's stream answer to a query, as large as it is."""
    response = pb.StreamSearchResponse(request_id=1)
    response.search.MergeFromString(unary_answer)
    return response.SerializeToString()


def found(responses: dict[int, bytes], queries: int, k: int) -> np.ndarray:
    """The neighbours' labels per query from the stream's answers, -1 where none came."""
    labels = np.full((queries, k), -1, np.int64)
    for index, raw in responses.items():
        response = pb.StreamSearchResponse.FromString(raw)
        if response.request_id != index:
            raise RuntimeError(f"the answer to query {index} names request_id {response.request_id}")
        if response.HasField("error"):
            raise RuntimeError(f"query {index} failed in the stream: {response.error.message}")
        ids = response.search.neighbors.ids
        labels[index, : len(ids)] = [int(i) for i in ids]
    return labels


def identical(stream: dict[int, bytes], unary: dict[int, bytes]) -> tuple[int, int]:
    """Of the queries both answered: how many, and how many got from the stream exactly the
    SearchResponse that Search gave (index, version, alias, ids, distances, strategy)."""
    both = sorted(set(stream) & set(unary))
    same = sum(pb.StreamSearchResponse.FromString(stream[i]).search == pb.SearchResponse.FromString(unary[i])
               for i in both)  # fmt: skip
    return len(both), same


def targets(
    rows: Sequence[report.Row],
    setting: str,
    backend: str,
    clients: int,
    *,
    answers: tuple[int, int] | None = None,
    client_cpu: Mapping[tuple[str, float], list[float]] | None = None,
    client_cpus: int | None = None,
    server_cpus: int | None = None,
) -> list[report.Target]:
    """StreamSearch against unary Search from as many clients, at the operating value.

    ``answers``: queries answered by both, and how many alike. ``client_cpu`` holds the load
    clients' own CPU per query by (mode, value); with the sizes of the pinned CPU sets, the QPS
    line says how busy the clients and the server kept theirs, so a reader sees which side set it.
    """
    mine = [r for r in rows if r.setting == setting and r.backend == backend]
    value = report.operating_value(mine)

    def pick(mode: str) -> report.Row | None:
        return next((r for r in mine if r.mode == mode and r.load == clients and r.value == value), None)

    unary, stream = pick("flux-unary"), pick("flux-stream")
    echo, echo_stream = pick("echo"), pick("echo-stream")
    out: list[report.Target] = []
    if answers is not None:
        compared, same = answers
        share = same / compared if compared else 0.0
        out.append(
            report.Target(setting, backend, "StreamSearch answers identical to Search", share, 1.0, share, ">= 1.0",
                          compared > 0 and same == compared,
                          f"{same:,} of {compared:,} queries answered by both got the same SearchResponse "
                          "(index, version, ids, distances, strategy)")
        )  # fmt: skip
    if unary is None or stream is None:
        return out
    workers = f", {stream.workers} workers" if stream.workers > 1 else ""
    where = f"{clients} streams vs {clients} unary clients{workers}"
    if unary.cpu_us_per_query and stream.cpu_us_per_query:
        ratio = stream.cpu_us_per_query / unary.cpu_us_per_query
        floor = ""
        if echo and echo_stream and echo.cpu_us_per_query and echo_stream.cpu_us_per_query:
            floor = (f"; the echo: {echo_stream.cpu_us_per_query:,.1f} vs {echo.cpu_us_per_query:,.1f} µs = "
                     f"{echo_stream.cpu_us_per_query / echo.cpu_us_per_query:.2f}")  # fmt: skip
        out.append(
            report.Target(setting, backend, "StreamSearch server CPU per query", stream.cpu_us_per_query,
                          unary.cpu_us_per_query, ratio, f"<= {CPU_OVER_UNARY}", ratio <= CPU_OVER_UNARY,
                          f"StreamSearch {stream.cpu_us_per_query:,.1f} vs Search {unary.cpu_us_per_query:,.1f} µs "
                          f"of server CPU per query, {where}" + floor)
        )  # fmt: skip
    ratio = stream.qps / unary.qps if unary.qps else 0.0
    floor = f"; the echo: {echo_stream.qps / echo.qps:.2f}" if echo and echo_stream and echo.qps else ""
    sides = [f"{name}: {_busy(row, client_cpu, value, client_cpus, server_cpus)}"
             for name, row in (("Search", unary), ("StreamSearch", stream))]  # fmt: skip
    out.append(
        report.Target(setting, backend, f"StreamSearch QPS, {clients} streams", stream.qps, unary.qps, ratio,
                      f">= {QPS_OVER_UNARY}", ratio >= QPS_OVER_UNARY,
                      f"StreamSearch {stream.qps:,.0f} vs Search {unary.qps:,.0f} QPS, {where}" + floor
                      + "; " + "; ".join(sides))
    )  # fmt: skip
    return out


def _busy(row: report.Row, client_cpu: Mapping[tuple[str, float], list[float]] | None, value: float | None,
          client_cpus: int | None, server_cpus: int | None) -> str:  # fmt: skip
    """What each side spent per query and, when pinned, how busy that kept its CPUs (QPS x CPU per query)."""
    parts = []
    spent = (client_cpu or {}).get((row.mode, value if value is not None else -1.0))
    if spent:
        client = float(np.median(spent))
        busy = f", ~{row.qps * client / 1e6 / client_cpus:.0%} of their CPUs" if client_cpus else ""
        parts.append(f"load clients {client:,.1f} µs/q (warm-up included){busy}")
    if row.cpu_us_per_query:
        busy = f", ~{row.qps * row.cpu_us_per_query / 1e6 / server_cpus:.0%} of its CPUs" if server_cpus else ""
        parts.append(f"server {row.cpu_us_per_query:,.1f} µs/q{busy}")
    return ", ".join(parts) or "-"


def print_streams(rows: Sequence[report.Row], out: TextIO) -> None:
    """At each operating value: Search and StreamSearch side by side, for the echo and for Flux."""
    for setting, backend in dict.fromkeys((r.setting, r.backend) for r in rows):
        mine = [r for r in rows if (r.setting, r.backend) == (setting, backend)]
        value = report.operating_value(mine)
        streams = [r for r in mine if r.mode == "flux-stream" and r.value == value]
        if not streams:
            continue
        param = next((r.param for r in mine), "")
        print(f"\n{setting} / {backend}: Search vs StreamSearch at {param}={report.format_value(value)} "
              "(server CPU per query in µs, QPS; one stream per client process)", file=out)  # fmt: skip
        print(f"{'server, load':<30} {'Search CPU':>11} {'Stream CPU':>11} {'ratio':>6} "
              f"{'Search QPS':>11} {'Stream QPS':>11} {'ratio':>6}", file=out)  # fmt: skip
        pairs = (("echo", "echo", "echo-stream"), ("Flux", "flux-unary", "flux-stream"))
        for stream in streams:
            for name, unary_mode, stream_mode in pairs:
                unary = next((r for r in mine if r.mode == unary_mode and r.value == value and r.load == stream.load
                              and r.workers == stream.workers), None)  # fmt: skip
                streamed = next((r for r in mine if r.mode == stream_mode and r.value == value
                                 and r.load == stream.load and r.workers == stream.workers), None)  # fmt: skip
                if unary is None or streamed is None:
                    continue
                load = f"{name}, {stream.load} clients" + (f", {stream.workers} workers" if stream.workers > 1 else "")
                cpu = _ratio(streamed.cpu_us_per_query, unary.cpu_us_per_query)
                print(f"{load:<30} {_us(unary.cpu_us_per_query):>11} {_us(streamed.cpu_us_per_query):>11} {cpu:>6} "
                      f"{unary.qps:>11,.0f} {streamed.qps:>11,.0f} {_ratio(streamed.qps, unary.qps):>6}",
                      file=out)  # fmt: skip


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


# -- the client process ----------------------------------------------------------------------------


class _Sender:
    """The request side of one stream: yields the job's queries in turn, at most ``window`` ahead of
    the answers read, until told to stop; notes when gRPC takes each one."""

    def __init__(self, job: StreamJob, offset: int, limit: int) -> None:
        self._requests, self._offset, self._limit = job.requests, offset, limit
        self._credits = threading.Semaphore(job.window)
        self._stopped = False
        self.sent_ns = np.zeros(limit, np.int64)

    def __iter__(self) -> Iterator[bytes]:
        requests, n, clock = self._requests, len(self._requests), time.perf_counter_ns
        for number in range(self._limit):
            self._credits.acquire()
            if self._stopped:
                return
            self.sent_ns[number] = clock()
            yield requests[(self._offset + number) % n]

    def answered(self) -> None:
        self._credits.release()

    def stop(self) -> None:
        """Send nothing more: the request side ends (half-close) at its next turn."""
        self._stopped = True
        self._credits.release()


def _run(conn: Connection, call: Any, job: StreamJob, offset: int) -> tuple[float, float, np.ndarray, dict[int, bytes]]:
    n = len(job.requests)
    warm = _Sender(job, offset, min(job.warmup, job.max_calls))
    for _ in call(iter(warm), timeout=60):  # a stream of its own: the connection is up and warm
        warm.answered()
    conn.send("ready")
    conn.recv()  # "go"
    sender = _Sender(job, offset, job.max_calls)
    latencies = np.empty(job.max_calls, np.int64)
    responses: dict[int, bytes] = {}
    clock = time.perf_counter_ns
    started = time.perf_counter()
    deadline = clock() + int(job.seconds * 1e9)
    answers = call(iter(sender), timeout=job.seconds + 60)
    count = 0
    for response in answers:
        now = clock()
        latencies[count] = now - sender.sent_ns[count]
        index = (offset + count) % n
        if index not in responses:
            responses[index] = response
        count += 1
        if now >= deadline and count >= job.cover:
            sender.stop()  # the answers still in flight are read, then the stream ends OK
        sender.answered()
    return started, time.perf_counter(), latencies[:count], responses
