"""Worker processes (server.workers): forked after the supervisor loaded the indexes, they share them.

Memory is read from /proc/<pid>/smaps_rollup: Pss counts a page shared by n processes 1/n in
each, so the sum over the server's processes is what they take together.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from flux.core.serving import preload
from flux.core.serving.index_settings import IndexSettings
from flux.core.serving.manager import IndexManager
from flux_bench.procs import process_tree
from flux_client import FluxClient
from flux_core.storage import artifact
from tests import support

FLUX = [sys.executable, "-m", "flux"]


def memory(pid: int) -> dict[str, int]:
    """The kB figures of one process's smaps_rollup (Rss, Pss, Private_Dirty, ...)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {key: int(kb) for key, kb in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)}


@contextmanager
def serving(config: Path, workers: int) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`flux serve` until every worker has reported ready; SIGTERM afterwards."""
    process = subprocess.Popen([*FLUX, "serve", "--config", str(config), "--workers", str(workers)],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stderr is not None
    address, ready, seen = "", 0, []
    try:
        for line in process.stderr:
            seen.append(line)
            if match := re.search(r"listening on (\S+)", line):
                address = match.group(1)
            ready += " ready: 1 indexes serving" in line
            if ready == workers:
                break
        assert address, "".join(seen)
        assert ready == workers, "".join(seen)
        yield address, process
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_two_workers_share_the_hnsw_index_loaded_before_they_were_forked(tmp_path: Path) -> None:
    vectors = np.random.default_rng(7).standard_normal((100_000, 128)).astype(np.float32)
    support.build_artifact(tmp_path / "tracks" / "1", vectors, backend="hnsw", metric="l2", name="tracks",
                           params={"M": 8, "ef_construction": 20})  # fmt: skip
    index_kb = (tmp_path / "tracks" / "1" / "index.hnsw").stat().st_size // 1024
    queries = vectors[:400] + 0.1
    in_process = artifact.load(tmp_path / "tracks" / "1")
    expected = [[f"item:{label:06d}" for label in row] for row in in_process.backend.search(queries, 3, {"ef": 64})[0]]
    in_process.backend.close()
    config = tmp_path / "flux.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: 0}}\nindexes: [{{name: tracks, path: {tmp_path / 'tracks'}}}]\n"
    )
    total_pss = {}
    for workers in (2, 1):
        with serving(config, workers) as (address, process):
            for connection in range(8):  # separate connections, which the kernel spreads over the workers
                with FluxClient(address) as client:
                    for row in range(connection, 400, 8):
                        assert (
                            client.search("tracks", queries[row], k=3, params={"ef": 64}).ids.tolist() == expected[row]
                        )
            tree = process_tree(process.pid)
            assert len(tree) == workers + (workers > 1)  # the supervisor, and a process per worker
            if workers > 1:
                for worker in tree[1:]:
                    mine = memory(worker)
                    # The index's pages are the supervisor's, shared: a worker that loaded its own
                    # copy would hold all of index_kb privately.
                    assert mine["Private_Clean"] + mine["Private_Dirty"] < index_kb / 2, (mine, index_kb)
            total_pss[workers] = sum(memory(pid)["Pss"] for pid in tree)
    assert total_pss[2] <= 1.4 * total_pss[1], total_pss


def free_port_pair() -> int:
    """A port P with P + 1 free too, for two workers' metrics (worker n listens on P + n)."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port


def active_version(metrics_port: int, index: str) -> float:
    return support.scrape(metrics_port).get(("flux_index_active_version", frozenset({("index", index)})), 0.0)


def test_forked_workers_each_swap_to_a_version_published_after_they_started(tmp_path: Path) -> None:
    base, queries = support.dataset(2000, 16)
    source = tmp_path / "tracks"
    support.build_artifact(source / "1", base, backend="hnsw", metric="l2", name="tracks")
    metrics = free_port_pair()
    config = tmp_path / "flux.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: 0, metrics_port: {metrics}}}\n"
        f"indexes: [{{name: tracks, path: {source}, poll_seconds: 0.2}}]\n"
    )
    with serving(config, 2) as (address, _):
        assert [active_version(metrics + n, "tracks") for n in (0, 1)] == [1.0, 1.0]  # both took the preloaded one
        support.build_artifact(tmp_path / "staging", base[:1500], backend="hnsw", metric="l2", name="tracks",
                               version=2)  # fmt: skip
        (tmp_path / "staging").rename(source / "2")
        deadline = time.monotonic() + 60
        while [active_version(metrics + n, "tracks") for n in (0, 1)] != [2.0, 2.0]:
            assert time.monotonic() < deadline, "the workers did not both serve version 2 within 60 s"
            time.sleep(0.1)  # polling the workers' own report, bounded by the deadline
        for _ in range(4):  # fresh connections, spread over the workers: every one answers from version 2
            with FluxClient(address) as client:
                assert client.search("tracks", queries[0], k=3).version == 2


def test_a_manager_takes_the_preloaded_artifact_and_refuses_one_replaced_since(tmp_path: Path) -> None:
    base, _ = support.dataset(500, 16)
    source = tmp_path / "tracks"
    support.build_artifact(source / "1", base, backend="hnsw", metric="l2", name="tracks")
    support.build_artifact(source / "2", base[:400], backend="hnsw", metric="l2", name="tracks", version=2)
    settings = IndexSettings("tracks", source)
    try:
        assert preload.load([settings]) == 1  # the newest version only: the policy keeps one
        preloaded = preload._loaded[source / "2"]
        manager = IndexManager(settings)
        manager.refresh()
        with manager.acquire() as served:
            assert served.version == 2
            assert served.backend is preloaded.backend  # taken, not read again
        manager.close()

        preload.load([settings])
        stale = preload._loaded[source / "2"]
        changed = replace(stale.manifest, count=stale.manifest.count + 1)
        assert preload.take(source / "2", changed) is None  # a different artifact now: load it afresh
        assert preload.take(source / "2", artifact.read_manifest(source / "2")) is None  # taken once only
    finally:
        preload.forget()
