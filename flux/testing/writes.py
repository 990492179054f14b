"""The kit's tests of writes, chosen by capabilities: a mutable backend's adds (a Hypothesis state
machine against a dict of vectors, and searches on other threads beside the writes), deletes where
supported, and ``add`` or ``delete`` refused where not.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from flux.testing.harness import Harness, read_only, vectors_and_queries
from flux.testing.oracle import distances
from flux_core.backend import Backend, Metric, defaults


class ImmutableTests(Harness):
    def test_add_is_refused(self) -> None:
        index = self.build(np.ones((3, 8), np.float32))
        with pytest.raises(NotImplementedError):
            index.add(np.ones((1, 8), np.float32), np.array([7]))


class NoDeleteTests(Harness):
    def test_delete_is_refused(self) -> None:
        index = self.build(np.ones((3, 8), np.float32))
        with pytest.raises(NotImplementedError):
            index.delete(np.array([0]))


class MutableTests(Harness):
    def test_added_items_are_found_and_counted(self) -> None:
        base, _ = vectors_and_queries(300, 8)
        index = self.build(base[:200])
        index.add(read_only(base[200:]), np.arange(1000, 1100))
        assert len(index) == 300, f"200 built + 100 added items: len is {len(index)}"
        labels, found = self.search(index, base[250], 1)
        assert labels[0, 0] == 1050, f"searching added item 1050's own vector found label {labels[0, 0]}"
        assert found[0, 0] <= 1e-4, f"an added item's own vector is at distance {found[0, 0]}, not 0"

    def test_add_replaces_the_vector_of_an_existing_label(self) -> None:
        base, _ = vectors_and_queries(100, 8)
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
        everything, _ = vectors_and_queries(start + adds * added, 16, queries=0, seed=seed)
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


class DeleteTests(Harness):
    def test_deleted_items_are_never_returned(self) -> None:
        base, queries = vectors_and_queries(500, 8)
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
