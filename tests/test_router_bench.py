"""``flux bench router``: a short run of a Search through a router over 4 shards against a direct Search
and against the client fanning out to the 4 shards itself.

Timings are never asserted (this machine is shared); what is asserted is that every mode ran, the
router answered as brute force (the bench checks it before timing), each mode's CPU time went where
it should, and the table, the target line and the JSON are complete and agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux.cli import main


def test_bench_router_prints_table_target_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "router.json"
    run = ["bench", "router", "-n", "2000", "--dim", "8", "--seconds", "0.3", "--warmup", "0.1"]
    code = main([*run, "--work-dir", str(tmp_path / "work"), "--json", str(out)])
    printed = capsys.readouterr().out

    result = json.loads(out.read_text())
    assert code == (0 if result["passed"] else 1)  # 1 means the target was missed; this test does not judge speed
    assert (result["count"], result["dim"], result["shards"], result["clients"]) == (2000, 8, 4, 1)
    for mode in ("direct", "fanout", "router"):
        row = result[mode]
        assert row["calls"] > 0
        assert row["qps"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert set(row["cpu_ms_per_call"]) == {"client", "router", "shards"}
        assert all(cpu >= 0 for cpu in row["cpu_ms_per_call"].values())
        assert row["cpu_ms_per_call"]["shards"] > 0  # every mode asks the shards
    assert result["router"]["cpu_ms_per_call"]["router"] > 0  # only the router mode goes through it
    assert result["router_over_fanout_p50_ms"] == pytest.approx(result["router"]["p50_ms"] - result["fanout"]["p50_ms"])
    assert result["target"]["router_p50_ms_at_most"] == pytest.approx(result["direct"]["p50_ms"] + 1.0)
    assert result["passed"] == (result["router"]["p50_ms"] <= result["target"]["router_p50_ms_at_most"])
    assert "direct (shard 0 of 4)" in printed
    assert "fan-out (4 shards, no router)" in printed
    assert "router (4 shards)" in printed
    assert f"{result['router']['p50_ms']:.3f}" in printed
    assert "target: router p50 <= direct p50 + 1 ms" in printed
    own = result["router"]["p50_ms"] - result["fanout"]["p50_ms"]
    assert result["router_over_fanout_passed"] == (own <= 1.0)
    assert f"the router's own hop: router p50 - fan-out p50 <= 1 ms: {own:.3f}" in printed
