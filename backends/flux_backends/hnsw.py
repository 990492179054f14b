"""``hnsw``: graph search with hnswlib, the default backend for low-latency serving."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import hnswlib
import numpy as np

from flux_backends.hnsw_file import IndexFile, Unreadable
from flux_core.backend import Backend, Capabilities, Labels, Matrix, Metric, Param, Progress, ReadWriteGate, pad_results

_SPACES = {Metric.L2: "l2", Metric.COSINE: "cosine", Metric.IP: "ip"}
_PROGRESS_SECONDS = 0.5  # how often a build reports how many items are in
#: Query rows searched per turn at the gate: bounds how long one batch keeps a waiting ef (or write) out.
_ROWS_PER_TURN = 64


class HnswBackend(Backend):
    """hnswlib's HNSW graph. Its distances already follow Flux's convention.

    hnswlib keeps ``ef`` as index-wide state and is not safe when inserts and queries
    overlap, so every call goes through a phase-fair ``ReadWriteGate``: searches with the same
    ``ef`` run together (hnswlib releases the GIL); a search asking for another ``ef``, and every
    write, waits until those in flight finish, and closes the door to newcomers meanwhile. A
    batch takes the gate once per slice of rows, so no caller waits for a whole long batch.
    Deletes are hnswlib's tombstones (``mark_deleted``); the deleted labels are saved beside
    the index. A new label takes the slot of a deleted item when there is one (hnswlib's
    ``replace_deleted``), so an index fed with upserts and deletes grows with its live items,
    not with its history.

    ``load`` and ``vector_blocks`` read the index file themselves (``IndexFile``), because
    hnswlib holds the GIL throughout its own ``load_index`` (0.1 to 0.2 s for 100,000 x 128:
    it asks the kernel for its file position twice per item) and its ``get_items`` (about 6 us
    a vector at 128 dimensions: it builds a Python float per value), and the requests of the
    versions already serving need the GIL meanwhile.
    """

    name = "hnsw"
    capabilities = Capabilities(mutable=True, supports_delete=True, thread_safe_search=True)
    build_params: ClassVar[Mapping[str, Param]] = {
        "M": Param(16, 2, 200, doc="graph degree; more gives higher recall and more memory"),
        "ef_construction": Param(200, 1, 10_000, doc="build-time beam; more gives a better graph, slower build"),
        "seed": Param(100, 0, 2**31 - 1, doc="random seed, for reproducible builds"),
    }
    search_params: ClassVar[Mapping[str, Param]] = {
        "ef": Param(64, 1, 100_000, doc="search beam, at least k is used; more gives higher recall, slower"),
    }

    def __init__(
        self,
        dimension: int,
        metric: Metric,
        index: hnswlib.Index,
        deleted: set[int] | None = None,
        source: IndexFile | None = None,
    ) -> None:
        super().__init__(dimension, metric)
        self._index = index
        # Labels deleted and not added since. hnswlib may have given such a label's slot to a
        # new label (then the label is gone from the library too; ``save`` prunes those).
        self._deleted = deleted or set()
        self._vacant = len(self._deleted)  # deleted items that still hold a slot
        self._gate = ReadWriteGate(on_switch=index.set_ef)
        # The file the index was loaded from, while the index is still as loaded (a write forgets it).
        self._source = source

    @classmethod
    def library_version(cls) -> str:
        return f"hnswlib {version('hnswlib')}"

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> HnswBackend:
        n, dimension = vectors.shape
        index = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        index.init_index(
            max_elements=max(n, 1),
            M=int(params["M"]),
            ef_construction=int(params["ef_construction"]),
            random_seed=int(params["seed"]),
            allow_replace_deleted=True,
        )
        # One add_items call (it releases the GIL) on a thread of its own, watched from the caller's
        # thread, which reports: chunked calls would leave threads idle at every chunk's end, and a
        # caller may keep state per thread (Beam's metrics do).
        if n and progress:
            with ThreadPoolExecutor(1, thread_name_prefix="flux-hnsw-build") as pool:
                adding = pool.submit(index.add_items, vectors, np.arange(n), num_threads=threads)
                while not wait([adding], timeout=_PROGRESS_SECONDS).done:
                    progress(min(int(index.element_count), n), n)
                adding.result()
        elif n:
            index.add_items(vectors, np.arange(n), num_threads=threads)
        if progress:
            progress(n, n)
        return cls(dimension, metric, index)

    def save(self, directory: Path) -> list[str]:
        with self._gate.writing():  # no write may change the graph halfway through
            self._deleted.intersection_update(self._index.get_ids_list())  # forget labels whose slot was reused
            self._index.save_index(str(directory / "index.hnsw"))
            (directory / "deleted.json").write_text(json.dumps(sorted(self._deleted)))
        return ["index.hnsw", "deleted.json"]

    @classmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> HnswBackend:
        deleted = set(json.loads((directory / "deleted.json").read_text()))
        source = IndexFile.open(directory / "index.hnsw")
        if source.dimension != dimension:  # hnswlib would load it anyway and read garbage
            raise ValueError(f"index.hnsw holds {source.dimension}-dimensional vectors, expected {dimension}")
        index = source.load(_SPACES[metric], dimension, max_elements=max(count + len(deleted), 1))
        if index.get_current_count() - len(deleted) != count:
            raise ValueError(
                f"index.hnsw holds {index.get_current_count()} items of which {len(deleted)} deleted, expected {count}"
            )
        return cls(dimension, metric, index, deleted, source)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        available = len(self)
        if available == 0 or len(queries) == 0:
            return pad_results(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), k)
        wanted = min(k, available)
        ef = int(params["ef"])
        if len(queries) <= _ROWS_PER_TURN:
            return self._knn(queries, k, wanted, ef, threads)
        # A long batch takes the gate once per slice, so a search with another ef (or a write)
        # waits for one slice, not the whole batch.
        parts = [
            self._knn(queries[start : start + _ROWS_PER_TURN], k, wanted, ef, threads)
            for start in range(0, len(queries), _ROWS_PER_TURN)
        ]
        return np.vstack([labels for labels, _ in parts]), np.vstack([distances for _, distances in parts])

    def _knn(self, queries: Matrix, k: int, wanted: int, ef: int, threads: int) -> tuple[Labels, Matrix]:
        self._gate.enter_reading(ef)  # every search comes here: no context manager's cost per call
        try:
            while True:
                try:
                    labels, distances = self._index.knn_query(queries, k=wanted, num_threads=threads)
                    break
                except RuntimeError:
                    # Tombstones can leave a query with fewer than k reachable items;
                    # hnswlib then refuses the whole batch. Ask for fewer and pad.
                    if wanted == 1:
                        return pad_results(
                            np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), k
                        )
                    wanted //= 2
        finally:
            self._gate.exit_reading()
        return pad_results(labels.astype(np.int64, copy=False), distances, k)

    def add(self, vectors: Matrix, labels: Labels) -> None:
        rows = dict(zip(labels.tolist(), range(len(labels)), strict=True))  # a repeated label keeps its last row
        with self._gate.writing():
            self._source = None  # the file no longer holds what the index does
            if not self._vacant:  # no slot to reuse: hnswlib inserts new labels and updates present ones
                self._insert(vectors[list(rows.values())], list(rows), replace_deleted=False)
                self._deleted.difference_update(rows)
                return
            # hnswlib's replace_deleted must only see labels it does not hold (it would duplicate
            # a present one), and a label deleted in place is revived, then updated.
            present: list[int] = []
            new: list[int] = []
            for label in rows:
                if label in self._deleted:
                    self._deleted.discard(label)
                    (present if self._revive(label) else new).append(label)
                else:
                    (present if self._holds(label) else new).append(label)
            if present:
                self._index.add_items(vectors[[rows[label] for label in present]], present, num_threads=1)
            if new:
                self._insert(vectors[[rows[label] for label in new]], new, replace_deleted=True)

    def _insert(self, vectors: Matrix, labels: list[int], *, replace_deleted: bool) -> None:
        before = self._index.get_current_count()
        needed = before + max(0, len(labels) - (self._vacant if replace_deleted else 0))
        if needed > self._index.get_max_elements():
            self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
        self._index.add_items(vectors, labels, num_threads=1, replace_deleted=replace_deleted)
        if replace_deleted:  # every label is new: those that did not add a slot took a deleted item's
            self._vacant -= len(labels) - (self._index.get_current_count() - before)

    def _revive(self, label: int) -> bool:
        """Undelete ``label`` if its slot is still its own; False when a new label took the slot."""
        try:
            self._index.unmark_deleted(label)
        except RuntimeError:
            return False
        self._vacant -= 1
        return True

    def _holds(self, label: int) -> bool:
        try:
            self._index.get_items([label], return_type="numpy")
        except RuntimeError:
            return False
        return True

    def delete(self, labels: Labels) -> None:
        with self._gate.writing():
            self._source = None
            for label in labels.tolist():
                if label in self._deleted:
                    raise KeyError(f"label {label} is not in the index (already deleted)")
                try:
                    self._index.mark_deleted(label)
                except RuntimeError as exc:
                    raise KeyError(f"label {label} is not in the index") from exc
                self._deleted.add(label)
                self._vacant += 1

    def get_vectors(self, labels: Labels) -> Matrix:
        with self._gate.reading(None):  # a write may be resizing the index's memory
            deleted = self._deleted.intersection(labels.tolist())
            if deleted:
                raise KeyError(f"label {min(deleted)} is not in the index (deleted)")
            try:
                return np.asarray(self._index.get_items(labels, return_type="numpy"), dtype=np.float32)
            except RuntimeError as exc:
                raise KeyError(str(exc)) from exc

    def vector_blocks(self, labels: Labels) -> Iterator[tuple[Labels, Matrix]]:
        """From the index file while the index is as loaded from it, a few MB per read (the
        reads release the GIL); otherwise, and for what is left once a write changes the index,
        ``get_vectors`` a few hundred at a time."""
        source = self._source
        if source is None or not len(labels):
            yield from super().vector_blocks(labels)
            return
        deleted = self._deleted.intersection(labels.tolist()) if self._deleted else set()
        if deleted:
            raise KeyError(f"label {min(deleted)} is not in the index (deleted)")
        wanted = np.zeros(int(labels.max()) + 1, np.bool_)
        wanted[labels] = True
        whole = False  # whether the file was read to its end, as loaded
        try:
            for block in source.vectors(wanted, self.dimension):
                if self._source is not source:  # a write came: what is left comes from the index
                    break
                yield block
            else:
                whole = True
        except Unreadable:
            self._source = None  # gone, or another file now: not the one loaded
        left = np.flatnonzero(wanted)
        if whole and len(left):
            raise KeyError(f"label {int(left[0])} is not in the index")
        yield from super().vector_blocks(left)

    def __len__(self) -> int:
        return int(self._index.get_current_count()) - self._vacant

    def stats(self) -> dict[str, Any]:
        return {
            "M": int(self._index.M),
            "ef_construction": int(self._index.ef_construction),
            "max_elements": int(self._index.max_elements),
            "deleted": self._vacant,
        }
