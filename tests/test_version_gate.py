"""The activation gate's canary: exact, and reading every vector without long holds of the GIL
while the active version serves (how short they are is measured by ``flux bench swap``)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from flux.core.serving import gate
from flux.core.serving.index import ServedIndex
from flux_backends import hnsw_file
from flux_backends.hnsw import HnswBackend
from flux_core.backend import VECTORS_PER_BLOCK, Metric
from flux_core.quality import SINGLE_THREAD_PRODUCT, Nearest, _Products, brute_force, nearest_rows
from flux_core.storage import artifact, builder, registry
from flux_core.storage.attributes import ItemAttributes
from tests import support

N, DIM = 40_000, 16
CANARY = gate.GateConfig(warmup_queries=64, canary_queries=200, k=10, min_recall=0.9, min_overlap=0.5)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServedIndex, ServedIndex]:
    """Two hnsw versions of the same items, each a little moved: the second is the candidate."""
    root = tmp_path_factory.mktemp("gate")
    base = support.dataset(n=N, dimension=DIM, queries=1)[0]
    served = []
    for version in (1, 2):
        moved = base + np.random.default_rng(version).standard_normal(base.shape).astype(np.float32) * 0.01
        path = support.build_artifact(root / str(version), moved, backend="hnsw", metric="l2", version=version)
        served.append(ServedIndex("tracks", artifact.load(path)))
    return served[0], served[1]


def _stacked(blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The labels and vectors of ``blocks``, in label order."""
    labels = np.concatenate([labels for labels, _ in blocks])
    order = np.argsort(labels)
    return labels[order], np.concatenate([vectors for _, vectors in blocks])[order]


def test_the_canary_reads_an_hnsw_versions_vectors_from_its_file_a_few_thousand_at_a_time(
    versions: tuple[ServedIndex, ServedIndex],
) -> None:
    active, candidate = versions
    live = candidate.ids.live()
    blocks = list(candidate.backend.vector_blocks(live))
    # Reads of the index file (which release the GIL), not N / 256 calls of hnswlib's get_items.
    assert len(blocks) == -(-N // hnsw_file.ITEMS_PER_READ)
    labels, vectors = _stacked(blocks)
    np.testing.assert_array_equal(labels, live)
    np.testing.assert_array_equal(vectors, candidate.backend.get_vectors(live))

    report = gate.run(candidate, active, CANARY)
    assert report.passed, report.reason
    assert report.canary_queries == 200


def test_the_canary_recall_is_exact(versions: tuple[ServedIndex, ServedIndex]) -> None:
    _, candidate = versions
    queries = gate._sample(candidate, np.random.default_rng(3), 200)
    found, _ = candidate.nearest(queries, 10, candidate.default_params)
    live = candidate.ids.live()
    rows, _ = brute_force(candidate.backend.get_vectors(live), queries, Metric.L2, 10)  # float64, a full sort
    truth = live[rows]
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    recall = gate.exact_recall(candidate, queries, found)
    assert recall == pytest.approx(hits / found.size, abs=0.002)
    assert recall >= 0.9


def test_the_canary_puts_small_blocks_together_and_stays_exact(tmp_path: Path) -> None:
    base, _ = support.dataset(n=3000, dimension=DIM, queries=1, seed=4)
    path = support.build_artifact(tmp_path / "1", base, backend="annoy", metric="l2")
    index = ServedIndex("tracks", artifact.load(path))
    live = index.ids.live()
    assert max(len(labels) for labels, _ in index.backend.vector_blocks(live)) <= VECTORS_PER_BLOCK  # the default
    queries = gate._sample(index, np.random.default_rng(2), 50)
    found, _ = index.nearest(queries, 10, index.default_params)
    truth, _ = brute_force(base, queries, Metric.L2, 10)
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    assert gate.exact_recall(index, queries, found) == pytest.approx(hits / found.size, abs=0.002)


def _written(directory: Path, metric: Metric, n: int = 3000, dimension: int = 12) -> HnswBackend:
    """An hnsw index saved after deletes, and adds that took the deleted items' slots."""
    base = support.dataset(n=n, dimension=dimension, queries=1, seed=6)[0]
    backend = HnswBackend.build(base, metric, {"M": 8, "ef_construction": 64, "seed": 1})
    backend.delete(np.arange(0, n, 9))
    fresh = np.random.default_rng(1).standard_normal((20, dimension)).astype(np.float32)
    backend.add(fresh, np.arange(n, n + 20))
    directory.mkdir()
    backend.save(directory)
    return backend


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_hnsw_loads_its_index_file_as_hnswlib_load_index_does(metric: str, tmp_path: Path) -> None:
    written = _written(tmp_path / "index", Metric(metric))
    deleted = json.loads((tmp_path / "index" / "deleted.json").read_text())
    ours = HnswBackend.load(tmp_path / "index", 12, Metric(metric), len(written))
    theirs = hnswlib.Index(space=metric, dim=12)
    theirs.load_index(
        str(tmp_path / "index" / "index.hnsw"), max_elements=len(written) + len(deleted), allow_replace_deleted=True
    )
    mine, reference = ours._index.__getstate__()[0], theirs.__getstate__()[0]
    assert mine.keys() == reference.keys()
    for key in sorted(mine.keys() - {"seed", "num_threads"}):  # how later adds draw levels, and threads
        a, b = mine[key], reference[key]
        if key in ("label_lookup_external", "label_lookup_internal"):  # a hash map's order
            a, b = a[np.argsort(mine["label_lookup_external"])], b[np.argsort(reference["label_lookup_external"])]
        assert np.array_equal(a, b), key
    queries = support.dataset(n=1, dimension=12, queries=20, seed=8)[1]
    np.testing.assert_array_equal(ours.search(queries, 10, {"ef": 64})[0], written.search(queries, 10, {"ef": 64})[0])

    vacant = ours.stats()["deleted"]
    count = ours._index.get_current_count()
    ours.add(np.ones((vacant, 12), np.float32), np.arange(10_000, 10_000 + vacant))
    assert ours._index.get_current_count() == count, "new labels take the deleted items' slots after a load too"


def test_hnsw_loads_an_empty_index(tmp_path: Path) -> None:
    HnswBackend.build(np.empty((0, 4), np.float32), Metric.L2, {"M": 8, "ef_construction": 16, "seed": 1}).save(
        tmp_path
    )
    loaded = HnswBackend.load(tmp_path, 4, Metric.L2, 0)
    assert len(loaded) == 0
    assert list(loaded.vector_blocks(np.empty(0, np.int64))) == []
    loaded.add(np.arange(3, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32), np.arange(3))
    assert loaded.search(np.zeros((1, 4), np.float32), 2, {"ef": 16})[0].tolist() == [[0, 1]]


def test_hnsw_refuses_an_index_file_that_does_not_add_up(tmp_path: Path) -> None:
    _written(tmp_path / "index", Metric.L2, n=500)
    path = tmp_path / "index" / "index.hnsw"
    good = path.read_bytes()
    with pytest.raises(ValueError, match="holds 12-dimensional vectors, expected 13"):
        HnswBackend.load(tmp_path / "index", 13, Metric.L2, 480)
    path.write_bytes(good[:-4])
    with pytest.raises(ValueError, match="corrupt"):
        HnswBackend.load(tmp_path / "index", 12, Metric.L2, 480)
    layout = hnsw_file.IndexFile.open(tmp_path / "index" / "index.hnsw")
    first_count = hnsw_file.HEADER.size + layout.count * layout.record  # item 0's upper-level byte count
    path.write_bytes(good[:first_count] + (5).to_bytes(4, "little") + good[first_count + 4 :])
    with pytest.raises(ValueError, match="corrupt"):
        HnswBackend.load(tmp_path / "index", 12, Metric.L2, 480)


def test_hnsw_vector_blocks_follow_writes_and_refuse_labels_without_items(tmp_path: Path) -> None:
    written = _written(tmp_path / "index", Metric.L2)
    loaded = HnswBackend.load(tmp_path / "index", 12, Metric.L2, len(written))
    live = np.array(sorted(set(written._index.get_ids_list()) - written._deleted), np.int64)
    labels, vectors = _stacked(list(loaded.vector_blocks(live)))
    np.testing.assert_array_equal(labels, live)
    np.testing.assert_array_equal(vectors, loaded.get_vectors(live))
    with pytest.raises(KeyError, match="label 99999"):
        list(loaded.vector_blocks(np.append(live, 99_999)))

    loaded.add(np.full((1, 12), 7.0, np.float32), np.array([1]))  # the file no longer holds what the index does
    blocks = list(loaded.vector_blocks(live))
    assert max(len(labels) for labels, _ in blocks) <= VECTORS_PER_BLOCK  # from the index itself
    labels, vectors = _stacked(blocks)
    np.testing.assert_array_equal(vectors[np.searchsorted(labels, 1)], np.full(12, 7.0, np.float32))
    loaded.delete(np.array([2]))
    with pytest.raises(KeyError, match="label 2"):
        list(loaded.vector_blocks(live))


def test_hnsw_vector_blocks_read_the_index_only_when_its_file_was_replaced(tmp_path: Path) -> None:
    written = _written(tmp_path / "index", Metric.L2)
    loaded = HnswBackend.load(tmp_path / "index", 12, Metric.L2, len(written))
    live = np.array(sorted(set(written._index.get_ids_list()) - written._deleted), np.int64)
    path = tmp_path / "index" / "index.hnsw"
    shutil.copy(path, tmp_path / "copy")
    (tmp_path / "copy").replace(path)  # same bytes, another file
    blocks = list(loaded.vector_blocks(live))
    assert max(len(labels) for labels, _ in blocks) <= VECTORS_PER_BLOCK
    np.testing.assert_array_equal(_stacked(blocks)[1], loaded.get_vectors(live))


def test_the_default_vector_blocks_hold_every_label_once(tmp_path: Path) -> None:
    base = support.dataset(n=1000, dimension=8, queries=1, seed=2)[0]
    backend = registry.get("exact").build(base, Metric.L2, {})
    labels = np.random.default_rng(0).permutation(1000)[:700].astype(np.int64)
    blocks = list(backend.vector_blocks(labels))
    assert [len(block) for block, _ in blocks] == [256, 256, 188]
    got, vectors = _stacked(blocks)
    np.testing.assert_array_equal(got, np.sort(labels))
    np.testing.assert_array_equal(vectors, base[got])


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_blockwise_float32_nearest_ranks_as_float64_brute_force(metric: str) -> None:
    base, queries = support.dataset(n=5000, dimension=24, queries=100, seed=7)
    blocks = (base[start : start + 300] for start in range(0, len(base), 300))  # blocks that do not divide n
    ours = nearest_rows(blocks, queries, metric, 10)
    truth, _ = brute_force(base, queries, metric, 10)
    shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ours.tolist(), truth.tolist(), strict=True)])
    assert shared >= 0.999


@pytest.mark.parametrize(("queries", "dimension"), [(1, 24), (600, 512)])
def test_products_are_small_enough_for_one_thread_and_rank_as_brute_force(queries: int, dimension: int) -> None:
    base, held_out = support.dataset(n=2000, dimension=dimension, queries=queries, seed=9)
    products = _Products(held_out)
    groups, _, _, size = products._queries.shape
    assert products._rows * dimension * size <= SINGLE_THREAD_PRODUCT
    assert groups * size >= queries
    assert min(size, products._rows) >= 2  # numpy hands a product with one row or column to gemv
    np.testing.assert_allclose(products(base[:999]), held_out @ base[:999].T, rtol=1e-4, atol=1e-3)
    ours = nearest_rows((base[start : start + 999] for start in range(0, len(base), 999)), held_out, "l2", 10)
    truth, _ = brute_force(base, held_out, "l2", 10)
    shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ours.tolist(), truth.tolist(), strict=True)])
    assert shared >= 0.999


def test_nearest_keeps_the_k_nearest_when_a_block_holds_more_than_k_nearer_ones() -> None:
    nearest = Nearest(np.zeros((2, 1), np.float32), Metric.L2, 3)
    far, near = np.array([[5.0], [6.0], [7.0]], np.float32), np.array([[1.0], [4.0], [2.0], [3.0]], np.float32)
    nearest.add(np.array([50, 60, 70]), nearest.scores(far))
    nearest.add(np.array([10, 40, 20, 30]), nearest.scores(near))
    assert nearest.labels().tolist() == [[10, 20, 30], [10, 20, 30]]


def test_nearests_that_saw_different_blocks_merge_into_the_nearest_of_all() -> None:
    base, queries = support.dataset(n=3000, dimension=8, queries=30, seed=5)
    whole, halves = Nearest(queries, Metric.L2, 10), [Nearest(queries, Metric.L2, 10) for _ in range(2)]
    for start in range(0, len(base), 500):
        labels, block = np.arange(start, start + 500), base[start : start + 500]
        whole.add(labels, whole.scores(block))
        half = halves[start // 500 % 2]
        half.add(labels, half.scores(block))
    halves[0].merge(halves[1])
    assert halves[0].labels().tolist() == whole.labels().tolist()


@pytest.mark.parametrize("fail", [False, True])
def test_the_readers_end_and_errors_reach_every_ranking_thread(fail: bool) -> None:
    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, 100 * VECTORS_PER_BLOCK, VECTORS_PER_BLOCK):
            yield np.arange(start, start + VECTORS_PER_BLOCK), np.zeros((VECTORS_PER_BLOCK, 2), np.float32)
        if fail:
            raise KeyError("label 7 is not in the index")

    seen: list[int] = []
    failures: list[BaseException] = []

    def rank(reader: gate._Reader) -> None:
        try:
            while (block := reader.next()) is not None:
                seen.append(len(block[0]))
        except KeyError as exc:
            failures.append(exc)

    with gate._Reader(blocks()) as reader:
        threads = [threading.Thread(target=rank, args=(reader,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    per_block = gate.ROWS_PER_BLOCK // VECTORS_PER_BLOCK * VECTORS_PER_BLOCK  # small blocks put together
    whole, rest = divmod(100 * VECTORS_PER_BLOCK, per_block)
    assert sorted(seen) == ([] if fail else [rest]) + [per_block] * whole  # a failed read hands on no rest
    assert len(failures) == (3 if fail else 0)


def test_nearest_takes_blocks_in_any_order_and_pads_when_short() -> None:
    vectors = np.eye(3, dtype=np.float32) * np.array([[1.0], [2.0], [3.0]], np.float32)
    nearest = Nearest(np.zeros((1, 3), np.float32), Metric.L2, 5)
    for labels in (np.array([2]), np.array([0, 1])):
        nearest.add(labels, nearest.scores(vectors[labels]))
    assert nearest.labels().tolist() == [[0, 1, 2, -1, -1]]


def test_the_canary_reads_an_artifacts_own_vector_copy(tmp_path: Path) -> None:
    base, _ = support.dataset(n=3000, dimension=DIM, queries=1, seed=5)
    path = tmp_path / "1"
    builder.build(
        path,
        base,
        support.ids_for(len(base)),
        backend="hnsw",
        metric=Metric.L2,
        name="tracks",
        attributes=[ItemAttributes()] * len(base),  # attributes make the artifact keep a float32 copy
    )
    index = ServedIndex("tracks", artifact.load(path))
    assert index.artifact.filter_vectors is not None
    queries = gate._sample(index, np.random.default_rng(1), 50)
    found, _ = index.nearest(queries, 10, index.default_params)
    truth, _ = brute_force(base, queries, Metric.L2, 10)
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    assert gate.exact_recall(index, queries, found) == pytest.approx(hits / found.size, abs=0.002)
