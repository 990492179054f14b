"""`flux bench swap` end to end, on a tiny index: versions swap under load, none fails or mixes, rollback runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux.cli import main


def test_bench_swap_swaps_under_load_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "swap.json"
    args = ["--backend", "annoy", "-n", "2000", "--dim", "16", "--clients", "2", "--seconds", "1.5", "--swaps", "2"]
    code = main(["bench", "swap", *args, "--out", str(out)])
    (result,) = json.loads(out.read_text())["results"]
    assert (result["backend"], result["swaps"], result["failed"], result["mixed_answers"]) == ("annoy", 2, 0, 0)
    assert result["requests_during"] > 0 < result["p99_before_ms"]
    assert result["swap_seconds"] < 1.5, "each version was answering before the next one appeared"
    assert result["rolled_back_to"] == 2  # from version 3, the last published, to the one before
    assert 0 < result["rollback_seconds"] < 10
    verdict = "PASS" if result["ratio"] <= 2 else "FAIL"  # a ratio on a tiny index is noise: only its report is checked
    assert code == (0 if verdict == "PASS" else 1)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("annoy"))
    assert row.endswith(verdict)
