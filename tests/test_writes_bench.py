"""`flux bench writes` end to end, on a tiny index: it measures, prints its table and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux.cli import main


def test_bench_writes_prints_the_table_and_the_ratios_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "writes.json"
    args = ["--backend", "exact", "--base", "200", "--seconds", "0.3", "--writers", "1"]
    code = main(["bench", "writes", *args, "--only", "stream:1", "--only", "unary:1000", "--out", str(out)])
    assert code == 0  # no scenario of 8 writers ran, so no target was judged (the ratios are noise here)
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [(r["rpc"], r["batch"], r["writers"], r["commit"]) for r in runs] == [
        ("stream", 1, 1, "group"),
        ("stream", 1, 1, "fsync per write"),
        ("unary", 1000, 1, "group"),
        ("unary", 1000, 1, "fsync per write"),
    ]
    for run in runs:
        assert run["writes"] > 0
        assert run["vectors"] == run["writes"] * run["batch"]
        assert run["vectors_per_second"] > 0
    assert [(r["rpc"], r["ratio"] > 0, r["target"]) for r in report["ratios"]] == [
        ("stream", True, None),
        ("unary", True, None),
    ]
    table = capsys.readouterr().out
    assert "upsert throughput with fsync: 200 x 64 base" in table
    assert "group commit / one fsync per write (vectors/s)" in table
    assert "exact   stream batch    1 x 1 writers:" in table
