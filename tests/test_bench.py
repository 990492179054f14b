"""``flux bench serving``: a small end-to-end run, and the data it is measured on.

Timings are never asserted (this machine is shared); what is asserted is that every mode
ran, the table and JSON are complete and sane, Flux answered exactly as the library, the
servers and the clients ran on the CPUs they were given, and CPU time was counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from flux.cli import main
from flux_bench import data
from flux_bench.placement import Placement, from_arguments
from flux_bench.procs import Child, cpu_seconds, cpu_set, format_cpus, parse_cpus
from flux_bench.report import Row, merge, operating_value, targets
from flux_bench.serving import PRESETS
from flux_bench.serving_stream import WINDOW
from flux_core.backend import Metric
from flux_core.errors import InvalidArgument
from tests.support import brute_force, build_artifact
from tests.test_cli import ENV, FLUX, flux

MODES = {
    "library",
    "library-batch",
    "echo",
    "bare",
    "bare-batch",
    "flux-unary",
    "flux-batch",
    "echo-stream",
    "flux-stream",
}
CPUS = sorted(os.sched_getaffinity(0))
QUICK_QUERIES = PRESETS["quick"].settings[0].data.queries


def test_serving_quick_run_prints_table_targets_and_writes_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "results.json", tmp_path / "recall-qps.png"
    run = ["bench", "serving", "--preset", "quick", "--count", "2000", "--seconds", "0.3", "--clients", "2"]
    shape = ["--batch", "16", "--sweep", "hnsw=32", "--sweep", "annoy=100", "--threads", "2", "--workers", "2"]
    code = main([*run, *shape, "--work-dir", str(tmp_path / "work"), "--json", str(out), "--plot", str(plot)])
    printed = capsys.readouterr()
    assert code in (0, 1)  # 1 means a performance target failed; this test does not judge speed

    results = json.loads(out.read_text())
    rows = results["rows"]
    for backend in ("hnsw", "annoy"):
        mine = [r for r in rows if r["backend"] == backend]
        assert {r["mode"] for r in mine} == MODES
        assert all(r["qps"] > 0 and r["queries"] > 0 for r in mine)
        assert all(0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in mine)
        assert {r["workers"] for r in mine if r["mode"] == "flux-unary"} == {1, 2}
        assert {(r["load"], r["workers"]) for r in mine if r["mode"].endswith("-stream")} == {(2, 2)}  # beside unary
        for batches in ("bare-batch", "flux-batch"):  # the target's 2 calls in flight, and 1 beside it
            assert sorted(r["load"] for r in mine if r["mode"] == batches) == [1, 2]
        searched = [r for r in mine if not r["mode"].startswith("echo")]
        assert all(r["queries"] >= QUICK_QUERIES for r in searched)  # each recall is over every query
        assert all(0.0 <= r["recall"] <= 1.0 for r in searched)
        assert {r["value"] for r in searched} == ({32.0} if backend == "hnsw" else {100.0})
        assert all(r["same_as_library"] == 1.0 for r in mine if r["mode"].startswith("flux"))
        library_recall = {r["recall"] for r in mine if r["mode"] == "library"}
        bare = {r["recall"] for r in mine if r["mode"].startswith("bare")}
        assert bare <= library_recall  # it searches the same index
        assert any(r["rss_mib"] for r in mine if r["mode"].startswith("flux"))
        assert any(r["rss_mib"] for r in mine if r["mode"].startswith("library"))
        for r in mine:  # every side's CPU was counted over its measured calls
            assert 0 < r["cpu_us_per_call"] < math.inf, r
            assert r["cpu_us_per_query"] * r["batch"] == pytest.approx(r["cpu_us_per_call"], rel=0.01)
        names = {t["name"] for t in results["targets"] if t["backend"] == backend}
        assert {
            "batch 16 QPS",
            "unary QPS, 2 clients",
            "unary p50, 1 client",
            "unary p50, 1 client, vs bare",
            "unary server CPU per call",
            "server memory, 1 worker",
            "server memory, 2 workers",
            "StreamSearch server CPU per query",
            "StreamSearch QPS, 2 streams",
        } <= names
        identical = next(t for t in results["targets"] if t["backend"] == backend and "identical" in t["name"])
        assert identical["passed"], identical  # every answer of a stream is the one Search gave
        workers = next(t for t in results["targets"] if t["backend"] == backend and t["name"].endswith("2 workers"))
        assert 0 < workers["ceiling"] < workers["measured"] < 2 * workers["ceiling"]  # shared, not twice one
        batch = next(t for t in results["targets"] if t["backend"] == backend and t["name"] == "batch 16 QPS")
        in_flight = next(r for r in mine if r["mode"] == "flux-batch" and r["load"] == 2)
        assert batch["measured"] == pytest.approx(in_flight["qps"], rel=0.01)  # judged with 2 calls in flight
        cpu_target = next(t for t in results["targets"] if t["backend"] == backend and "CPU" in t["name"])
        assert cpu_target["ratio"] == pytest.approx(cpu_target["measured"] / cpu_target["ceiling"])
    assert max(r["recall"] for r in rows if r["backend"] == "hnsw" and r["mode"] == "library") > 0.9

    pinning = results["pinning"]
    if len(CPUS) >= 2:  # pinned by default: servers and library on one set, clients on another
        assert pinning["mode"] == "pinned"
        server, clients = set(pinning["server_cpus"]), set(pinning["client_cpus"])
        assert server
        assert clients
        assert not server & clients
        placed = pinning["processes"]
        assert {p["role"] for p in placed} == {"server", "library", "clients"}
        assert len({p["pid"] for p in placed if p["name"] == "load clients"}) == 2
        assert len({p["pid"] for p in placed if p["name"] == "stream clients"}) == 2
        for p in placed:  # as read back from every thread of every process
            assert set(p["cpus"]) <= (clients if p["role"] == "clients" else server), p
        for name in ("flux (2 workers)", "bare (2 workers)", "echo (2 workers)", "flux-stream (2 workers)"):
            assert sum(p["name"].endswith(name) for p in placed) >= 3, name  # the server and its 2 workers
        assert f"pinned: servers and the in-process library on CPUs {format_cpus(server)}" in printed.out
    else:
        assert pinning["mode"] == "shared"

    assert "flux-unary (2 clients, 2 workers)" in printed.out
    # A stream's p50 is mostly its window's queueing: the label says how many queries each client keeps in flight.
    assert f"flux-stream (2 clients, {WINDOW} in flight each, 2 workers)" in printed.out
    assert re.search(
        r"hnsw: Search vs StreamSearch at ef=32 .*\n.*\necho, 2 clients, 2 workers .*\nFlux, 2 clients", printed.out
    )
    assert "CPU µs/call" in printed.out
    assert re.search(r"hnsw: CPU per query at ef=32, µs .*\n.*Flux / bare\nSearch, 1 client ", printed.out)
    assert "targets (each ratio from this one run)" in printed.out
    assert "PASS" in printed.out or "FAIL" in printed.out
    assert "library" in printed.err  # progress lines
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_embeddings_are_seeded_and_shaped() -> None:
    first = data.embeddings(500, 24, clusters=8, latent=4, seed=3)
    assert first.shape == (500, 24)
    assert first.dtype == np.float32
    assert np.array_equal(first, data.embeddings(500, 24, clusters=8, latent=4, seed=3))
    assert not np.array_equal(first, data.embeddings(500, 24, clusters=8, latent=4, seed=4))


def test_synthetic_ground_truth_is_exact_and_cached(tmp_path: Path) -> None:
    spec = data.Synthetic("t", 800, 16, latent=4, queries=20)
    first = data.synthetic(spec, 5, cache=tmp_path)
    expected, _ = brute_force(first.base, first.queries, Metric.L2, 5)
    assert np.array_equal(np.sort(first.truth, axis=1), np.sort(expected, axis=1))
    assert len(list(tmp_path.glob("truth-*.npy"))) == 1
    again = data.synthetic(spec, 5, cache=tmp_path)
    assert np.array_equal(again.truth, first.truth)


def test_reads_ann_benchmarks_hdf5(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")  # the bench extra, part of dev
    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((300, 8)), rng.standard_normal((10, 8))
    truth, _ = brute_force(train, test, Metric.COSINE, 20)
    path = tmp_path / "tiny-angular.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "angular"
        f["train"], f["test"], f["neighbors"] = train, test, truth
    loaded = data.from_files(path, None, Metric.L2, 10)
    assert loaded.metric is Metric.COSINE
    assert loaded.base.shape == (300, 8)
    assert loaded.base.dtype == np.float32
    assert np.array_equal(loaded.truth, truth[:, :10])


def test_hdf5_without_train_names_the_missing_dataset(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        f["test"] = np.zeros((2, 3))
    with pytest.raises(InvalidArgument, match="no train dataset"):
        data.from_files(path, None, Metric.L2, 10)


def test_npy_and_fvecs_hold_out_queries(tmp_path: Path) -> None:
    vectors = np.random.default_rng(1).standard_normal((1100, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    records = np.hstack([np.full((1100, 1), 6, "<i4").view("<f4"), vectors]).astype("<f4")
    records.tofile(tmp_path / "v.fvecs")
    for name in ("v.npy", "v.fvecs"):
        loaded = data.from_files(tmp_path / name, None, Metric.L2, 10)
        assert loaded.base.shape == (100, 6)
        assert loaded.queries.shape == (1000, 6)
        np.testing.assert_array_equal(loaded.queries, vectors[100:])
    with pytest.raises(InvalidArgument, match="too few"):
        data.from_files(tmp_path / "v.npy", None, Metric.L2, 10, holdout=1100)


def test_recall_counts_true_neighbours_found() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert data.recall(np.array([[3, 2, 1], [4, 9, 8]]), truth, 3) == pytest.approx(4 / 6)


def test_operating_point_is_the_cheapest_value_reaching_the_recall_target() -> None:
    def lib(value: float, recall: float) -> Row:
        return Row("s", "hnsw", "library", 1, 1, "ef", value, 10, 1.0, 10.0, 1.0, 1.0, 1.0, recall)

    assert operating_value([lib(64, 0.99), lib(16, 0.90), lib(32, 0.96)]) == 32
    assert operating_value([lib(16, 0.80), lib(32, 0.90)]) == 32  # never reached: the best there is


def test_the_batch_target_takes_two_calls_in_flight_or_one_with_one_client() -> None:
    def at(mode: str, load: int, qps: float, recall: float = 0.96) -> Row:
        return Row("s", "hnsw", mode, load, 256 if "batch" in mode else 1, "ef", 24, 1000, 1.0, qps, 1.0, 1.0, 1.0,
                   recall)  # fmt: skip

    rows = [at("library", 1, 10_000.0), at("library-batch", 1, 10_000.0), at("flux-batch", 1, 8_000.0)]
    two = [*rows, at("flux-batch", 2, 9_500.0)]
    [batch] = [t for t in targets(two, "s", "hnsw", clients=8, threads=1) if t.name == "batch 256 QPS"]
    assert (batch.ratio, batch.passed) == (0.95, True)
    assert "1 call in flight: Flux 0.80" in batch.detail
    [alone] = [t for t in targets(rows, "s", "hnsw", clients=1, threads=1) if t.name == "batch 256 QPS"]
    assert (alone.ratio, alone.passed) == (0.8, False)  # one client process: one call in flight is all there is


def test_serve_with_two_workers_answers_on_one_port_and_stops_cleanly(tmp_path: Path) -> None:
    """`flux serve --workers 2`: both workers load, queries get answers, SIGTERM stops all of them."""
    vectors = np.random.default_rng(5).standard_normal((300, 8)).astype(np.float32)
    build_artifact(tmp_path / "idx", vectors, backend="annoy", metric="l2", name="idx")
    (tmp_path / "flux.yaml").write_text(f"indexes:\n  - name: idx\n    path: {tmp_path / 'idx'}\n")
    command = [*FLUX, "serve", "--config", str(tmp_path / "flux.yaml"), "--port", "0", "--workers", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=ENV)
    assert process.stderr is not None
    address, ready, seen = "", 0, []
    try:
        for line in process.stderr:  # the supervisor logs the address; each worker logs "ready" once loaded
            seen.append(line)
            if match := re.search(r"listening on (\S+) with 2 worker processes", line):
                address = match.group(1)
            ready += " ready: " in line
            if ready == 2:
                break
        assert address, "".join(seen)
        for seed in (1, 2):  # separate processes, so separate connections
            answer = json.loads(flux("query", "--target", address, "--index", "idx", "--random", "--seed", str(seed),
                                     "--json").stdout)  # fmt: skip
            assert len(answer["neighbors"]) == 10
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_repeated_measurements_merge_into_medians() -> None:
    def run(qps: float, p50: float, rss: float | None, same: float) -> Row:
        return Row("s", "hnsw", "flux-unary", 8, 1, "ef", 32, 100, 1.0, qps, p50, p50, p50, 0.9, rss, same, 2)

    other = replace(run(5.0, 9.0, None, 1.0), value=64)
    merged = merge([run(100.0, 1.0, None, 1.0), other, run(900.0, 3.0, 50.0, 0.99), run(300.0, 2.0, None, 1.0)])
    assert len(merged) == 2
    assert merged[1] == other
    assert (merged[0].qps, merged[0].p50_ms, merged[0].rss_mib) == (300.0, 2.0, 50.0)
    assert merged[0].same_as_library == 0.99
    assert merged[0].queries == 300


def _report_affinity(conn: Connection) -> None:
    """A child's CPU set, and that of a thread it starts after being pinned."""
    seen: list[set[int]] = []
    thread = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    thread.start()
    thread.join()
    conn.send((os.sched_getaffinity(0), seen[0]))
    conn.recv()


@pytest.mark.skipif(len(CPUS) < 2, reason="pinning to a subset needs two CPUs")
def test_a_pinned_child_and_its_threads_stay_on_their_cpus() -> None:
    child = Child(_report_affinity, name="pinned", cpus={CPUS[-1]})
    try:
        main_thread, later_thread = child.recv(timeout=60)
        assert main_thread == later_thread == {CPUS[-1]}
        assert cpu_set(child.pid) == [CPUS[-1]]  # read from the parent, over every thread
    finally:
        child.close()


def test_cpu_seconds_counts_this_process_burning_cpu() -> None:
    before, started = cpu_seconds([os.getpid()]), time.process_time()
    while time.process_time() - started < 0.2:  # spin: user time, in this process
        sum(range(1000))
    assert 0.15 <= cpu_seconds([os.getpid()]) - before <= 10
    assert cpu_seconds([2**22 + 1]) == 0.0  # no such process: nothing counted


def test_cpu_lists_parse_and_print_as_taskset_writes_them() -> None:
    assert parse_cpus("0-1,3") == {0, 1, 3}
    assert parse_cpus(" 2 ") == {2}
    assert format_cpus({0, 1, 3, 5, 6, 7}) == "0-1,3,5-7"
    for bad in ("", "a", "3-1", "1-", "-1"):
        with pytest.raises(ValueError, match="CPU"):
            parse_cpus(bad)


def _flags(server: str | None = None, clients: str | None = None, shared: bool = False) -> argparse.Namespace:
    return argparse.Namespace(server_cpus=server, client_cpus=clients, shared_cpus=shared)


def _place(flags: argparse.Namespace) -> Placement:
    return from_arguments(flags, "flux bench serving")


def test_cpu_placement_flags() -> None:
    shared = _place(_flags(shared=True))
    assert (shared.server, shared.clients) == (None, None)
    with pytest.raises(SystemExit, match="--shared-cpus pins nothing"):
        _place(_flags(server="0", shared=True))
    with pytest.raises(SystemExit, match="not a CPU list"):
        _place(_flags(server="x"))
    with pytest.raises(SystemExit, match="not within"):
        _place(_flags(server=str(max(CPUS) + 1)))
    if len(CPUS) < 2:
        assert _place(_flags()).server is None  # one CPU: nothing to split
        return
    default = _place(_flags())
    assert default.server == set(CPUS[: len(CPUS) // 2])  # on two CPUs: the server on the first
    assert default.clients == set(CPUS[len(CPUS) // 2 :])
    only_server = _place(_flags(server=str(CPUS[-1])))
    assert only_server.clients == set(CPUS) - {CPUS[-1]}
    with pytest.raises(SystemExit, match="share CPUs"):
        _place(_flags(server=str(CPUS[0]), clients=format_cpus(CPUS)))
