"""Benchmark results: one row per measurement, the target ratios judged from them, and the JSON of both.

The tables and the plot of them are ``flux_bench.report_output``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

#: Recall@k the targets are judged at: the smallest swept value whose in-process recall reaches it.
TARGET_RECALL = 0.95
#: The issue's targets, each a ratio from one run at that recall.
CPU_OVER_BARE = 1.15  # Flux's server CPU per unary call, over the bare search server's
P50_OVER_BARE_MS = 0.03  # one client: Flux's p50 at most the bare server's plus this
BATCH_SHARE = 0.9  # BatchSearch QPS, over the library's batch QPS with the same threads
#: BatchSearch calls in flight for that target: the library answers batches back to back, and a
#: server does so only when the next call waits while it answers one. With one call in flight it
#: idles while the client sends, receives and decodes (printed beside it).
BATCH_CLIENTS = 2
UNARY_SHARE = 0.80  # many clients: Flux QPS over min(echo, library with the same threads)
P50_SLACK_MS = 0.05  # one client: Flux's p50 at most library + echo plus this
MEMORY_RATIO = 1.25  # one worker's RSS over the library process's
WORKERS_MEMORY_RATIO = 1.4  # two workers' memory over one's (proportional set size, shared pages once)


#: How the table lists modes: the ceilings first, then Flux.
MODE_ORDER = ("library", "library-batch", "echo", "bare", "bare-batch", "flux-unary", "flux-batch")


@dataclass(frozen=True)
class Row:
    """One measured configuration: who answered (mode), under what load, how fast and how well."""

    setting: str
    backend: str
    mode: str  # library | library-batch | echo | bare | bare-batch | flux-unary | flux-batch
    load: int  # client processes, or library threads
    batch: int
    param: str
    value: float | None
    queries: int
    seconds: float
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    recall: float | None
    rss_mib: float | None = None
    #: Of the queries both answered, the fraction where Flux found exactly the library's neighbours.
    same_as_library: float | None = None
    workers: int = 1  # server processes
    #: CPU time (user + sys) of the answering side over the measured calls, in microseconds: the
    #: server's whole process tree, or the library's process. Per call, and per query (batches).
    cpu_us_per_call: float | None = None
    cpu_us_per_query: float | None = None
    #: Queries each client keeps in flight (streams): its latency is mostly their queueing, about
    #: load x in_flight / QPS, not what one query costs.
    in_flight: int = 0

    @property
    def label(self) -> str:
        unit = "threads" if self.mode.startswith("library") else "clients"
        shape = f"batch {self.batch}, " if self.batch > 1 else ""
        ahead = f", {self.in_flight} in flight each" if self.in_flight else ""
        processes = f", {self.workers} workers" if self.workers > 1 else ""
        return f"{self.mode} ({shape}{self.load} {unit if self.load > 1 else unit[:-1]}{ahead}{processes})"


def row(
    setting: str,
    backend: str,
    mode: str,
    *,
    load: int,
    batch: int,
    param: str,
    value: float | None,
    queries: int,
    seconds: float,
    latencies_ms: np.ndarray,
    recall: float | None,
    rss: int | None = None,
    same_as_library: float | None = None,
    workers: int = 1,
    cpu_seconds: float | None = None,
    in_flight: int = 0,
) -> Row:
    """``cpu_seconds``: what the answering side spent over the ``queries`` (in calls of ``batch``)."""
    per_query = None if cpu_seconds is None or queries <= 0 else cpu_seconds / queries * 1e6
    p50, p95, p99 = (float(np.percentile(latencies_ms, p)) for p in (50, 95, 99)) if len(latencies_ms) else (0.0,) * 3
    return Row(
        setting,
        backend,
        mode,
        load,
        batch,
        param,
        value,
        queries,
        round(seconds, 4),
        round(queries / seconds, 1) if seconds > 0 else 0.0,
        round(p50, 4),
        round(p95, 4),
        round(p99, 4),
        None if recall is None else round(recall, 4),
        None if rss is None else round(rss / 2**20, 1),
        None if same_as_library is None else round(same_as_library, 4),
        workers,
        None if per_query is None else round(per_query * batch, 2),
        None if per_query is None else round(per_query, 3),
        in_flight,
    )


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: measured against its ceiling, in one run."""

    setting: str
    backend: str
    name: str
    measured: float
    ceiling: float
    ratio: float
    bound: str  # e.g. ">= 0.85"
    passed: bool
    detail: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    #: How processes were placed: mode (pinned or shared), the CPU sets, and each process's set as read back.
    pinning: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "command": self.command,
            "environment": self.environment,
            "pinning": self.pinning,
            "target_recall": TARGET_RECALL,
            "rows": [asdict(r) for r in self.rows],
            "targets": [asdict(t) for t in self.targets],
        }
        return json.dumps(data, indent=2) + "\n"


def merge(rows: Sequence[Row]) -> list[Row]:
    """One row per configuration measured several times: the median of each figure, so that one
    run disturbed by other work on the machine does not decide a ratio; memory is the largest seen."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.setting, r.backend, r.mode, r.load, r.batch, r.workers, r.value), []).append(r)
    merged = []
    for same in groups.values():
        if len(same) == 1:
            merged.append(same[0])
            continue

        def median(name: str, same: list[Row] = same) -> float:
            return round(float(np.median([getattr(r, name) for r in same])), 4)

        def median_of_known(name: str, same: list[Row] = same) -> float | None:
            known = [getattr(r, name) for r in same if getattr(r, name) is not None]
            return round(float(np.median(known)), 3) if known else None

        rss = [r.rss_mib for r in same if r.rss_mib is not None]
        agreement = [r.same_as_library for r in same if r.same_as_library is not None]
        merged.append(
            replace(
                same[0],
                queries=sum(r.queries for r in same),
                seconds=round(sum(r.seconds for r in same), 4),
                qps=median("qps"),
                p50_ms=median("p50_ms"),
                p95_ms=median("p95_ms"),
                p99_ms=median("p99_ms"),
                rss_mib=max(rss) if rss else None,
                same_as_library=min(agreement) if agreement else None,
                cpu_us_per_call=median_of_known("cpu_us_per_call"),
                cpu_us_per_query=median_of_known("cpu_us_per_query"),
            )
        )
    return merged


def operating_value(rows: Sequence[Row]) -> float | None:
    """The smallest swept value whose single-thread in-process recall reaches TARGET_RECALL, else the best one."""
    library = sorted((r for r in rows if r.mode == "library" and r.load == 1), key=lambda r: r.value or 0.0)
    if not library:
        return None
    for r in library:
        if (r.recall or 0.0) >= TARGET_RECALL:
            return r.value
    return max(library, key=lambda r: r.recall or 0.0).value


def targets(
    rows: Sequence[Row], setting: str, backend: str, clients: int, *, threads: int = 2, server_cpus: int | None = None
) -> list[Target]:
    """Evaluate the issue's targets for one backend on one data set, at the operating value.

    ``threads`` is the library's thread count for the batch and many-client ceilings;
    ``server_cpus`` the size of the server's CPU set when it was pinned (None: shared cores).
    """
    mine = [r for r in rows if r.setting == setting and r.backend == backend]
    value = operating_value(mine)

    def pick(mode: str, load: int, at_value: bool = True) -> Row | None:
        for r in mine:
            if r.mode == mode and r.load == load and (not at_value or r.value == value):
                return r
        return None

    out: list[Target] = []
    lib1, lib_n, lib_batch = pick("library", 1), pick("library", threads), pick("library-batch", threads)
    echo1, echo_n = pick("echo", 1), pick("echo", clients)  # measured alongside, at the same value
    in_flight = min(BATCH_CLIENTS, clients)  # a run with one client process has one call in flight
    bare1, bare_n, bare_batch = pick("bare", 1), pick("bare", clients), pick("bare-batch", in_flight)
    flux1, flux_n, flux_batch = pick("flux-unary", 1), pick("flux-unary", clients), pick("flux-batch", in_flight)
    bare_batch1, flux_batch1 = pick("bare-batch", 1), pick("flux-batch", 1)
    where = f"at {lib1.param}={format_value(value)} (recall {lib1.recall})" if lib1 else ""

    if lib1 is not None:
        reached = (lib1.recall or 0.0) >= TARGET_RECALL
        out.append(
            Target(setting, backend, "recall reached", lib1.recall or 0.0, TARGET_RECALL, lib1.recall or 0.0,
                   f">= {TARGET_RECALL}", reached, f"in-process recall@k {where}")
        )  # fmt: skip
    agreement = [r.same_as_library for r in mine if r.mode.startswith("flux") and r.same_as_library is not None]
    if agreement:
        worst = min(agreement)
        out.append(
            Target(setting, backend, "same neighbours as library", worst, 1.0, worst, ">= 0.99", worst >= 0.99,
                   "fraction of queries where every Flux run returned the library's own answer (worst run)")
        )  # fmt: skip
    if flux_n and bare_n and flux_n.cpu_us_per_call and bare_n.cpu_us_per_call:
        ratio = flux_n.cpu_us_per_call / bare_n.cpu_us_per_call
        one = ""
        if flux1 and bare1 and flux1.cpu_us_per_call and bare1.cpu_us_per_call:
            one = (f"; 1 client: Flux {flux1.cpu_us_per_call:,.1f} vs bare {bare1.cpu_us_per_call:,.1f} µs = "
                   f"{flux1.cpu_us_per_call / bare1.cpu_us_per_call:.2f}")  # fmt: skip
        echo = f"; the echo {echo_n.cpu_us_per_call:,.1f} µs" if echo_n and echo_n.cpu_us_per_call else ""
        workers = f", {flux_n.workers} workers" if flux_n.workers > 1 else ""
        out.append(
            Target(setting, backend, "unary server CPU per call", flux_n.cpu_us_per_call, bare_n.cpu_us_per_call,
                   ratio, f"<= {CPU_OVER_BARE}", ratio <= CPU_OVER_BARE,
                   f"Flux {flux_n.cpu_us_per_call:,.1f} vs bare search server {bare_n.cpu_us_per_call:,.1f} µs of "
                   f"server CPU per call, {clients} clients{workers}" + one + echo)
        )  # fmt: skip
    if flux1 and bare1:
        ceiling = bare1.p50_ms + P50_OVER_BARE_MS
        out.append(
            Target(setting, backend, "unary p50, 1 client, vs bare", flux1.p50_ms, ceiling, flux1.p50_ms - ceiling,
                   "<= 0 ms", flux1.p50_ms <= ceiling,
                   f"Flux {flux1.p50_ms:.3f} ms vs bare search server {bare1.p50_ms:.3f} + {P50_OVER_BARE_MS:.3f} ms")
        )  # fmt: skip
    if flux_batch and lib_batch:
        ratio = flux_batch.qps / lib_batch.qps
        cpu = ""
        if flux_batch.cpu_us_per_query and lib_batch.cpu_us_per_query:
            cpu = (f"; CPU per query: Flux server {flux_batch.cpu_us_per_query:,.1f}, library "
                   f"{lib_batch.cpu_us_per_query:,.1f} µs")  # fmt: skip
        one = ""
        if flux_batch1 and in_flight > 1:
            bare = f", the bare server {bare_batch1.qps / lib_batch.qps:.2f}" if bare_batch1 else ""
            one = f"; 1 call in flight: Flux {flux_batch1.qps / lib_batch.qps:.2f}{bare}"
        out.append(
            Target(setting, backend, f"batch {flux_batch.batch} QPS", flux_batch.qps, lib_batch.qps, ratio,
                   f">= {BATCH_SHARE}", ratio >= BATCH_SHARE,
                   f"Flux {flux_batch.qps:,.0f} vs library {lib_batch.qps:,.0f} QPS, {lib_batch.load} threads, "
                   f"{flux_batch.load} calls in flight"
                   + (f"; the bare search server {bare_batch.qps / lib_batch.qps:.2f}" if bare_batch else "") + cpu
                   + one)
        )  # fmt: skip
    if flux_n and echo_n and lib_n:
        ceiling = min(echo_n.qps, lib_n.qps)
        ratio = flux_n.qps / ceiling
        if server_cpus is None:
            # Clients, server and search share the same cores: a call that costs the echo's CPU plus
            # the search's cannot go faster than this, whatever the server does.
            shared = 1 / (1 / echo_n.qps + 1 / lib_n.qps)
            bound = (f"; echo and search on the same cores allow at most {shared:,.0f} = {shared / ceiling:.2f} of "
                     f"that, Flux reached {flux_n.qps / shared:.2f} of it")  # fmt: skip
        elif flux_n.cpu_us_per_call:
            # QPS x CPU per call is how busy the server kept its CPUs: below 1 per CPU, the clients held it back.
            busy = flux_n.qps * flux_n.cpu_us_per_call / 1e6 / server_cpus
            bound = (f"; Flux kept its {server_cpus} server CPU{'s' if server_cpus > 1 else ''} about {busy:.0%} busy "
                     "(QPS x CPU per call)")  # fmt: skip
        else:
            bound = ""
        out.append(
            Target(setting, backend, f"unary QPS, {clients} clients", flux_n.qps, ceiling, ratio, f">= {UNARY_SHARE}",
                   ratio >= UNARY_SHARE,
                   f"Flux {flux_n.qps:,.0f} vs min(echo {echo_n.qps:,.0f}, library x{threads} {lib_n.qps:,.0f})"
                   + bound
                   + (f"; the bare search server {bare_n.qps:,.0f} = {bare_n.qps / ceiling:.2f}" if bare_n else ""))
        )  # fmt: skip
    if flux1 and echo1 and lib1:
        ceiling = lib1.p50_ms + echo1.p50_ms + P50_SLACK_MS
        bare = f"; the bare search server {bare1.p50_ms:.3f} ms ({bare1.p50_ms - ceiling:+.3f})" if bare1 else ""
        out.append(
            Target(setting, backend, "unary p50, 1 client", flux1.p50_ms, ceiling, flux1.p50_ms - ceiling, "<= 0 ms",
                   flux1.p50_ms <= ceiling,
                   f"Flux {flux1.p50_ms:.3f} ms vs library {lib1.p50_ms:.3f} + echo {echo1.p50_ms:.3f} + "
                   f"{P50_SLACK_MS:.3f} ms" + bare)
        )  # fmt: skip
    server_rss = max((r.rss_mib or 0.0 for r in mine if r.mode.startswith("flux") and r.workers == 1), default=0.0)
    library_rss = max((r.rss_mib or 0.0 for r in mine if r.mode.startswith("library")), default=0.0)
    if server_rss and library_rss:
        ratio = server_rss / library_rss
        out.append(
            Target(setting, backend, "server memory, 1 worker", server_rss, library_rss, ratio, f"<= {MEMORY_RATIO}",
                   ratio <= MEMORY_RATIO, f"server RSS {server_rss:,.0f} MiB vs in-process {library_rss:,.0f} MiB")
        )  # fmt: skip
    return out


def memory_targets(setting: str, backend: str, worker_memory: dict[int, float]) -> list[Target]:
    """Two workers' memory against one's, from proportional set sizes (``Bench.worker_memory``)."""
    one, two = worker_memory.get(1), worker_memory.get(2)
    if not one or not two:
        return []
    ratio = two / one
    return [
        Target(setting, backend, "server memory, 2 workers", two, one, ratio, f"<= {WORKERS_MEMORY_RATIO}",
               ratio <= WORKERS_MEMORY_RATIO,
               f"2 workers {two:,.0f} MiB vs 1 worker {one:,.0f} MiB (proportional set size summed over the "
               "server's processes: a page the workers share counts once)")
    ]  # fmt: skip


def format_value(value: float | None) -> str:
    """A swept value as a table shows it: whole numbers without ".0", "-" for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
