"""`flux config check` refuses what the server would refuse about writes, with the server's own message:
writes to a path that is a bare artifact (the index fails to load), and writes to an immutable backend
(every write fails). It starts nothing and writes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tests import support
from tests.test_ops import _flux
from tests.test_writes import code_of, serving


def check(tmp_path: Path, *indexes: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "flux.yaml"
    config.write_text(json.dumps({"indexes": list(indexes)}))
    return _flux("config", "check", str(config))


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def vectors(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)


def test_writes_to_a_bare_artifact_are_refused_as_the_server_refuses_them(tmp_path: Path) -> None:
    support.build_artifact(tmp_path / "single", vectors(20), backend="exact", metric="l2", name="single")
    index = {"name": "single", "path": str(tmp_path / "single"), "writes": {"enabled": True}}
    before = files(tmp_path)
    result = check(tmp_path, index)
    assert result.returncode == 1, result.stdout
    prefix = "flux config check: indexes[0].writes: "
    assert result.stderr.startswith(prefix), result.stderr
    message = result.stderr.removeprefix(prefix).strip()
    assert message.startswith("index 'single' takes writes, so its path must be a directory of numbered versions")
    assert files(tmp_path) == sorted([*before, "flux.yaml"])

    with serving(index) as (_, client):  # the server loads nothing and says the same
        code, details = code_of(client.nearest, "single", vectors(1)[0])
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert message.replace(f"{tmp_path}/", "") in details  # a client sees paths from the index's folder on


def test_writes_to_an_immutable_backend_are_refused_as_each_write_would_be(tmp_path: Path) -> None:
    support.build_artifact(tmp_path / "trees" / "1", vectors(20), backend="annoy", metric="l2", name="trees")
    index = {"name": "trees", "path": str(tmp_path / "trees"), "poll_seconds": 0, "writes": {"enabled": True}}
    before = files(tmp_path)
    result = check(tmp_path, index)
    assert result.returncode == 1, result.stdout
    message = result.stderr.removeprefix("flux config check: indexes[0].writes: ").strip()
    assert message.startswith("index 'trees' uses the annoy backend, which is immutable: build a new version")
    assert files(tmp_path) == sorted([*before, "flux.yaml"])  # no write-ahead log made

    with serving(index) as (_, client):  # the server serves it, and refuses every write with the same message
        code, details = code_of(client.upsert, "trees", ["x"], vectors(1))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert message in details


def test_an_empty_source_is_checked_against_the_backend_the_server_would_create_it_with(tmp_path: Path) -> None:
    (tmp_path / "fresh").mkdir()
    fresh = {"name": "fresh", "path": str(tmp_path / "fresh"), "dimension": 8, "metric": "l2"}
    result = check(tmp_path, {**fresh, "backend": "annoy", "writes": {"enabled": True}})
    assert result.returncode == 1
    assert "indexes[0].writes: index 'fresh' uses the annoy backend, which is immutable" in result.stderr
    assert files(tmp_path / "fresh") == []  # the server would make version 1; a check does not

    result = check(tmp_path, {**fresh, "backend": "hnsw", "writes": {"enabled": True}})
    assert result.returncode == 0, result.stderr
    assert files(tmp_path / "fresh") == []


def test_writes_to_a_folder_of_versions_of_a_mutable_backend_pass(tmp_path: Path) -> None:
    support.build_artifact(tmp_path / "songs" / "1", vectors(20), backend="exact", metric="l2", name="songs")
    before = files(tmp_path)
    result = check(tmp_path, {"name": "songs", "path": str(tmp_path / "songs"), "writes": {"enabled": True}})
    assert result.returncode == 0, result.stderr
    assert f"songs        {tmp_path / 'songs'}: versions 1 (latest)" in result.stdout
    assert files(tmp_path) == sorted([*before, "flux.yaml"])
