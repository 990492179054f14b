"""``flux bench filters`` on a small set: the recall checks at every selectivity and with each query's
nearest items excluded, for every backend, as in the full run.

Latencies are printed and written but not judged here (this machine is shared); recall is,
against exact filtered search, for every backend and filter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flux.cli import main
from flux.core.query.model import MAX_EXCLUDE_IDS
from flux_bench.filters import TARGET_EXCLUDED_RECALL, TARGET_RECALL, recall_target
from flux_bench.filters_measure import DEEPEST_BEAM
from flux_bench.filters_workload import (
    BUCKETS,
    EXCLUDED_NEAREST,
    EXCLUDED_OF,
    HASHED,
    MARKETS,
    PLAYED,
    SELECTIVITIES,
    Items,
    exclusion_name,
    scenarios,
)

COUNT = 10_000
BY_IDS = {exclusion_name(count * COUNT // EXCLUDED_OF) for count in EXCLUDED_NEAREST} | {
    exclusion_name(PLAYED * COUNT // EXCLUDED_OF, "played")
}
EXCLUDED = BY_IDS | {name + HASHED for name in BY_IDS}  # each list as ids, and as their hashes
FILTERS = {f"{s:.1%}" for s in SELECTIVITIES} | {"mixed"} | EXCLUDED
#: The backends that filter inside their own search (push-down).
NATIVE = {"faiss", "faiss-ivf"}


def test_filtered_recall_holds_at_every_selectivity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "filters.json"
    before = sorted(os.sched_getaffinity(0))
    run = ["bench", "filters", "--preset", "quick", "--count", str(COUNT), "--queries", "60"]
    code = main([*run, "--work-dir", str(tmp_path / "work"), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code in (0, 1)  # 1 means a target failed; recall is judged below, latency is not

    results = json.loads(out.read_text())
    rows = results["rows"]
    for backend in NATIVE | {"hnsw", "annoy"}:
        flux = {r["scenario"]: r for r in rows if r["backend"] == backend and r["who"] == "flux"}
        assert set(flux) == FILTERS | {"none"}
        for name in FILTERS:
            bound = TARGET_EXCLUDED_RECALL if name in EXCLUDED else TARGET_RECALL
            assert flux[name]["recall"] >= bound, f"{backend} {name}: recall {flux[name]['recall']}"
            assert sum(flux[name]["strategies"].values()) == 60
        for name in BY_IDS:  # the same ids left out, by hash: the same answers
            assert flux[name + HASHED]["recall"] == flux[name]["recall"], name
            assert flux[name + HASHED]["strategies"] == flux[name]["strategies"], name
        served = {r["scenario"]: r for r in rows if r["backend"] == backend and r["who"] == "flux-grpc"}
        assert set(served) == FILTERS | {"none"}
        assert all(served[name + HASHED]["recall"] == served[name]["recall"] for name in BY_IDS)
        library = {r["scenario"] for r in rows if r["backend"] == backend and r["who"].startswith("library")}
        assert not {name for name in library if name.endswith(HASHED)}  # the library takes labels
        # What each call cost the server: read in clock ticks, so one short pass may show none.
        cpu = [r["server_cpu_ms"] for r in served.values()]
        assert all(ms >= 0 for ms in cpu), cpu
        assert sum(cpu) > 0, cpu
        assert all(r["p50_ms"] > 0 for r in rows if r["backend"] == backend)
        selectivity = {name: flux[name]["selectivity"] for name in FILTERS - {"mixed"} - EXCLUDED}
        for wanted in SELECTIVITIES:
            assert abs(selectivity[f"{wanted:.1%}"] - wanted) <= wanted * 0.25
    assert {"flux", "flux-grpc", "library", "library-filter"} <= {r["who"] for r in rows if r["backend"] == "hnsw"}
    _library_tuned_where_its_default_missed(rows)
    for backend in NATIVE:
        assert sum(r["strategies"].get("native_filter", 0) for r in rows if r["backend"] == backend) > 0
    assert not any("native_filter" in r["strategies"] for r in rows if r["backend"] not in NATIVE)
    names = {(t["backend"], t["name"]) for t in results["targets"]}
    assert ("hnsw", "p50 at 1% / unfiltered (flux)") in names
    for wanted in SELECTIVITIES:  # token filters on hnsw: a latency line per selectivity, in-process and served
        assert {("hnsw", f"p50 at {wanted:.1%} / unfiltered ({who})") for who in ("flux", "flux-grpc")} <= names
    assert all(t["passed"] for t in results["targets"] if t["name"].startswith("recall"))
    assert "targets (each from this one run)" in printed
    assert "PASS" in printed
    # The server on CPUs of its own and this process, its client, on others while it called it; back after.
    assert sorted(os.sched_getaffinity(0)) == before
    pinning = results["pinning"]
    if len(before) >= 2:
        assert pinning["mode"] == "pinned"
        assert not set(pinning["server_cpus"]) & set(pinning["client_cpus"])
        assert {p["role"] for p in pinning["processes"]} == {"server", "client"}
        for process in pinning["processes"]:
            assert process["cpus"] == pinning[f"{process['role']}_cpus"], process
        assert "client (this process, one call at a time) on CPUs" in printed
    assert "over a second pass of the same calls" in printed  # how srv cpu is read here, not under load


def _library_tuned_where_its_default_missed(rows: list[dict]) -> None:
    """Where the library's own filter missed the recall target at the backend's default setting, a
    ``library-tuned`` row shows it at a deeper one: meeting the target, or at the deepest tried."""
    library = {(r["backend"], r["scenario"], r["who"]): r for r in rows if r["who"].startswith("library-")}
    missed = {
        (backend, scenario)
        for (backend, scenario, who), r in library.items()
        if who == "library-filter" and r["recall"] < recall_target(backend, scenario) and scenario != "mixed"
    }
    tuned = {(backend, scenario) for backend, scenario, who in library if who == "library-tuned"}
    assert tuned == missed
    assert any(backend in NATIVE for backend, _ in tuned)  # faiss's default beam misses with the nearest left out
    for backend, scenario in tuned:
        row = library[backend, scenario, "library-tuned"]
        [(setting, count)] = [(name, n) for name, n in row["strategies"].items() if name != "failed"]
        name, value = setting.split()
        assert count + row["strategies"].get("failed", 0) == row["queries"]
        assert int(value) >= 16, setting  # at least one doubling of the smallest default (faiss-ivf's 8 lists)
        # Every list read with the bitmap is exact: an inverted file always meets the target in the end.
        assert row["recall"] >= recall_target(backend, scenario) or (name != "nprobe" and int(value) == DEEPEST_BEAM)


def test_a_larger_set_leaves_out_as_many_ids_not_a_larger_share() -> None:
    """A user's history does not grow with the catalogue, and a query carries at most 10,000 ids: at
    twice the 200,000 items the exclusion scenarios keep their counts (they scaled to 20,000 before,
    which the server refuses)."""
    n = 2 * EXCLUDED_OF
    rng = np.random.default_rng(0)
    base = rng.random((n, 2), dtype=np.float32)
    items = Items(
        [], rng.integers(0, BUCKETS, n), rng.random((n, MARKETS)) < 0.5, np.zeros(n, np.bool_), rng.integers(0, 50, n)
    )
    sizes = {
        s.name: max(len(f.exclude_ids) + len(f.exclude_id_hashes) for f in s.filters)
        for s in scenarios(items, base, base[:2], seed=0)
    }
    for name, size in (("excl-1k", 1_000), ("excl-10k", 10_000), ("played-10k", 10_000)):
        assert sizes[name] == sizes[name + HASHED] == size
    assert max(sizes.values()) <= MAX_EXCLUDE_IDS
