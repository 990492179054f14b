"""``flux bench-sharded``: a small run of the sharded Beam build against `flux build`, through .venv-beam's command.

Timings are never asserted (this machine is shared); what is asserted is that both builds ran on the
same data and were checked, and that the table, the ratio and the JSON are complete and agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux.cli import main

BEAM_COMMAND = Path(__file__).resolve().parent.parent / ".venv-beam" / "bin" / "flux-build-sharded"


def test_bench_sharded_times_both_builds_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not BEAM_COMMAND.exists():
        pytest.fail(f"{BEAM_COMMAND} is missing: `make install` makes .venv-beam")
    out, work = tmp_path / "sharded.json", tmp_path / "work"
    run = ["bench-sharded", "-n", "6000", "--dim", "16", "--shards", "4", "-p", "M=8", "-p", "ef_construction=32"]
    code = main([*run, "--beam-command", str(BEAM_COMMAND), "--work-dir", str(work), "--out", str(out)])
    printed = capsys.readouterr().out

    result = json.loads(out.read_text())
    assert code == (0 if result["passed"] else 1)  # 1 means the target was missed; this test does not judge speed
    assert (result["n"], result["dim"], result["shards"], result["backend"]) == (6000, 16, 4, "hnsw")
    assert result["params"] == {"M": 8, "ef_construction": 32, "seed": 100}
    flux_build, beam = result["flux_build"], result["beam"]
    assert flux_build["seconds"] > 0
    assert beam["seconds"] > beam["pipeline_seconds"] > 0  # the command's wall time holds the pipeline's
    assert result["ratio"] == pytest.approx(beam["seconds"] / flux_build["seconds"])
    assert result["passed"] == (result["ratio"] <= result["target"] == 1.3)
    assert flux_build["peak_rss_bytes"] > 0
    assert beam["shard_peak_rss_bytes"] > beam["shard_added_rss_bytes"] > 0
    one = result["one_shard"]
    assert one["peak"] >= one["before"] > 0
    assert one["vectors_bytes"] == 1500 * 16 * 4
    assert one["artifact_bytes"] > one["vectors_bytes"]

    assert "flux build (" in printed
    assert "flux-build-sharded, 4 shards (" in printed
    assert f"ratio (sharded / flux build): {result['ratio']:.2f}  target <= 1.30" in printed
    assert "one shard (1,500 vectors, 1 thread) in a fresh process: peak RSS" in printed
    assert sorted(p.name for p in work.iterdir() if p.is_dir()) == ["one"]  # both builds checked, then removed
