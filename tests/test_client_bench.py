"""``flux bench client`` runs end to end on a small index and reports consistent figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux.cli import main


def test_the_client_benchmark_prints_a_table_and_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "client.json"
    argv = ["bench", "client", "--count", "600", "--dimension", "16", "--calls", "60", "--library-seconds", "0.2"]
    code = main([*argv, "--json", str(out)])

    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    steps = {s["name"]: s for s in result["steps"]}
    encode = steps["encode: numpy vector -> request bytes"]
    decode = steps["decode: response bytes -> numpy ids, distances"]
    round_trip = steps["round trip: FluxClient.search"]
    assert "encode + decode" in printed
    assert f"{round_trip['p50_us']:>9.1f}" in printed
    assert all(s["calls"] > 0 and s["p50_us"] > 0 for s in steps.values())
    assert 0 < result["ratios"]["client_share"] < 1
    assert result["ratios"]["client_share"] == pytest.approx(
        (encode["p50_us"] + decode["p50_us"]) / round_trip["p50_us"], abs=1e-3
    )
    assert code == (0 if result["target"]["passed"] else 1)
    assert result["target"]["passed"] == (result["ratios"]["client_share"] <= 0.10)
    assert result["settings"]["dimension"] == 16
