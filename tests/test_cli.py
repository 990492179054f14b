"""The `flux` command end to end: build, inspect, and serve + query + health as separate processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from flux_core.backend import Metric
from flux_core.errors import InvalidArgument
from flux_core.storage import builder

FLUX = [sys.executable, "-m", "flux"]
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def flux(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*FLUX, *args], capture_output=True, text=True, timeout=120, env={**ENV, **env})
    if check:
        assert result.returncode == 0, result.stderr
    return result


@contextmanager
def serving(*args: str, **env: str) -> Iterator[str]:
    """Run `flux serve` on a free port (unless ``env`` names one); yield its address once it reports ready;
    SIGTERM it afterwards."""
    port = [] if "FLUX_SERVER__PORT" in env else ["--port", "0"]
    process = subprocess.Popen([*FLUX, "serve", *port, *args], stderr=subprocess.PIPE, text=True, env={**ENV, **env})
    assert process.stderr is not None
    address, seen = "", []
    try:
        for line in process.stderr:  # the server logs its address, then "ready" once indexes are loaded
            seen.append(line)
            if match := re.search(r"listening on (\S+)", line):
                address = match.group(1)
            if " ready: " in line:
                break
        assert address, "".join(seen)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_build_inspect_serve_query(tmp_path: Path) -> None:
    vectors = np.random.default_rng(3).standard_normal((500, 16)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    (tmp_path / "ids.txt").write_text("".join(f"song:{i}\n" for i in range(500)))
    built = flux(
        "build",
        str(tmp_path / "vectors.npy"),
        "--ids",
        str(tmp_path / "ids.txt"),
        "--out",
        str(tmp_path / "songs"),
        "--backend",
        "annoy",
        "--metric",
        "cosine",
        "-p",
        "n_trees=8",
    )
    assert "built" in built.stderr
    assert "500 items" in built.stderr

    inspected = json.loads(flux("inspect", "--json", str(tmp_path / "songs")).stdout)
    manifest = inspected["manifest"]
    assert inspected["stats"]["items"] == 500
    assert inspected["stats"]["n_trees"] == 8
    assert "verified" in flux("inspect", str(tmp_path / "songs")).stdout
    assert (manifest["name"], manifest["backend"], manifest["count"], manifest["dimension"]) == (
        "songs",
        "annoy",
        500,
        16,
    )
    assert manifest["build_params"]["n_trees"] == 8

    (tmp_path / "flux.yaml").write_text("indexes:\n  - name: songs\n    path: songs\n")
    with serving("--config", str(tmp_path / "flux.yaml")) as address:
        assert flux("health", "--target", address).stdout.strip() == "SERVING"
        result = flux("query", "--target", address, "--index", "songs", "--id", "song:7", "-k", "5", "--json")
        answer = json.loads(result.stdout)
        assert answer["index"] == "songs"
        assert answer["version"] == 1
        assert len(answer["neighbors"]) == 5
        assert "song:7" not in [n["id"] for n in answer["neighbors"]]
        missing = flux("query", "--target", address, "--index", "nope", "--random", check=False)
        assert missing.returncode == 1
        assert "NOT_FOUND" in missing.stderr


def test_serve_without_a_config_builds_and_serves_the_demo(tmp_path: Path) -> None:
    with serving("--demo-dir", str(tmp_path)) as address:
        assert (tmp_path / "demo" / "manifest.json").exists()
        table = flux("query", "--target", address, "--random", "-k", "10").stdout.splitlines()
        assert table[0] == "index demo version 1: 10 neighbours"
        assert len([line for line in table[2:] if line.split()[1].startswith("track:")]) == 10
        assert flux("health", "--target", address, "--service", "flux.index.demo").stdout.strip() == "SERVING"


def test_environment_overrides_apply_to_the_demo_config_too(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serving("--demo-dir", str(tmp_path), FLUX_SERVER__PORT=str(port), FLUX_LIMITS__MAX_K="7") as address:
        assert address == f"127.0.0.1:{port}"
        refused = flux("query", "--target", address, "--random", "-k", "8", check=False)
        assert refused.returncode == 1
        assert "k must be between 1 and 7" in refused.stderr
        assert flux("query", "--target", address, "--random", "-k", "7").stdout.startswith("index demo version 1: 7")


def test_make_run_takes_a_port() -> None:
    def command(*args: str) -> list[str]:
        done = subprocess.run(["make", "-n", "run", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if "flux serve" in line]

    assert command("PORT=50052") == [".venv/bin/flux serve --port 50052"]
    assert [line.rstrip() for line in command()] == [".venv/bin/flux serve"]


def test_health_of_one_index_sends_the_token_in_flux_token_when_auth_is_on(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.random.default_rng(5).standard_normal((50, 4)).astype(np.float32))
    flux("build", str(tmp_path / "v.npy"), "--out", str(tmp_path / "a"), "--backend", "exact")
    digest = hashlib.sha256(b"probe-token-5e1").hexdigest()
    (tmp_path / "flux.yaml").write_text(
        f"auth: {{tokens: [{{name: probe, role: reader, sha256: {digest}}}]}}\nindexes: [{{name: a, path: a}}]\n"
    )
    with serving("--config", str(tmp_path / "flux.yaml")) as address:
        assert flux("health", "--target", address).stdout.strip() == "SERVING"  # the server's health stays open
        one = ("health", "--target", address, "--service", "flux.index.a")
        refused = flux(*one, check=False, FLUX_TOKEN="")
        assert refused.returncode == 1
        assert refused.stderr.startswith("flux health: UNAUTHENTICATED: the health of one index")
        assert flux(*one, FLUX_TOKEN="probe-token-5e1").stdout.strip() == "SERVING"


def test_build_refuses_bad_parameters_with_a_clear_message(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones((10, 4), np.float32))
    result = flux("build", str(tmp_path / "v.npy"), "--out", str(tmp_path / "x"), "-p", "M=1", check=False)
    assert result.returncode == 2
    assert "params.M must be between 2 and 200, got 1" in result.stderr
    assert not (tmp_path / "x").exists()
    result = flux("build", str(tmp_path / "v.npy"), "--out", str(tmp_path / "x"), "-p", "M:16", check=False)
    assert result.returncode == 2
    assert "parameter 'M:16' must look like NAME=NUMBER, e.g. M=32" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("value", "said"),
    [(np.nan, "v.npy: row 7 contains NaN or Inf"), (1e30, "vectors row 7 has a squared norm of inf in float32")],
)
def test_build_refuses_vectors_the_server_would_refuse(tmp_path: Path, value: float, said: str) -> None:
    """A NaN or a huge vector would reach the index silently (hnswlib ranks NaN distances as it
    likes, distances to a huge one overflow float32); the builder refuses it as the server
    refuses such a query or upsert, whoever calls it."""
    vectors = np.ones((10, 4), np.float32)
    vectors[7, 2] = value
    np.save(tmp_path / "v.npy", vectors)
    result = flux("build", str(tmp_path / "v.npy"), "--out", str(tmp_path / "x"), check=False)
    assert result.returncode == 2
    assert said in result.stderr
    assert not (tmp_path / "x").exists()
    with pytest.raises(InvalidArgument, match=r"^vectors row 7 (contains NaN or Inf|has a squared norm)"):
        builder.build(tmp_path / "y", vectors, None, backend="hnsw", metric=Metric.L2, name="x")
    assert not (tmp_path / "y").exists()


def test_inspect_refuses_a_corrupt_artifact(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32))
    flux("build", str(tmp_path / "v.npy"), "--out", str(tmp_path / "a"), "--backend", "exact")
    data = bytearray((tmp_path / "a" / "vectors.npy").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "a" / "vectors.npy").write_bytes(bytes(data))
    result = flux("inspect", str(tmp_path / "a"), check=False)
    assert result.returncode == 2
    assert "vectors.npy: checksum mismatch" in result.stderr


@pytest.mark.parametrize(
    ("key", "extra"),
    [("port", ""), ("port", ", workers: 2"), ("metrics_port", ""), ("health_port", "")],
)
def test_serve_on_a_busy_port_prints_one_line_naming_it_and_exits_3(tmp_path: Path, key: str, extra: str) -> None:
    with socket.socket() as holder:  # another process's listener, as far as the server can tell
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"port": 0, key: busy}
        config = tmp_path / "flux.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, {', '.join(f'{k}: {v}' for k, v in ports.items())}{extra}}}\nindexes: []\n"
        )
        result = flux("serve", "--config", str(config), check=False)
    assert result.returncode == 3, result.stderr
    expected = f"flux serve: cannot listen on 127.0.0.1:{busy} (server.{key}): address already in use"
    assert result.stderr.splitlines() == [expected]  # no traceback, no log line from gRPC's C core


def test_serving_loads_no_benchmark_code_and_flux_bench_comes_from_its_own_distribution() -> None:
    """flux-bench adds `flux bench` through the flux.commands entry point; the server never imports it."""
    for command in (["-c", "import flux.server"], ["-m", "flux", "serve", "--help"]):
        run = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True, check=True)
        imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if "|" in line]
        assert "flux.server" in imported or command[-1] == "--help"
        assert not [m for m in imported if m.split(".")[0] == "flux_bench"], command
    listed = flux("--help")
    assert "bench" in listed.stdout
    assert "flux-bench" in listed.stdout
    modes = flux("bench", "--help")
    assert modes.returncode == 0
    assert "serving" in modes.stdout
    assert "swap" in modes.stdout
