"""The conformance tests. ``conformance_suite`` picks the mixins a backend's capabilities call for.

Every test builds real indexes with the backend under test and checks them against a
float64 brute-force oracle. Capabilities select tests: a mutable backend gets the add
tests and a Hypothesis state machine, an immutable one gets a test that ``add`` is
refused; nothing is skipped.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from flux.core.serving.index import ServedIndex
from flux.datasets import clustered
from flux.testing.oracle import brute_force, distances, recall
from flux_core.backend import Backend, Metric, defaults
from flux_core.storage import artifact, builder, registry

METRICS = tuple(Metric)
DIMENSIONS = (8, 64)


class _Base:
    #: The backend class under test. ``conformance_suite`` sets it.
    backend: ClassVar[type[Backend]]
    #: Minimum recall@10 against the oracle on 2,000 clustered vectors, with default params.
    min_recall: ClassVar[float] = 0.9

    def build(self, vectors: np.ndarray, metric: Metric = Metric.L2, **params: float) -> Backend:
        spec = self.backend.build_params
        return self.backend.build(
            np.ascontiguousarray(vectors, np.float32), metric, {**defaults(spec), **params}, threads=2
        )

    def search(self, index: Backend, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(read_only(np.atleast_2d(queries)), k, defaults(self.backend.search_params))


def read_only(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as the server hands them to a backend: a read-only float32 view of a request's bytes."""
    return np.frombuffer(np.ascontiguousarray(vectors, "<f4").tobytes(), "<f4").reshape(vectors.shape)


def _data(n: int, dimension: int, queries: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    points = clustered(n + queries, dimension, clusters=16, spread=1.0, seed=seed)
    return points[:n], points[n:]


class PluginTests(_Base):
    def test_is_a_valid_plugin(self) -> None:
        registry.validate(self.backend.name, self.backend, origin=f"backend {self.backend.name!r}")
        for name, param in {**self.backend.build_params, **self.backend.search_params}.items():
            assert param.coerce(name, param.default) == param.default, f"default of {name} is outside its bounds"
        assert ":" in self.backend.library_version() or " " in self.backend.library_version()

    def test_declares_only_capabilities_the_kit_can_check(self) -> None:
        assert not self.backend.capabilities.filterable, "filterable has no conformance tests yet; do not declare it"
        if self.backend.capabilities.supports_delete:
            assert self.backend.capabilities.mutable, "supports_delete needs mutable"


class SearchTests(_Base):
    @pytest.mark.parametrize("dimension", DIMENSIONS)
    @pytest.mark.parametrize("metric", METRICS)
    def test_recall_against_the_oracle(self, metric: Metric, dimension: int) -> None:
        base, queries = _data(2000, dimension)
        labels, found = self.search(self.build(base, metric), queries, 10)
        truth, _ = brute_force(base, queries, metric, 10)
        assert recall(labels, truth) >= self.min_recall
        assert (labels >= 0).all(), "2,000 items always hold 10 neighbours"
        expected = np.take_along_axis(distances(base, queries, metric), labels, axis=1)
        np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-4, err_msg="distances break Flux's convention")
        assert (np.diff(found, axis=1) >= -1e-5).all(), "neighbours must come nearest first"

    def test_k_larger_than_the_index_pads_the_rows(self) -> None:
        base, queries = _data(5, 8, queries=3)
        labels, found = self.search(self.build(base), queries, 8)
        assert labels.shape == found.shape == (3, 8)
        assert (np.sort(labels[:, :5], axis=1) == np.arange(5)).all()
        assert (labels[:, 5:] == -1).all()
        assert np.isinf(found[:, 5:]).all()

    def test_an_empty_index_answers_with_padding_and_round_trips(self, tmp_path: Path) -> None:
        index = self.build(np.empty((0, 8), np.float32))
        assert len(index) == 0
        labels, found = self.search(index, np.ones((2, 8)), 3)
        assert (labels == -1).all()
        assert np.isinf(found).all()
        index.save(tmp_path)
        assert len(self.backend.load(tmp_path, 8, Metric.L2, 0)) == 0

    def test_a_one_item_index(self) -> None:
        index = self.build(np.full((1, 8), 0.5, np.float32))
        labels, found = self.search(index, np.zeros((2, 8)), 4)
        assert labels[:, 0].tolist() == [0, 0]
        assert (labels[:, 1:] == -1).all()
        np.testing.assert_allclose(found[:, 0], 2.0, rtol=1e-4)

    def test_get_vectors_returns_what_was_stored(self) -> None:
        base, _ = _data(100, 8)
        for metric in METRICS:
            stored = self.build(base, metric).get_vectors(np.array([3, 0, 99]))
            expected = base[[3, 0, 99]]
            if metric is Metric.COSINE:  # cosine backends may keep vectors normalised
                stored = stored / np.linalg.norm(stored, axis=1, keepdims=True)
                expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
            np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)

    def test_save_and_load_give_identical_results(self, tmp_path: Path) -> None:
        base, queries = _data(1000, 16)
        for metric in METRICS:
            index = self.build(base, metric)
            folder = tmp_path / metric.value
            folder.mkdir()
            written = index.save(folder)
            assert sorted(written) == sorted(p.name for p in folder.iterdir()), "save must list every file it writes"
            loaded = self.backend.load(folder, 16, metric, len(base))
            assert len(loaded) == len(index) == 1000
            before, after = self.search(index, queries, 10), self.search(loaded, queries, 10)
            np.testing.assert_array_equal(before[0], after[0])
            np.testing.assert_allclose(before[1], after[1], rtol=1e-6)

    def test_loading_from_an_empty_directory_raises(self, tmp_path: Path) -> None:
        with pytest.raises((OSError, ValueError, RuntimeError)):
            self.backend.load(tmp_path, 8, Metric.L2, 10)


class ServingTests(_Base):
    """Through Flux's own build, artifact and serving path, as a server would use the backend."""

    @pytest.fixture
    def registered(self) -> Iterator[None]:
        name = self.backend.name
        if name in registry.names() and registry.get(name) is self.backend:
            yield
            return
        registry.register(name, self.backend, replace=True)
        try:
            yield
        finally:
            registry.unregister(name)

    def serve(self, path: Path, vectors: np.ndarray, ids: list[str], metric: Metric = Metric.L2) -> ServedIndex:
        builder.build(path, vectors, ids, backend=self.backend.name, metric=metric, name="kit", threads=2)
        return ServedIndex("kit", artifact.load(path))

    @pytest.mark.usefixtures("registered")
    def test_string_ids_survive_build_and_load(self, tmp_path: Path) -> None:
        base, _ = _data(3000, 8)
        ids = [f"item:{i}" for i in range(3000)]
        ids[0], ids[1], ids[2] = "トラック:一", "🎵 " * 10, "x" * 2000
        index = self.serve(tmp_path / "a", base, ids)
        for row in (0, 1, 2, 2999):
            found = index.search(base[row : row + 1], 1, index.default_params)[0]
            assert found == [ids[row]]
            assert index.label_of(ids[row]) == row

    @pytest.mark.usefixtures("registered")
    def test_concurrent_searches_agree_with_serial_ones(self, tmp_path: Path) -> None:
        base, queries = _data(2000, 16, queries=200)
        index = self.serve(tmp_path / "a", base, [str(i) for i in range(2000)])
        serial = [index.search(q[None], 10, index.default_params)[0] for q in queries]
        results: dict[int, list[str]] = {}
        errors: list[BaseException] = []

        def work(rows: range) -> None:
            try:
                for row in rows:
                    results[row] = index.search(queries[row : row + 1], 10, index.default_params)[0]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(range(i, 200, 8),)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert [results[r] for r in range(200)] == serial


class ImmutableTests(_Base):
    def test_add_is_refused(self) -> None:
        index = self.build(np.ones((3, 8), np.float32))
        with pytest.raises(NotImplementedError):
            index.add(np.ones((1, 8), np.float32), np.array([7]))


class NoDeleteTests(_Base):
    def test_delete_is_refused(self) -> None:
        index = self.build(np.ones((3, 8), np.float32))
        with pytest.raises(NotImplementedError):
            index.delete(np.array([0]))


class MutableTests(_Base):
    def test_added_items_are_found_and_counted(self) -> None:
        base, _ = _data(300, 8)
        index = self.build(base[:200])
        index.add(read_only(base[200:]), np.arange(1000, 1100))
        assert len(index) == 300
        labels, found = self.search(index, base[250], 1)
        assert labels[0, 0] == 1050
        assert found[0, 0] <= 1e-4

    def test_add_replaces_the_vector_of_an_existing_label(self) -> None:
        base, _ = _data(100, 8)
        index = self.build(base)
        index.add(read_only(np.full((1, 8), 50.0)), np.array([7]))
        assert len(index) == 100
        labels, _ = self.search(index, np.full(8, 50.0), 1)
        assert labels[0, 0] == 7
        np.testing.assert_allclose(index.get_vectors(np.array([7]))[0], np.full(8, 50.0), rtol=1e-5)

    def test_state_machine_agrees_with_a_model(self, tmp_path: Path) -> None:
        machine = type("Machine", (IndexMachine,), {"backend_cls": self.backend, "folder": tmp_path})
        run_state_machine_as_test(
            machine, settings=settings(max_examples=15, stateful_step_count=25, deadline=None, database=None)
        )


class DeleteTests(_Base):
    def test_deleted_items_are_never_returned(self) -> None:
        base, queries = _data(500, 8)
        index = self.build(base)
        gone = np.arange(0, 500, 2)
        index.delete(gone)
        assert len(index) == 250
        labels, _ = self.search(index, np.vstack([queries, base[gone[:20]]]), 10)
        assert not np.isin(labels, gone).any()

    def test_deleting_an_unknown_label_raises_key_error(self) -> None:
        index = self.build(np.ones((3, 8), np.float32))
        with pytest.raises(KeyError):
            index.delete(np.array([42]))
        index.delete(np.array([1]))
        with pytest.raises(KeyError):
            index.delete(np.array([1]))


class MmapTests(_Base):
    def test_load_memory_maps_the_files(self, tmp_path: Path) -> None:
        base, _ = _data(500, 8)
        self.build(base).save(tmp_path)
        loaded = self.backend.load(tmp_path, 8, Metric.L2, 500)
        maps = Path("/proc/self/maps").read_text()
        assert str(tmp_path.resolve()) in maps, "capabilities.mmap_load is declared but no file is memory-mapped"
        assert len(loaded) == 500


class IndexMachine(RuleBasedStateMachine):
    """Adds, replaces, deletes, searches and reloads, checking each answer against a dict of vectors."""

    backend_cls: ClassVar[type[Backend]]
    folder: ClassVar[Path]
    dimension = 6

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, np.ndarray] = {}
        self.next_label = 0
        self.saves = 0
        self.index = self._build()

    def _build(self) -> Backend:
        spec = self.backend_cls.build_params
        return self.backend_cls.build(np.empty((0, self.dimension), np.float32), Metric.L2, defaults(spec))

    def _vector(self, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)

    @rule(seed=st.integers(0, 2**16), count=st.integers(1, 5))
    def add(self, seed: int, count: int) -> None:
        labels = np.arange(self.next_label, self.next_label + count)
        vectors = np.stack([self._vector(seed + i) for i in range(count)])
        self.index.add(vectors, labels)
        self.model.update(zip(labels.tolist(), vectors, strict=True))
        self.next_label += count

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def replace(self, data: st.DataObject, seed: int) -> None:
        label = data.draw(st.sampled_from(sorted(self.model)))
        self.index.add(self._vector(seed)[None], np.array([label]))
        self.model[label] = self._vector(seed)

    @precondition(lambda self: self.model and self.backend_cls.capabilities.supports_delete)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        label = data.draw(st.sampled_from(sorted(self.model)))
        self.index.delete(np.array([label]))
        del self.model[label]

    @rule(seed=st.integers(0, 2**16), k=st.integers(1, 8))
    def search(self, seed: int, k: int) -> None:
        labels, found = self.index.search(self._vector(seed)[None], k, defaults(self.backend_cls.search_params))
        expected = min(k, len(self.model))
        returned = labels[0][labels[0] >= 0].tolist()
        assert len(returned) == expected, f"asked {k} of {len(self.model)} items, got {len(returned)}"
        assert set(returned) <= set(self.model), "a search returned an item that is not in the index"
        if returned:
            truth = distances(np.stack([self.model[label] for label in returned]), self._vector(seed)[None], "l2")[0]
            np.testing.assert_allclose(found[0, : len(returned)], truth, rtol=1e-3, atol=1e-4)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def search_a_stored_vector(self, data: st.DataObject) -> None:
        label = data.draw(st.sampled_from(sorted(self.model)))
        _, found = self.index.search(self.model[label][None], 1, defaults(self.backend_cls.search_params))
        assert found[0, 0] <= 1e-4, "a stored vector must find an item at distance 0"

    @rule()
    def save_and_reload(self) -> None:
        self.saves += 1
        folder = Path(tempfile.mkdtemp(prefix=f"save-{self.saves}-", dir=self.folder))  # id(self) is reused
        self.index.save(folder)
        self.index = self.backend_cls.load(folder, self.dimension, Metric.L2, len(self.model))

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.index) == len(self.model)


def conformance_suite(backend: type[Backend], *, min_recall: float = 0.9, **options: Any) -> type:
    """A pytest test class that checks ``backend`` against Flux's backend contract.

    Bind it to a ``Test*`` name in a test module::

        TestMyBackend = conformance_suite(MyBackend)
    """
    caps = backend.capabilities
    mixins: list[type] = [PluginTests, SearchTests, ServingTests]
    mixins.append(MutableTests if caps.mutable else ImmutableTests)
    mixins.append(DeleteTests if caps.supports_delete else NoDeleteTests)
    if caps.mmap_load:
        mixins.append(MmapTests)
    attributes = {"backend": backend, "min_recall": min_recall, "__test__": True, **options}
    return type(f"Test{backend.__name__}Conformance", tuple(mixins), attributes)
