"""Benchmark results: one row per measurement, the target ratios, and the table, JSON and plot of them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

#: Recall@k the targets are judged at: the smallest swept value whose in-process recall reaches it.
TARGET_RECALL = 0.95


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

    @property
    def label(self) -> str:
        unit = "threads" if self.mode.startswith("library") else "clients"
        shape = f"batch {self.batch}, " if self.batch > 1 else ""
        processes = f", {self.workers} workers" if self.workers > 1 else ""
        return f"{self.mode} ({shape}{self.load} {unit if self.load > 1 else unit[:-1]}{processes})"


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
) -> Row:
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

    def to_json(self) -> str:
        data = {
            "command": self.command,
            "environment": self.environment,
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


def targets(rows: Sequence[Row], setting: str, backend: str, clients: int) -> list[Target]:
    """Evaluate the issue's targets for one backend on one data set, at the operating value."""
    mine = [r for r in rows if r.setting == setting and r.backend == backend]
    value = operating_value(mine)

    def pick(mode: str, load: int, at_value: bool = True) -> Row | None:
        for r in mine:
            if r.mode == mode and r.load == load and (not at_value or r.value == value):
                return r
        return None

    out: list[Target] = []
    lib1, lib2, lib_batch = pick("library", 1), pick("library", 2), pick("library-batch", 2)
    echo1, echo_n = pick("echo", 1), pick("echo", clients)  # measured alongside, at the same value
    bare1, bare_n, bare_batch = pick("bare", 1), pick("bare", clients), pick("bare-batch", 1)
    flux1, flux_n, flux_batch = pick("flux-unary", 1), pick("flux-unary", clients), pick("flux-batch", 1)
    where = f"at {lib1.param}={_num(value)} (recall {lib1.recall})" if lib1 else ""

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
    if flux_batch and lib_batch:
        ratio = flux_batch.qps / lib_batch.qps
        out.append(
            Target(setting, backend, f"batch {flux_batch.batch} QPS", flux_batch.qps, lib_batch.qps, ratio, ">= 0.85",
                   ratio >= 0.85,
                   f"Flux {flux_batch.qps:,.0f} vs library {lib_batch.qps:,.0f} QPS, {lib_batch.load} threads"
                   + (f"; the bare search server {bare_batch.qps / lib_batch.qps:.2f}" if bare_batch else ""))
        )  # fmt: skip
    if flux_n and echo_n and lib2:
        ceiling = min(echo_n.qps, lib2.qps)
        ratio = flux_n.qps / ceiling
        # Clients, server and search share the same cores: a call that costs the echo's CPU plus
        # the search's cannot go faster than this, whatever the server does.
        shared = 1 / (1 / echo_n.qps + 1 / lib2.qps)
        out.append(
            Target(setting, backend, f"unary QPS, {clients} clients", flux_n.qps, ceiling, ratio, ">= 0.80",
                   ratio >= 0.80, f"Flux {flux_n.qps:,.0f} vs min(echo {echo_n.qps:,.0f}, library x2 {lib2.qps:,.0f}); "
                   f"echo and search on the same cores allow at most {shared:,.0f} = {shared / ceiling:.2f} of that, "
                   f"Flux reached {flux_n.qps / shared:.2f} of it"
                   + (f"; the bare search server {bare_n.qps:,.0f} = {bare_n.qps / ceiling:.2f}" if bare_n else ""))
        )  # fmt: skip
    if flux1 and echo1 and lib1:
        ceiling = lib1.p50_ms + echo1.p50_ms + 0.05
        bare = f"; the bare search server {bare1.p50_ms:.3f} ms ({bare1.p50_ms - ceiling:+.3f})" if bare1 else ""
        out.append(
            Target(setting, backend, "unary p50, 1 client", flux1.p50_ms, ceiling, flux1.p50_ms - ceiling, "<= 0 ms",
                   flux1.p50_ms <= ceiling,
                   f"Flux {flux1.p50_ms:.3f} ms vs library {lib1.p50_ms:.3f} + echo {echo1.p50_ms:.3f} + 0.050 ms"
                   + bare)
        )  # fmt: skip
    server_rss = max((r.rss_mib or 0.0 for r in mine if r.mode.startswith("flux") and r.workers == 1), default=0.0)
    library_rss = max((r.rss_mib or 0.0 for r in mine if r.mode.startswith("library")), default=0.0)
    if server_rss and library_rss:
        ratio = server_rss / library_rss
        out.append(
            Target(setting, backend, "server memory, 1 worker", server_rss, library_rss, ratio, "<= 1.25",
                   ratio <= 1.25, f"server RSS {server_rss:,.0f} MiB vs in-process {library_rss:,.0f} MiB")
        )  # fmt: skip
    return out


def print_table(rows: Sequence[Row], out: TextIO) -> None:
    """Rows grouped by data set and backend, in the order they were measured."""
    header = (
        f"{'mode':<46} {'param':>14} {'recall':>7} {'QPS':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}"
    )
    group: tuple[str, str] | None = None
    order = {mode: n for n, mode in enumerate(MODE_ORDER)}
    groups = list(dict.fromkeys((r.setting, r.backend) for r in rows))
    ordered = sorted(
        rows,
        key=lambda r: (groups.index((r.setting, r.backend)), order.get(r.mode, len(order)), r.mode, r.load,
                       r.workers, r.value or 0.0),
    )  # fmt: skip
    for r in ordered:
        if (r.setting, r.backend) != group:
            group = (r.setting, r.backend)
            print(f"\n{r.setting} / {r.backend}", file=out)
            print(header, file=out)
            print("-" * len(header), file=out)
        param = f"{r.param}={_num(r.value)}" if r.value is not None else "-"
        recall = f"{r.recall:.4f}" if r.recall is not None else "-"
        rss = f"{r.rss_mib:,.0f}" if r.rss_mib is not None else "-"
        print(
            f"{r.label:<46} {param:>14} {recall:>7} {r.qps:>9,.0f} {r.p50_ms:>8.3f} {r.p95_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {rss:>8}",
            file=out,
        )


def print_targets(found: Sequence[Target], out: TextIO) -> None:
    print("\ntargets (each ratio from this one run)", file=out)
    for t in found:
        verdict = "PASS" if t.passed else "FAIL"
        value = f"{t.ratio:+.3f}" if t.bound.startswith("|") or t.bound.endswith("ms") else f"{t.ratio:.3f}"
        print(f"  {verdict}  {t.setting} / {t.backend}: {t.name}: {value} ({t.bound}); {t.detail}", file=out)


def plot(rows: Sequence[Row], path: Path) -> bool:
    """Recall against QPS, one chart per data set and backend, in the style of ann-benchmarks
    (logit recall axis, log QPS axis); dashed lines are the in-process library. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator
    except ImportError:
        return False
    groups = list(dict.fromkeys((r.setting, r.backend) for r in rows if r.recall is not None))
    if not groups:
        return False
    columns = min(2, len(groups))
    lines = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(6.5 * columns, 4.6 * lines), squeeze=False)
    colours: dict[str, str] = {}
    for ax, (setting, backend) in zip(axes.flat, groups, strict=False):
        series: dict[str, list[Row]] = {}
        for r in rows:
            if (r.setting, r.backend) == (setting, backend) and r.recall is not None:
                series.setdefault(r.label, []).append(r)
        for name, points in series.items():
            points.sort(key=lambda r: r.value or 0.0)
            colour = colours.setdefault(name, f"C{len(colours) % 10}")
            style = "--" if points[0].mode.startswith("library") else "-"
            recalls = [min(p.recall or 0.0, 0.9999) for p in points]  # a logit axis cannot show 1.0
            ax.plot(recalls, [p.qps for p in points], style, color=colour, marker="o", markersize=3, label=name)
        ax.set_xscale("logit")
        ax.set_yscale("log")
        ticks = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second")
        ax.set_title(f"{setting} / {backend}")
        ax.axvline(TARGET_RECALL, color="grey", linewidth=0.6)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
