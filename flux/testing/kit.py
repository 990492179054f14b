"""The conformance tests. ``conformance_suite`` picks the mixins a backend's capabilities call for.

Every test builds real indexes with the backend under test and checks them against a
float64 brute-force oracle. Capabilities select tests: a mutable backend gets the add
tests, a Hypothesis state machine and searches beside writes, an immutable one gets a test
that ``add`` is refused; declared parameters get tests that each one is honoured. Nothing
is skipped. Every failure says what the backend did and what the contract asks.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from flux.core.serving.index import ServedIndex
from flux.datasets import clustered
from flux.testing.filterable import FilterableTests, NotFilterableTests
from flux.testing.oracle import brute_force, distances, recall
from flux_core.backend import Backend, Metric, Param, defaults
from flux_core.storage import artifact, builder, registry

METRICS = tuple(Metric)
DIMENSIONS = (8, 64)
#: What ``load`` may raise for files it cannot use; Flux turns these into an error naming the artifact.
LOAD_ERRORS = (OSError, ValueError, RuntimeError)
#: The k asked of a 2,000-item index: each must come back in full at every search param's smallest value.
LARGE_KS = (1, 10, 100, 500)
#: How far recall@10 (over 200 queries) may dip between two rising values of a search param: graph
#: searches are not strictly monotone query by query, an inverted or broken param drops far more.
RECALL_NOISE = 0.01
#: The options ``conformance_suite`` accepts: class attributes of the generated test class.
OPTIONS = frozenset({"min_recall", "search_param_values", "build_param_values"})


class _Base:
    #: The backend class under test. ``conformance_suite`` sets it.
    backend: ClassVar[type[Backend]]
    #: Minimum recall@10 against the oracle on 2,000 clustered vectors, with default params.
    min_recall: ClassVar[float] = 0.9
    #: Per search param, the values to try, in an order that must not lower recall (default: ``ladder``).
    search_param_values: ClassVar[Mapping[str, Sequence[float]]] = {}
    #: Per build param, values that must not all build the same index (default: ``build_values``).
    build_param_values: ClassVar[Mapping[str, Sequence[float]]] = {}

    def build(self, vectors: np.ndarray, metric: Metric = Metric.L2, *, threads: int = 2, **params: float) -> Backend:
        spec = self.backend.build_params
        return self.backend.build(
            np.ascontiguousarray(vectors, np.float32), metric, {**defaults(spec), **params}, threads=threads
        )

    def search(
        self, index: Backend, queries: np.ndarray, k: int, params: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        params = defaults(self.backend.search_params) if params is None else params
        return index.search(read_only(np.atleast_2d(queries)), k, params)


def read_only(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as the server hands them to a backend: a read-only float32 view of a request's bytes."""
    return np.frombuffer(np.ascontiguousarray(vectors, "<f4").tobytes(), "<f4").reshape(vectors.shape)


def _data(n: int, dimension: int, queries: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    points = clustered(n + queries, dimension, clusters=16, spread=1.0, seed=seed)
    return points[:n], points[n:]


def smallest(param: Param) -> list[float]:
    """The values a search param is tried at for full results: its minimum, and 1 when the minimum
    is below 1 (0 and -1 often mean "automatic", so 1 is the smallest real budget)."""
    values = {param.minimum}
    if param.minimum < 1 <= param.maximum:
        values.add(1)
    return sorted(values)


def ladder(param: Param) -> list[float]:
    """Rising values of a search param: from max(minimum, 1) by factors of 8 up to 4,096 (or the
    maximum), plus the default; a float param gets five even steps across its bounds."""
    if not param.integer:
        return sorted({float(v) for v in np.linspace(param.minimum, param.maximum, 5)})
    low = max(param.minimum, 1)
    top = min(param.maximum, 4096)
    values = {low, *itertools.takewhile(lambda v: v <= top, (low * 8**i for i in itertools.count()))}
    if param.default >= low:
        values.add(param.default)
    return sorted(values)


def build_values(param: Param) -> list[float]:
    """Values of a build param that should build different indexes: the minimum, the default, and
    twice the default plus one (or halfway to the maximum for a float param), within bounds."""
    upper = min(param.maximum, 2 * param.default + 1) if param.integer else (param.default + param.maximum) / 2
    return sorted({param.minimum, param.default, upper})


def _describe(params: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in params.items()) or "no params"


class PluginTests(_Base):
    def test_is_a_valid_plugin(self) -> None:
        registry.validate(self.backend.name, self.backend, origin=f"backend {self.backend.name!r}")
        for name, param in {**self.backend.build_params, **self.backend.search_params}.items():
            assert param.coerce(name, param.default) == param.default, f"default of {name} is outside its bounds"
        version = self.backend.library_version()
        assert ":" in version or " " in version, (
            f"library_version() returned {version!r}; it must name the library and its version, e.g. 'hnswlib 0.8.0'"
        )

    def test_declares_only_capabilities_the_kit_can_check(self) -> None:
        if self.backend.capabilities.supports_delete:
            assert self.backend.capabilities.mutable, "supports_delete needs mutable"


class SearchTests(_Base):
    @pytest.mark.parametrize("dimension", DIMENSIONS)
    @pytest.mark.parametrize("metric", METRICS)
    def test_recall_against_the_oracle(self, metric: Metric, dimension: int) -> None:
        base, queries = _data(2000, dimension)
        labels, found = self.search(self.build(base, metric), queries, 10)
        truth, _ = brute_force(base, queries, metric, 10)
        got = recall(labels, truth)
        assert got >= self.min_recall, (
            f"recall@10 with default params is {got:.3f} on 2,000 clustered {metric.value} vectors of dimension "
            f"{dimension}; min_recall is {self.min_recall}"
        )
        short = int((labels < 0).any(axis=1).sum())
        assert not short, f"{short} of {len(queries)} queries got fewer than 10 results from 2,000 items"
        expected = np.take_along_axis(distances(base, queries, metric), labels, axis=1)
        np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-4, err_msg="distances break Flux's convention")
        assert (np.diff(found, axis=1) >= -1e-5).all(), "neighbours must come nearest first"

    @pytest.mark.parametrize("metric", METRICS)
    def test_k_results_whenever_k_fits_even_at_the_smallest_search_params(self, metric: Metric) -> None:
        """ef below k (or any small budget) still returns k results: the backend raises it to k."""
        base, queries = _data(2000, 16, queries=20)
        index = self.build(base, metric)
        settings = [defaults(self.backend.search_params)]
        for name, param in self.backend.search_params.items():
            settings += [{**settings[0], name: param.coerce(name, value)} for value in smallest(param)]
        for params in settings:
            for k in LARGE_KS:
                labels, found = self.search(index, queries, k, params)
                assert labels.shape == found.shape == (len(queries), k), (
                    f"search(k={k}) returned arrays of shape {labels.shape} and {found.shape}; "
                    f"expected ({len(queries)}, {k})"
                )
                counts = (labels >= 0).sum(axis=1)
                row = int(np.argmin(counts))
                assert counts[row] == k, (
                    f"{metric.value} index of 2,000 items, k={k}, {_describe(params)}: query {row} got "
                    f"{counts[row]} results (fewest {counts.min()}, most {counts.max()}); a backend returns k "
                    f"results whenever k <= len(index), so a search budget below k (ef < k) must be raised to k"
                )
                duplicated = [r for r in range(len(labels)) if len(set(labels[r].tolist())) < k]
                assert not duplicated, f"k={k}, {_describe(params)}: query {duplicated[0]} got a label twice"
                assert np.isfinite(found).all(), f"k={k}, {_describe(params)}: a real result has a distance of inf/nan"

    def test_k_larger_than_the_index_pads_the_rows(self) -> None:
        base, queries = _data(5, 8, queries=3)
        labels, found = self.search(self.build(base), queries, 8)
        assert labels.shape == found.shape == (3, 8), f"k=8 returned shapes {labels.shape}, {found.shape}; want (3, 8)"
        assert (np.sort(labels[:, :5], axis=1) == np.arange(5)).all(), (
            f"a 5-item index asked for 8 must return all 5 items first, got {labels.tolist()}"
        )
        assert (labels[:, 5:] == -1).all(), f"missing results must be label -1, got {labels[:, 5:].tolist()}"
        assert np.isinf(found[:, 5:]).all(), f"missing results must have distance +inf, got {found[:, 5:].tolist()}"

    def test_an_empty_index_answers_with_padding_and_round_trips(self, tmp_path: Path) -> None:
        index = self.build(np.empty((0, 8), np.float32))
        assert len(index) == 0, f"an index built from 0 vectors has len {len(index)}"
        labels, found = self.search(index, np.ones((2, 8)), 3)
        assert (labels == -1).all(), f"an empty index must answer label -1 only, got {labels.tolist()}"
        assert np.isinf(found).all(), f"an empty index must answer distance +inf only, got {found.tolist()}"
        index.save(tmp_path)
        reloaded = len(self.backend.load(tmp_path, 8, Metric.L2, 0))
        assert reloaded == 0, f"an empty index saved and loaded again has len {reloaded}"

    def test_a_one_item_index(self) -> None:
        index = self.build(np.full((1, 8), 0.5, np.float32))
        labels, found = self.search(index, np.zeros((2, 8)), 4)
        assert labels[:, 0].tolist() == [0, 0], f"the only item (label 0) must come first, got {labels.tolist()}"
        assert (labels[:, 1:] == -1).all(), f"the rest of the row must be label -1, got {labels.tolist()}"
        np.testing.assert_allclose(found[:, 0], 2.0, rtol=1e-4, err_msg="squared L2 of 0.5 x 8 must be 2.0")

    def test_get_vectors_returns_what_was_stored(self) -> None:
        base, _ = _data(100, 8)
        for metric in METRICS:
            stored = self.build(base, metric).get_vectors(np.array([3, 0, 99]))
            expected = base[[3, 0, 99]]
            if metric is Metric.COSINE:  # cosine backends may keep vectors normalised
                stored = stored / np.linalg.norm(stored, axis=1, keepdims=True)
                expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
            np.testing.assert_allclose(
                stored, expected, rtol=1e-4, atol=1e-5, err_msg=f"get_vectors of labels 3, 0, 99 ({metric.value})"
            )

    def test_save_and_load_give_identical_results(self, tmp_path: Path) -> None:
        base, queries = _data(1000, 16)
        for metric in METRICS:
            index = self.build(base, metric)
            folder = tmp_path / metric.value
            folder.mkdir()
            written = index.save(folder)
            present = sorted(p.name for p in folder.iterdir())
            assert sorted(written) == present, f"save returned {sorted(written)} but wrote {present}"
            loaded = self.backend.load(folder, 16, metric, len(base))
            assert len(loaded) == len(index) == 1000, (
                f"1,000 items built: len is {len(index)} before save, {len(loaded)} after load"
            )
            before, after = self.search(index, queries, 10), self.search(loaded, queries, 10)
            np.testing.assert_array_equal(before[0], after[0], err_msg=f"labels differ after save and load ({metric})")
            np.testing.assert_allclose(
                before[1], after[1], rtol=1e-6, err_msg=f"distances differ after load ({metric})"
            )

    def test_loading_from_an_empty_directory_raises(self, tmp_path: Path) -> None:
        with pytest.raises(LOAD_ERRORS):
            self.backend.load(tmp_path, 8, Metric.L2, 10)


class LoadTests(_Base):
    """``load`` refuses files that do not hold what the manifest says, rather than serving garbage."""

    count = 300
    dimension = 8

    @pytest.fixture
    def saved(self, tmp_path: Path) -> Path:
        base, _ = _data(self.count, self.dimension)
        folder = tmp_path / "saved"
        folder.mkdir()
        self.build(base).save(folder)
        return folder

    def refused(self, folder: Path, what: str, *, dimension: int | None = None, count: int | None = None) -> None:
        dimension = self.dimension if dimension is None else dimension
        count = self.count if count is None else count
        try:
            loaded = self.backend.load(folder, dimension, Metric.L2, count)
        except LOAD_ERRORS:
            return
        except Exception as exc:
            raise AssertionError(
                f"load of {what} raised {exc!r}; raise OSError, ValueError or RuntimeError for files it cannot use, "
                "so that Flux refuses the artifact naming it"
            ) from exc
        raise AssertionError(
            f"load of {what} succeeded (len {len(loaded)}); it must raise OSError, ValueError or RuntimeError "
            f"(asked for {count} items of dimension {dimension})"
        )

    def test_load_refuses_a_count_that_disagrees_with_the_files(self, saved: Path) -> None:
        assert len(self.backend.load(saved, self.dimension, Metric.L2, self.count)) == self.count, (
            f"an index of {self.count} items saved and loaded again must have len {self.count}"
        )
        for count in (self.count - 1, self.count + 1):
            self.refused(saved, f"{self.count} saved items as {count} (the manifest's count)", count=count)

    def test_load_refuses_another_dimension(self, saved: Path) -> None:
        for dimension in (self.dimension - 1, self.dimension + 1, 2 * self.dimension):
            self.refused(saved, f"{self.dimension}-dimensional files as dimension {dimension}", dimension=dimension)

    def test_load_refuses_a_truncated_file(self, saved: Path, tmp_path: Path) -> None:
        for name in sorted(p.name for p in saved.iterdir()):
            size = (saved / name).stat().st_size
            for keep in (size // 2, 0):
                copy = tmp_path / f"{name}-{keep}"
                shutil.copytree(saved, copy)
                with (copy / name).open("r+b") as fh:
                    fh.truncate(keep)
                self.refused(copy, f"{name} cut from {size} to {keep} bytes")

    def test_load_refuses_a_file_of_another_index(self, saved: Path, tmp_path: Path) -> None:
        base, _ = _data(self.count - 100, self.dimension, seed=1)
        other = tmp_path / "other"
        other.mkdir()
        self.build(base).save(other)
        for name in sorted(p.name for p in saved.iterdir()):
            if not (other / name).is_file() or (other / name).read_bytes() == (saved / name).read_bytes():
                continue
            copy = tmp_path / f"mixed-{name}"
            shutil.copytree(saved, copy)
            shutil.copyfile(other / name, copy / name)
            self.refused(copy, f"{name} of a {self.count - 100}-item index among the files of a {self.count}-item one")


class SearchParamTests(_Base):
    """Declared search params: each one changes results, and more of it does not lower recall."""

    def test_each_search_param_changes_results_without_lowering_recall(self) -> None:
        base, queries = _data(2000, 16, queries=200)
        truth, _ = brute_force(base, queries, Metric.L2, 10)
        index = self.build(base)
        for name, param in self.backend.search_params.items():
            values = [param.coerce(name, v) for v in self.search_param_values.get(name, ladder(param))]
            if len(values) < 2:
                continue  # a param with one allowed value cannot change anything
            answers = [
                self.search(index, queries, 10, {**defaults(self.backend.search_params), name: v}) for v in values
            ]
            recalls = [recall(labels, truth) for labels, _ in answers]
            shown = ", ".join(f"{value:g}: {r:.3f}" for value, r in zip(values, recalls, strict=True))
            assert any(not np.array_equal(answers[0][0], labels) for labels, _ in answers[1:]), (
                f"search param {name} at {', '.join(f'{v:g}' for v in values)} gave identical results on "
                f"2,000 items: the backend ignores it (recall@10 {shown})"
            )
            for (low, before), (high, after) in itertools.pairwise(zip(values, recalls, strict=True)):
                assert after >= before - RECALL_NOISE, (
                    f"recall@10 fell from {before:.3f} at {name}={low:g} to {after:.3f} at {name}={high:g} "
                    f"(recall@10 by {name}: {shown}); more {name} must not lower recall. A param where less is "
                    f"better passes its values in the order that raises recall: search_param_values={{{name!r}: [...]}}"
                )


class BuildParamTests(_Base):
    """Declared build params: different values build different indexes."""

    def outcome(
        self, base: np.ndarray, queries: np.ndarray, params: Mapping[str, float], folder: Path
    ) -> tuple[list[np.ndarray], dict[str, bytes]]:
        """What an index built with ``params`` answers (at the smallest and default search params) and saves."""
        index = self.backend.build(base, Metric.L2, params, threads=1)
        low = {n: p.coerce(n, min(max(p.minimum, 1), p.maximum)) for n, p in self.backend.search_params.items()}
        answers = [
            array for p in (low, defaults(self.backend.search_params)) for array in self.search(index, queries, 10, p)
        ]
        folder.mkdir()
        files = {name: (folder / name).read_bytes() for name in index.save(folder)}
        return answers, files

    def test_each_build_param_is_honoured(self, tmp_path: Path) -> None:
        base, queries = _data(1000, 16, queries=100)
        spec = self.backend.build_params
        reference = self.outcome(base, queries, defaults(spec), tmp_path / "default")
        again = self.outcome(base, queries, defaults(spec), tmp_path / "default-again")
        assert all(np.array_equal(a, b) for a, b in zip(reference[0], again[0], strict=True)), (
            "two builds with the same params and threads=1 answer differently: the kit cannot tell whether build "
            "params are honoured; make builds reproducible (take a seed param and pass it to the library)"
        )
        files_reproducible = reference[1] == again[1]
        for name, param in spec.items():
            values = [param.coerce(name, v) for v in self.build_param_values.get(name, build_values(param))]
            outcomes = [
                self.outcome(base, queries, {**defaults(spec), name: value}, tmp_path / f"{name}-{value:g}")
                for value in values
            ]
            answers_differ = any(
                not all(np.array_equal(a, b) for a, b in zip(outcomes[0][0], o[0], strict=True)) for o in outcomes[1:]
            )
            files_differ = files_reproducible and any(outcomes[0][1] != o[1] for o in outcomes[1:])
            assert answers_differ or files_differ, (
                f"build param {name} at {', '.join(f'{v:g}' for v in values)} built indexes that answer alike"
                f"{' and save the same bytes' if files_reproducible else ''}: the backend ignores it"
            )


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
            assert found == [ids[row]], f"searching item {row}'s own vector found {found}, not {ids[row]!r}"
            assert index.label_of(ids[row]) == row, f"{ids[row]!r} maps to label {index.label_of(ids[row])}, not {row}"

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
        assert not errors, f"searches from 8 threads at once raised: {errors[0]!r}"
        differ = [r for r in range(200) if results[r] != serial[r]]
        assert not differ, f"{len(differ)} of 200 searches run from 8 threads differ from serial ones (row {differ[0]})"


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
        assert len(index) == 300, f"200 built + 100 added items: len is {len(index)}"
        labels, found = self.search(index, base[250], 1)
        assert labels[0, 0] == 1050, f"searching added item 1050's own vector found label {labels[0, 0]}"
        assert found[0, 0] <= 1e-4, f"an added item's own vector is at distance {found[0, 0]}, not 0"

    def test_add_replaces_the_vector_of_an_existing_label(self) -> None:
        base, _ = _data(100, 8)
        index = self.build(base)
        index.add(read_only(np.full((1, 8), 50.0)), np.array([7]))
        assert len(index) == 100, f"replacing label 7's vector changed len from 100 to {len(index)}"
        labels, _ = self.search(index, np.full(8, 50.0), 1)
        assert labels[0, 0] == 7, f"searching label 7's new vector found label {labels[0, 0]}"
        np.testing.assert_allclose(
            index.get_vectors(np.array([7]))[0], np.full(8, 50.0), rtol=1e-5, err_msg="get_vectors after replacing"
        )

    def test_state_machine_agrees_with_a_model(self, tmp_path: Path) -> None:
        machine = type("Machine", (IndexMachine,), {"backend_cls": self.backend, "folder": tmp_path})
        run_state_machine_as_test(
            machine, settings=settings(max_examples=15, stateful_step_count=25, deadline=None, database=None)
        )

    def test_searches_beside_writes_never_fail_nor_see_deleted_items(self) -> None:
        """Flux searches on many threads while it writes: the backend makes that safe itself (a lock,
        a gate or snapshots). Searches must not fail, come back short, report a wrong distance, or
        return an item whose delete had returned before they started.

        Twice over, an index grows from 10 items to 3,010 in 60 adds of 50 (so that a library's
        storage is reallocated several times while searches run), then 20 deletes of 10 items
        follow. A race is a matter of timing: a backend without a lock fails this test in most
        runs, not in all."""
        for cycle in range(2):
            self._search_beside_writes(seed=cycle)

    def _search_beside_writes(self, seed: int) -> None:
        start, adds, added, deletes, removed, searchers = 10, 60, 50, 20, 10, 3
        if not self.backend.capabilities.supports_delete:
            deletes = 0
        everything, _ = _data(start + adds * added, 16, queries=0, seed=seed)
        index = self.build(everything[:start])
        params = defaults(self.backend.search_params)
        lock = threading.Condition()
        deleted: set[int] = set()  # labels whose delete has returned
        issued = start  # labels below this one may be in the index (an add may show before it returns)
        floor = start  # items surely in the index: adds that returned, less the deletes begun
        done = threading.Event()
        searches, errors = 0, []

        def search_until_done(seed: int) -> None:
            nonlocal searches
            rng = np.random.default_rng(seed)
            try:
                while not done.is_set():
                    with lock:
                        gone, known, least = set(deleted), issued, floor
                    queries = everything[rng.integers(0, known, 8)] + rng.normal(0, 0.1, (8, 16)).astype(np.float32)
                    labels, found = self.search(index, queries, 10, params)
                    with lock:  # labels issued up to now may be returned: an add can show before it returns
                        known = issued
                    _check_beside_writes(labels, found, queries, everything, gone, known, min(10, least))
                    with lock:
                        searches += 1
                        lock.notify_all()
            except BaseException as exc:  # surfaced below
                with lock:
                    errors.append(exc)
                    lock.notify_all()

        def one_more_search(since: int) -> bool:
            """Wait (holding ``lock``) until a search ends after ``since`` of them had, or one fails."""
            return lock.wait_for(lambda: searches > since or bool(errors), timeout=60)

        threads = [threading.Thread(target=search_until_done, args=(seed,)) for seed in range(searchers)]
        for thread in threads:
            thread.start()
        try:
            for step in range(adds + deletes):
                with lock:  # each write waits for one more search, so that writes and searches interleave
                    progressed = one_more_search(searches)
                    assert progressed, "no search finished for 60 s beside writes: a deadlock between search and write?"
                    if errors:
                        break
                    if step < adds:
                        issued += added
                    else:
                        floor -= removed
                if step < adds:
                    labels = np.arange(issued - added, issued)
                    index.add(read_only(everything[labels]), labels)
                    with lock:
                        floor += added
                else:
                    gone = np.arange((step - adds) * removed, (step - adds + 1) * removed)
                    index.delete(gone)
                    with lock:
                        deleted.update(gone.tolist())
        finally:
            done.set()
            for thread in threads:
                thread.join()
        if errors:
            raise AssertionError(f"a search beside writes failed: {errors[0]}") from errors[0]
        expected = start + adds * added - len(deleted)
        assert len(index) == expected, f"after the writes len is {len(index)}, expected {expected}"


def _check_beside_writes(
    labels: np.ndarray,
    found: np.ndarray,
    queries: np.ndarray,
    vectors: np.ndarray,
    gone: set[int],
    known: int,
    least: int,
) -> None:
    counts = (labels >= 0).sum(axis=1)
    assert counts.min() >= least, (
        f"a search beside writes came back short: {counts.min()} of 10 results from an index that held at least "
        f"{least} items throughout; writes must not disturb searches"
    )
    stale = gone.intersection(labels.ravel().tolist())
    assert not stale, f"a search returned label {min(stale)}, deleted before the search started"
    unknown = labels >= known
    assert not unknown.any(), f"a search returned label {labels[unknown][0]}, never added"
    real = labels >= 0
    truth = np.array([distances(vectors[row], q[None], Metric.L2)[0] for row, q in zip(labels, queries, strict=True)])
    wrong = real & ~np.isclose(found, truth, rtol=1e-3, atol=1e-4)
    if wrong.any():
        row, col = np.argwhere(wrong)[0]
        raise AssertionError(
            f"a search beside writes reported label {labels[row, col]} at distance {found[row, col]:.5f}, but its "
            f"vector is at {truth[row, col]:.5f}: it read a vector while a write changed it"
        )


class DeleteTests(_Base):
    def test_deleted_items_are_never_returned(self) -> None:
        base, queries = _data(500, 8)
        index = self.build(base)
        gone = np.arange(0, 500, 2)
        index.delete(gone)
        assert len(index) == 250, f"500 items, 250 deleted: len is {len(index)}"
        labels, _ = self.search(index, np.vstack([queries, base[gone[:20]]]), 10)
        returned = np.intersect1d(labels, gone)
        assert not len(returned), f"deleted labels came back from searches: {returned[:10].tolist()}"

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
        assert len(loaded) == 500, f"500 items saved: len after load is {len(loaded)}"


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
        assert set(returned) <= set(self.model), (
            f"a search returned labels {sorted(set(returned) - set(self.model))}, not in the index"
        )
        if returned:
            truth = distances(np.stack([self.model[label] for label in returned]), self._vector(seed)[None], "l2")[0]
            np.testing.assert_allclose(
                found[0, : len(returned)], truth, rtol=1e-3, atol=1e-4, err_msg="distances of the labels returned"
            )

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def search_a_stored_vector(self, data: st.DataObject) -> None:
        label = data.draw(st.sampled_from(sorted(self.model)))
        _, found = self.index.search(self.model[label][None], 1, defaults(self.backend_cls.search_params))
        assert found[0, 0] <= 1e-4, f"label {label}'s own vector found nothing nearer than {found[0, 0]}, not 0"

    @rule()
    def save_and_reload(self) -> None:
        self.saves += 1
        folder = Path(tempfile.mkdtemp(prefix=f"save-{self.saves}-", dir=self.folder))  # id(self) is reused
        self.index.save(folder)
        self.index = self.backend_cls.load(folder, self.dimension, Metric.L2, len(self.model))

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.index) == len(self.model), f"len is {len(self.index)}; the model holds {len(self.model)} items"


def conformance_suite(backend: type[Backend], *, min_recall: float = 0.9, **options: Any) -> type:
    """A pytest test class that checks ``backend`` against Flux's backend contract.

    Bind it to a ``Test*`` name in a test module::

        TestMyBackend = conformance_suite(MyBackend)

    Options (keywords; any other name raises TypeError):

    * ``min_recall``: the recall@10 the backend must reach with default params (an exact one: 1.0).
    * ``search_param_values={"name": [v1, v2, ...]}``: the values a search param is tried at, in the
      order that must not lower recall, at least two of which must change results. Default: from
      max(minimum, 1) by factors of 8 up to 4,096 or the maximum, plus the default (``ladder``).
      Give it for a param where less means higher recall, listing values from high to low.
    * ``build_param_values={"name": [v1, v2, ...]}``: build param values that must not all build the
      same index. Default: the minimum, the default and twice the default plus one (``build_values``).
    """
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(f"conformance_suite got unknown options {unknown}; it accepts {sorted(OPTIONS)}")
    caps = backend.capabilities
    mixins: list[type] = [PluginTests, SearchTests, LoadTests, ServingTests]
    if backend.search_params:
        mixins.append(SearchParamTests)
    if backend.build_params:
        mixins.append(BuildParamTests)
    mixins.append(MutableTests if caps.mutable else ImmutableTests)
    mixins.append(DeleteTests if caps.supports_delete else NoDeleteTests)
    mixins.append(FilterableTests if caps.filterable else NotFilterableTests)
    if caps.mmap_load:
        mixins.append(MmapTests)
    attributes = {"backend": backend, "min_recall": min_recall, "__test__": True, **options}
    return type(f"Test{backend.__name__}Conformance", tuple(mixins), attributes)
