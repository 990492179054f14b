"""`flux bench build` and `flux bench writes` take any registered backend, not a fixed list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flux.cli import main
from flux_backends.exact import ExactBackend
from flux_core.storage import registry


class BenchPlugin(ExactBackend):
    name = "bench-plugin"


@pytest.fixture
def plugin() -> Iterator[str]:
    registry.register(BenchPlugin.name, BenchPlugin)
    try:
        yield BenchPlugin.name
    finally:
        registry.unregister(BenchPlugin.name)


def test_bench_build_measures_a_plugin_and_voyager_against_their_own_build_and_save(
    tmp_path: Path, plugin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "build.json"
    args = ["-n", "400", "--dim", "8", "--threads", "1", "--repeat", "1", "--out", str(out)]
    code = main(["bench", "build", "--backend", plugin, "--backend", "voyager", "--backend", "hnsw", *args])
    assert code in (0, 1)  # 1 when a ratio misses the target: timings of 400 vectors are noise
    rows = {row["backend"]: row for row in json.loads(out.read_text())["results"]}
    assert [rows[name]["baseline"] for name in (plugin, "voyager", "hnsw")] == [
        "backend build and save",
        "backend build and save",
        "library",
    ]
    assert rows["voyager"]["params"] == {"M": 16, "ef_construction": 200, "seed": 1}
    for row in rows.values():
        assert row["library_seconds"] > 0
        assert row["flux_seconds"] > 0
    table = capsys.readouterr().out
    assert "bench-plugin" in table
    assert "(library: backend build and save)" in table


def test_bench_writes_runs_on_voyager_and_refuses_an_immutable_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "writes.json"
    args = ["--base", "200", "--dim", "8", "--seconds", "0.3", "--writers", "1", "--only", "unary:1"]
    assert main(["bench", "writes", "--backend", "voyager", *args, "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["backend"], r["commit"]) for r in runs] == [("voyager", "group"), ("voyager", "fsync per write")]
    assert all(r["writes"] > 0 for r in runs)
    capsys.readouterr()

    assert main(["bench", "writes", "--backend", "annoy", *args, "--out", str(tmp_path / "no.json")]) == 2
    error = capsys.readouterr().err
    assert "flux bench writes: backend 'annoy' is immutable and takes no writes; writable backends: " in error
    assert "voyager" in error.rsplit("writable backends: ", 1)[1]
    assert not (tmp_path / "no.json").exists()
