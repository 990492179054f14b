"""`flux bench swap` end to end, on a tiny index: versions swap under load, a corrupt one is refused
while the kept version keeps answering, none fails or mixes, rollback runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flux.cli import main
from flux_bench.swap import verdict


# exact is none of the bench's defaults: any installed backend is accepted. One run paces its load.
@pytest.mark.parametrize(
    ("backend", "gate", "rate"), [("annoy", "default", None), ("hnsw", "recommended", None), ("exact", "default", 150)]
)
def test_bench_swap_swaps_under_load_prints_the_table_and_writes_json(
    backend: str, gate: str, rate: int | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "swap.json"
    args = ["--backend", backend, "--gate", gate, "-n", "2000", "--dim", "16", "--clients", "2", "--seconds", "1.5"]
    code = main(["bench", "swap", *args, "--swaps", "2", "--out", str(out), *(["--rate", str(rate)] if rate else [])])
    report = json.loads(out.read_text())
    (result,) = report["results"]
    pinned = len(os.sched_getaffinity(0)) >= 2
    assert report["pinning"]["mode"] == ("pinned" if pinned else "shared")
    assert 0 <= result["server_busy_before"] <= 2.5  # CPU seconds per second: one CPU, or two shared (+ noise)
    if rate:  # 1.5 s before each of 2 swaps, the corrupt version and the end: 6 s at most at the set pace
        assert result["requests"] <= rate * 6 + 2, "the clients did not keep to --rate"
    assert (report["gate"], result["backend"], result["swaps"], result["failed"]) == (gate, backend, 2, 0)
    assert result["mixed_answers"] == (0 if gate == "default" else None)  # shared ids: mixing cannot show
    assert result["requests_during"] > 0 < result["p99_before_ms"]
    assert len(result["swap_seconds"]) == 2
    assert result["swap_seconds_max"] < 1.5, "each version was answering before the next one appeared"
    assert result["kept_requests"] > 0, "no request named the kept version while the corrupt one was refused"
    assert result["kept_not_found"] == 0
    assert 0 <= result["bad_refused_seconds"] < 1.5
    assert result["rolled_back_to"] == 2  # from version 3, the last good one, to the one kept beside it
    assert 0 < result["rollback_seconds"] < 10
    if gate == "recommended":
        assert {"1", "2", "3"} <= set(result["gate_recall_overlap"]), "every good version passed the canary"
    assert all(result["load_seconds"][str(version)] > 0 for version in (1, 2, 3)), result["load_seconds"]
    # Latency targets on a tiny index are noise: only that the report and the exit code agree is checked.
    met = all(verdict(result).values())
    assert result["targets"] == verdict(result)
    assert code == (0 if met else 1)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(backend))
    assert row.endswith("PASS") if met else "FAIL (" in row
