"""What a reader sees of ``flux bench serving``'s results: tables of the rows, CPU per query and targets; the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from flux_bench.report import MODE_ORDER, TARGET_RECALL, Row, Target, format_value, operating_value


def print_table(rows: Sequence[Row], out: TextIO) -> None:
    """Rows grouped by data set and backend, in the order they were measured."""
    header = (
        f"{'mode':<46} {'param':>14} {'recall':>7} {'QPS':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'CPU µs/call':>11} {'CPU µs/q':>9} {'RSS MiB':>8}"
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
        param = f"{r.param}={format_value(r.value)}" if r.value is not None else "-"
        recall = f"{r.recall:.4f}" if r.recall is not None else "-"
        rss = f"{r.rss_mib:,.0f}" if r.rss_mib is not None else "-"
        print(
            f"{r.label:<46} {param:>14} {recall:>7} {r.qps:>9,.0f} {r.p50_ms:>8.3f} {r.p95_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {_cpu(r.cpu_us_per_call):>11} {_cpu(r.cpu_us_per_query):>9} {rss:>8}",
            file=out,
        )


def print_cpu(rows: Sequence[Row], out: TextIO) -> None:
    """At each operating value: the CPU each side spent per query, and Flux's over the bare server's."""
    groups = list(dict.fromkeys((r.setting, r.backend) for r in rows))
    for setting, backend in groups:
        mine = [r for r in rows if (r.setting, r.backend) == (setting, backend)]
        value = operating_value(mine)
        at = [r for r in mine if r.value == value]

        def find(mode: str, load: int, workers: int = 1, at: list[Row] = at) -> Row | None:
            return next((r for r in at if r.mode == mode and r.load == load and r.workers == workers), None)

        lines = []
        for flux in sorted((r for r in at if r.mode == "flux-unary"), key=lambda r: (r.load, r.workers)):
            load = f"Search, {flux.label.removeprefix('flux-unary (').removesuffix(')')}"
            echo, bare = find("echo", flux.load, flux.workers), find("bare", flux.load, flux.workers)
            lines.append((load, find("library", 1), echo, bare, flux))
        for flux in (r for r in at if r.mode == "flux-batch"):
            library = next((r for r in at if r.mode == "library-batch"), None)
            load = f"BatchSearch, {flux.label.removeprefix('flux-batch (').removesuffix(')')}"
            lines.append((load, library, None, find("bare-batch", flux.load), flux))
        if not lines:
            continue
        param = next((r.param for r in mine), "")
        print(f"\n{setting} / {backend}: CPU per query at {param}={format_value(value)}, µs "
              "(servers: user + sys of the process tree; library: its process)", file=out)  # fmt: skip
        print(f"{'call, load':<36} {'library':>9} {'echo':>9} {'bare':>9} {'Flux':>9} {'Flux / bare':>12}", file=out)
        for label, library, echo, bare, flux in lines:
            ratio = "-"
            if bare and bare.cpu_us_per_query and flux.cpu_us_per_query:
                ratio = f"{flux.cpu_us_per_query / bare.cpu_us_per_query:.2f}"
            cells = [_cpu(r.cpu_us_per_query if r else None) for r in (library, echo, bare, flux)]
            print(f"{label:<36} {cells[0]:>9} {cells[1]:>9} {cells[2]:>9} {cells[3]:>9} {ratio:>12}", file=out)


def _cpu(us: float | None) -> str:
    return "-" if us is None else f"{us:,.1f}"


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
