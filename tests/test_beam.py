"""The Beam pipeline (flux-beam) end to end: real pipelines on the DirectRunner's batch engine with
two worker processes, real backends, real files.

These run in .venv-beam (`make pytest` runs them after the main suite; `make install` makes it):
Apache Beam pins protobuf below 7 and the server's generated code needs 7, so Beam cannot share
.venv. Where a check is the server side's (`flux inspect`, the version machinery), it runs .venv's
Python in a subprocess. The runner is named ``FnApiRunner`` with the DirectRunner's own options
(``--direct_running_mode multi_processing --direct_num_workers 2``): that is the engine the
DirectRunner runs batch pipelines on, named so that it does not first try to download the Prism
runner.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam", reason="runs in .venv-beam (`make pytest`): Beam needs protobuf<7")

import pyarrow as pa  # noqa: E402 - after the skip: only .venv-beam has them
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from flux_beam import BuildShardedVersion, Columns, ReadEmbeddings  # noqa: E402
from flux_beam.cli import main as build_command  # noqa: E402
from flux_core.backend import Metric  # noqa: E402
from flux_core.errors import ArtifactError  # noqa: E402
from flux_core.storage import artifact, builder, sharded  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
#: The DirectRunner's batch engine with two worker processes.
RUNNER = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
#: Modest hnsw parameters: the 200,000-vector build stays well under two minutes on two cores.
PARAMS = {"M": 12, "ef_construction": 64}
EF = 64
STAGING = re.compile(r"^\.1\.sharded-[0-9a-f]{12}$")


def clustered(n: int, dimension: int, *, seed: int) -> np.ndarray:
    """Vectors around 64 centres of uneven weight, overlapping: like real embeddings, hard enough for ANN."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dimension)).astype(np.float32)
    weights = rng.dirichlet(np.full(64, 2.0))
    noise = rng.standard_normal((n, dimension)).astype(np.float32)
    return np.ascontiguousarray(centres[rng.choice(64, size=n, p=weights)] + noise, dtype=np.float32)


def write_parquet(path: Path, vectors: np.ndarray, ids: list[str], **columns: list[Any]) -> None:
    vector = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    pq.write_table(pa.table({"id": ids, "vector": vector, **columns}), path, row_group_size=16_384)


def run(read: ReadEmbeddings, build: BuildShardedVersion) -> dict[str, Any]:
    """Run read | build on two worker processes; return the committed ``flux`` metrics."""
    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER))
    _ = pipeline | read | build
    result = pipeline.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_namespace("flux"))
    metrics: dict[str, Any] = {}
    for counter in found["counters"]:  # a counter updated in two steps is reported once per step
        metrics[counter.key.metric.name] = metrics.get(counter.key.metric.name, 0) + counter.committed
    metrics.update({d.key.metric.name: d.committed for d in found["distributions"]})
    return metrics


def command(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m flux_beam build ...`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "flux_beam", "build", *args, *RUNNER],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def main_venv(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Python code in .venv (the server's environment), for the checks that are the server side's."""
    if not MAIN_PYTHON.exists():
        pytest.fail(f"{MAIN_PYTHON} is missing: `make install` makes .venv and .venv-beam")
    return subprocess.run([str(MAIN_PYTHON), "-c", code, *args], capture_output=True, text=True, timeout=300)


def shard_ids(folder: Path, manifest: sharded.ShardedManifest) -> list[list[str]]:
    return [json.loads((folder / s.path / artifact.IDS).read_text()) for s in manifest.shards]


def top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 neighbours (squared distances, in float64): (rows, distances), nearest first."""
    q, x = queries.astype(np.float64), vectors.astype(np.float64)
    distances = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
    rows = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(distances, rows, axis=1)


def merge(answers: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Merge per-shard (ids, distances) answers into the k nearest ids per query."""
    ids = np.concatenate([a[0] for a in answers], axis=1)
    distances = np.concatenate([a[1] for a in answers], axis=1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


@dataclass
class Big:
    folder: Path
    vectors: np.ndarray
    queries: np.ndarray
    ids: list[str]
    manifest: sharded.ShardedManifest
    metrics: dict[str, Any]
    seconds: float


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Big:
    """200,000 x 128 vectors from Parquet, built by the pipeline into a 4-shard hnsw version."""
    root = tmp_path_factory.mktemp("big")
    data = clustered(200_200, 128, seed=1)
    vectors, queries = data[:200_000], data[200_000:]
    ids = [f"track:{i:06d}" for i in range(200_000)]
    write_parquet(root / "tracks.parquet", vectors, ids)
    started = time.perf_counter()
    metrics = run(
        ReadEmbeddings(str(root / "tracks.parquet")),
        BuildShardedVersion(str(root / "tracks"), name="tracks", version=1, shards=4, backend="hnsw", params=PARAMS),
    )
    seconds = time.perf_counter() - started
    folder = root / "tracks" / "1"
    return Big(folder, vectors, queries, ids, sharded.read(folder), metrics, seconds)


def test_a_four_shard_hnsw_version_of_200000_vectors_from_parquet(big: Big) -> None:
    manifest = big.manifest
    assert (manifest.name, manifest.version, manifest.backend, manifest.count) == ("tracks", 1, "hnsw", 200_000)
    assert manifest.sharding == sharded.Sharding(shards=4, function="sha256-mod", key="id")
    assert manifest.build_params == {**PARAMS, "seed": 100}
    assert manifest.built_by["runner"] == "FnApiRunner"
    assert manifest.built_by["apache-beam"] == beam.__version__

    reports = sharded.verify(big.folder, open_shards=True)  # every checksum, count, and the sharding
    assert [r.stats["items"] for r in reports if r.stats] == [s.count for s in manifest.shards]

    held = shard_ids(big.folder, manifest)
    for index, ids in enumerate(held):  # each shard holds exactly the ids its hash names
        assert set(sharded.assign(ids, 4).tolist()) == {index}
    every = [i for ids in held for i in ids]
    assert len(every) == 200_000
    assert set(every) == set(big.ids)
    sizes = [len(ids) for ids in held]
    assert max(sizes) / min(sizes) <= 1.05, sizes

    assert big.metrics["items_read"] == 200_000
    assert big.metrics["items_indexed"] == 200_000  # as each shard's build reported it
    assert big.metrics["shards_built"] == 4
    manifest_bytes = (big.folder / sharded.MANIFEST).stat().st_size
    assert big.metrics["bytes_written"] == manifest.bytes + manifest_bytes
    assert big.metrics["shard_items"].count == 4
    assert big.metrics["shard_items"].sum == 200_000
    assert big.metrics["shard_peak_rss_bytes"].min > big.metrics["shard_added_rss_bytes"].max > 0
    assert [p.name for p in big.folder.parent.iterdir()] == ["1"]  # the staging folder is gone

    # The server's side verifies it as well: `flux inspect` from .venv.
    inspected = main_venv(
        "import sys; from flux.cli import main; sys.exit(main(['inspect', '--json', sys.argv[1]]))", str(big.folder)
    )
    assert inspected.returncode == 0, inspected.stderr
    assert [s["count"] for s in json.loads(inspected.stdout)["shards"]] == sizes
    print(
        f"\n200,000 x 128 in 4 shards (M={PARAMS['M']}, ef_construction={PARAMS['ef_construction']}): "
        f"pipeline {big.seconds:.1f}s, shard sizes {sizes}, "
        f"shard peak RSS {big.metrics['shard_peak_rss_bytes'].max / 2**20:.0f} MiB in a worker process, "
        f"the build adding up to {big.metrics['shard_added_rss_bytes'].max / 2**20:.0f} MiB"
    )


def test_merged_shards_answer_as_one_index_does(big: Big, tmp_path: Path) -> None:
    k = 10
    truth_rows, _ = top_k(big.queries, big.vectors, k)
    truth = np.array(big.ids, dtype=object)[truth_rows]

    exact, approximate = [], []
    for shard, ids in zip(big.manifest.shards, shard_ids(big.folder, big.manifest), strict=True):
        loaded = artifact.load(big.folder / shard.path)
        names = np.array(ids, dtype=object)
        stored = loaded.backend.get_vectors(np.arange(len(ids), dtype=np.int64))  # the shard's own vectors
        rows, distances = top_k(big.queries, stored, k)
        exact.append((names[rows], distances))
        labels, found = loaded.backend.search(big.queries, k, {"ef": EF})
        approximate.append((names[labels], found.astype(np.float64)))
        loaded.backend.close()
    merged_exact = merge(exact, k)
    assert merged_exact.tolist() == truth.tolist()  # exact over each shard, merged == exact over all

    single = builder.build(
        tmp_path / "single",
        big.vectors,
        big.ids,
        backend="hnsw",
        metric=Metric.L2,
        name="tracks",
        params=PARAMS,
        threads=2,
    )
    assert single.build_params == big.manifest.build_params
    whole = artifact.load(tmp_path / "single")
    labels, _ = whole.backend.search(big.queries, k, {"ef": EF})
    single_recall = recall(np.array(big.ids, dtype=object)[labels], truth)
    sharded_recall = recall(merge(approximate, k), truth)
    whole.backend.close()
    print(f"\nrecall@{k} at ef={EF}: 4 merged shards {sharded_recall:.4f}, one index {single_recall:.4f}")
    assert sharded_recall >= single_recall - 0.005


def test_a_killed_build_leaves_no_version_and_a_rerun_publishes_it(tmp_path: Path) -> None:
    vectors = clustered(80_000, 64, seed=2)
    write_parquet(tmp_path / "docs.parquet", vectors, [f"doc:{i}" for i in range(80_000)])
    source = tmp_path / "docs"
    args = [str(tmp_path / "docs.parquet"), "--out", str(source), "--version", "1", "--shards", "4"]
    args += ["-p", "M=12", "-p", "ef_construction=64"]
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_beam", "build", *args, *RUNNER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its worker processes too, so that one kill ends them all
        env={**os.environ, "TMPDIR": str(tmp_path)},  # where the killed workers leave their local shard builds
    )
    try:
        deadline = time.monotonic() + 180
        staged: list[Path] = []
        while not staged and process.poll() is None and time.monotonic() < deadline:
            staged = sorted(source.glob(".1.sharded-*/*/shard-*/manifest.json")) if source.exists() else []
            time.sleep(0.02)  # polling the staging folder for the first whole shard artifact
        assert staged, f"no shard artifact appeared (pipeline exit code {process.poll()})"
        assert process.poll() is None, "the pipeline finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)

    # Killed with at least one shard artifact staged: no version is visible.
    assert all(STAGING.match(p.name) for p in source.iterdir()), list(source.iterdir())
    with pytest.raises(ArtifactError, match=r"sharded\.json: missing"):
        sharded.read(source / "1")
    seen = main_venv(
        "import sys; from pathlib import Path; from flux.core.serving import versions; "
        "p = Path(sys.argv[1]); print(versions.scan(p), versions.folders(p), versions.strays(p))",
        str(source),
    )
    assert seen.stdout.strip() == "{} {} []", seen.stderr

    # As if a publish had been killed too: one staged shard already moved into the version folder.
    shard = staged[0].parent
    (source / "1").mkdir()
    shard.rename(source / "1" / shard.name.split(".")[0])
    seen = main_venv(
        "import sys; from pathlib import Path; from flux.core.serving import versions; "
        "print(versions.scan(Path(sys.argv[1])))",
        str(source),
    )
    assert seen.stdout.strip() == "{}", seen.stderr

    rerun = command(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(r"^  items read +80,000$", rerun.stdout, re.M), rerun.stdout
    assert re.search(r"^  shards built +4$", rerun.stdout, re.M), rerun.stdout
    assert re.search(r"^  bytes written +[1-9][\d,]*$", rerun.stdout, re.M), rerun.stdout
    assert [p.name for p in source.iterdir()] == ["1"]  # the killed run's staging is cleared
    manifest = sharded.read(source / "1")
    assert manifest.count == 80_000
    assert sum(r.count for r in sharded.verify(source / "1")) == 80_000
    assert f"at {source / '1'}: 4 shards, 80,000 items" in rerun.stdout


def test_a_third_party_backend_plugin_builds_the_shards(tmp_path: Path) -> None:
    """examples/flux-backend-ivf, installed in .venv-beam like any plugin: found by name in the workers."""
    vectors = clustered(3000, 16, seed=3)
    lines = []
    for i, vector in enumerate(vectors.tolist()):
        item: dict[str, Any] = {"id": f"doc:{i}", "vector": vector}
        if i % 3 == 0:
            item["restricts"] = {"lang": ["en" if i % 2 else "sv"]}
        if i % 5 == 0:
            item["crowding_tag"] = f"site:{i % 11}"
        lines.append(json.dumps(item))
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    metrics = run(
        ReadEmbeddings(str(tmp_path / "docs.jsonl"), block_rows=500),
        BuildShardedVersion(
            str(tmp_path / "docs"), name="docs", version=1, shards=3, backend="ivf", params={"nlist": 8}
        ),
    )
    folder = tmp_path / "docs" / "1"
    manifest = sharded.read(folder)
    assert manifest.backend == "ivf"
    assert manifest.library.startswith("flux-backend-ivf")
    assert manifest.build_params["nlist"] == 8
    assert metrics["shards_built"] == 3
    sharded.verify(folder, open_shards=True)
    queries = clustered(20, 16, seed=4)
    for shard, ids in zip(manifest.shards, shard_ids(folder, manifest), strict=True):
        loaded = artifact.load(folder / shard.path)
        assert loaded.manifest.backend == "ivf"
        assert {artifact.ATTRIBUTES, artifact.FILTER_VECTORS} <= set(loaded.manifest.files)
        assert loaded.attributes is not None
        labels, _ = loaded.backend.search(queries, 5, {"nprobe": 8})  # every list probed: exact
        rows, _ = top_k(queries, vectors[[int(i.split(":")[1]) for i in ids]], 5)
        assert labels.tolist() == rows.tolist()
        loaded.backend.close()


def test_npy_input_a_shard_key_column_and_empty_shards(tmp_path: Path) -> None:
    vectors = clustered(500, 8, seed=5)
    np.save(tmp_path / "v.npy", vectors)
    built = command(str(tmp_path / "v.npy"), "--out", str(tmp_path / "n"), "--version", "1", "--shards", "2",
                    "--backend", "exact", "--block-rows", "64")  # fmt: skip
    assert built.returncode == 0, built.stderr
    manifest = sharded.read(tmp_path / "n" / "1")
    sharded.verify(tmp_path / "n" / "1")
    held = shard_ids(tmp_path / "n" / "1", manifest)
    assert sorted(int(i) for ids in held for i in ids) == list(range(500))  # row numbers are the ids
    loaded = artifact.load(tmp_path / "n" / "1" / manifest.shards[0].path)
    rows = np.array([int(i) for i in held[0]])
    assert np.array_equal(loaded.backend.get_vectors(np.arange(len(rows), dtype=np.int64)), vectors[rows])

    # Sharded by tenant: a tenant's items all land in one shard, and the keys are kept to verify it.
    tenants = [f"tenant:{i % 13}" for i in range(500)]
    write_parquet(tmp_path / "t.parquet", vectors, [f"doc:{i}" for i in range(500)], tenant=tenants)
    run(
        ReadEmbeddings(str(tmp_path / "t.parquet"), columns=Columns(key="tenant")),
        BuildShardedVersion(str(tmp_path / "t"), name="t", version=1, shards=3, backend="exact", shard_key="tenant"),
    )
    keyed = sharded.read(tmp_path / "t" / "1")
    assert keyed.sharding.key == "tenant"
    assert all(s.keys is not None for s in keyed.shards)
    sharded.verify(tmp_path / "t" / "1")
    for index, ids in enumerate(shard_ids(tmp_path / "t" / "1", keyed)):
        assert {sharded.shard_of(tenants[int(i.split(":")[1])], 3) for i in ids} == {index}

    # Five items in eight shards: the shards no item hashes to are built empty, and still verify.
    np.save(tmp_path / "few.npy", vectors[:5])
    assert command(str(tmp_path / "few.npy"), "--out", str(tmp_path / "f"), "--version", "1", "--shards", "8",
                   "--backend", "exact").returncode == 0  # fmt: skip
    few = sharded.read(tmp_path / "f" / "1")
    assert sum(s.count for s in few.shards) == 5
    assert [s.count for s in few.shards].count(0) >= 3
    assert len(sharded.verify(tmp_path / "f" / "1")) == 8


def test_refusals_leave_nothing_visible(tmp_path: Path) -> None:
    vectors = clustered(200, 8, seed=6)
    ids = [f"doc:{i % 150}" for i in range(200)]  # 50 ids twice, the second time with another tenant
    names = [f"t{n}" for n in range(20)]
    first, second = names[0], next(t for t in names if sharded.shard_of(t, 2) != sharded.shard_of(names[0], 2))
    tenants = [first if i < 150 else second for i in range(200)]
    write_parquet(tmp_path / "dup.parquet", vectors, ids, tenant=tenants)
    failed = command(str(tmp_path / "dup.parquet"), "--out", str(tmp_path / "d"), "--version", "1", "--shards", "2",
                     "--backend", "exact")  # fmt: skip
    assert failed.returncode == 1
    assert re.search(r"the pipeline failed: id 'doc:\d+' appears more than once", failed.stderr), failed.stderr
    assert not (tmp_path / "d" / "1").exists()
    # Sharded by a key column, one id can land in two shards: the ids are counted across shards.
    failed = command(str(tmp_path / "dup.parquet"), "--out", str(tmp_path / "d"), "--version", "1", "--shards", "2",
                     "--backend", "exact", "--shard-key", "tenant")  # fmt: skip
    assert failed.returncode == 1
    assert re.search(r"id 'doc:\d+' appears more than once \(50 ids do\)", failed.stderr), failed.stderr
    assert not (tmp_path / "d" / "1" / sharded.MANIFEST).exists()

    np.save(tmp_path / "v.npy", vectors)
    ok = command(str(tmp_path / "v.npy"), "--out", str(tmp_path / "v"), "--version", "1", "--shards", "2",
                 "--backend", "exact")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    again = command(str(tmp_path / "v.npy"), "--out", str(tmp_path / "v"), "--version", "1", "--shards", "2")
    assert again.returncode == 2
    assert f"flux-build-sharded: {tmp_path / 'v' / '1'} is a published version already" in again.stderr
    wrong = build_command([str(tmp_path / "v.npy"), "--out", str(tmp_path / "w"), "--version", "1", "--shards", "2",
                           "--backend", "nonesuch"])  # fmt: skip
    assert wrong == 2
    assert not (tmp_path / "w").exists()


@pytest.fixture(autouse=True)
def _no_beam_info_logs() -> Iterator[None]:
    import logging

    level = logging.getLogger("apache_beam").level
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    yield
    logging.getLogger("apache_beam").setLevel(level)
