"""A served index: a loaded artifact plus the rules every query to it must follow."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import numpy as np

from flux.core import deadline
from flux.core.artifact import Artifact
from flux.core.attributes import AttributeStore
from flux.core.backend import Backend, Labels, Matrix, resolve_params
from flux.core.filters import Answer, Filter, Planner
from flux.core.ids import Ids
from flux.errors import InvalidArgument, ItemNotFound

#: Distinct search-parameter overrides whose resolution an index remembers.
_RESOLVED_CACHE = 256


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_k: int = 1024
    max_batch: int = 1024


@dataclass(frozen=True)
class Hits:
    """The answer to one query: ids and distances, nearest first."""

    ids: list[str]
    distances: Matrix


class ServedIndex:
    """Answers queries against one loaded artifact, in terms of string ids.

    Thread-safe: it holds no per-request state. A request that holds a reference
    keeps this version alive until it finishes, whatever is swapped in meanwhile.
    """

    def __init__(
        self,
        name: str,
        artifact: Artifact,
        *,
        default_params: Mapping[str, float] | None = None,
        limits: Limits = Limits(),
        batch_threads: int = 1,
    ) -> None:
        self.name = name
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.backend: Backend = artifact.backend
        self.limits = limits
        self.batch_threads = batch_threads
        self.ids = Ids(artifact.ids)  # grows with upserts (flux.core.writes)
        # A backend that does not declare thread-safe search gets one search at a time.
        thread_safe = type(self.backend).capabilities.thread_safe_search
        self._serial: AbstractContextManager[object] = nullcontext() if thread_safe else threading.Lock()
        spec = type(self.backend).search_params
        defaults = {n: p.default for n, p in spec.items()}
        self.default_params = resolve_params(spec, defaults, default_params or {}, "search_params")
        self._resolved: dict[tuple[tuple[str, float], ...], dict[str, float]] = {}
        #: The items' attributes, by label; the write path changes them (``set``, ``clear``).
        self.attributes = artifact.attributes or AttributeStore.empty(len(artifact.ids))
        #: Plans the filtered queries (flux.core.filters); its learnt costs are public, for tools and tests.
        self.planner = Planner(self.nearest, self.backend, self.attributes, self.labels_of, artifact.filter_vectors)

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def check_dimension(self, dimension: int, field: str) -> None:
        if dimension != self.dimension:
            raise InvalidArgument(
                f"{field}.dimension is {dimension}, but index {self.name!r} has dimension {self.dimension}",
                field=f"{field}.dimension",
            )

    def check_k(self, k: int, field: str = "k") -> None:
        if not 1 <= k <= self.limits.max_k:
            raise InvalidArgument(f"{field} must be between 1 and {self.limits.max_k}, got {k}", field=field)

    def params(self, overrides: Mapping[str, float], field: str = "params") -> dict[str, float]:
        """Merge ``overrides`` over this index's defaults, validated against the backend's knobs."""
        if not overrides:
            return self.default_params
        # Clients tend to send the same few overrides on every call: resolve each once.
        key = tuple(overrides.items())
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = resolve_params(type(self.backend).search_params, self.default_params, overrides, field)
            if len(self._resolved) < _RESOLVED_CACHE:
                self._resolved[key] = resolved
        return resolved

    def search(self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1) -> list[Hits]:
        """Search already-validated queries; one ``Hits`` per row."""
        return self._hits(*self.nearest(queries, k, params, threads=threads))

    def nearest(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        """The backend's answer to already-validated queries: q x k labels and distances, padded
        with label -1 where fewer than k were found. The serving path encodes these directly."""
        with self._serial:
            return self.backend.search(queries, k, params, threads=threads)

    def ids_of(self, labels: Labels) -> np.ndarray:
        """The id of each label, in the shape of ``labels`` (which must all be >= 0), as str or
        UTF-8 bytes (``flux.core.ids.packed``): for protobuf string fields, which take either."""
        return self.ids.of(labels)

    def search_batch(self, queries: Matrix, ks: Sequence[int], params: Sequence[Mapping[str, float]]) -> list[Hits]:
        """Search rows that may each have their own k and params, grouping rows that share params."""
        if len(set(ks)) == 1 and all(p is params[0] for p in params):
            return self.search(queries, ks[0], params[0], threads=self.batch_threads)
        groups: dict[tuple[tuple[str, float], ...], list[int]] = {}
        for row, p in enumerate(params):
            groups.setdefault(tuple(sorted(p.items())), []).append(row)
        results: list[Hits | None] = [None] * len(queries)
        for key, rows in groups.items():
            deadline.check()  # a search per group of rows sharing params: stop when the caller has given up
            k_max = max(ks[r] for r in rows)
            hits = self.search(queries[rows], k_max, dict(key), threads=self.batch_threads)
            for row, hit in zip(rows, hits, strict=True):
                results[row] = Hits(hit.ids[: ks[row]], hit.distances[: ks[row]])
        return [r for r in results if r is not None]

    def search_by_id(self, item_id: str, k: int, params: Mapping[str, float]) -> Hits:
        """The k nearest neighbours of a stored item, the item itself excluded."""
        label = self.label_of(item_id)
        try:
            vector = self.backend.get_vectors(np.array([label], np.int64))
        except KeyError:  # deleted since the lookup
            raise ItemNotFound(f"index {self.name!r} has no item with id {item_id!r}", field="id") from None
        with self._serial:
            labels, distances = self.backend.search(vector, k + 1, params)
        keep = labels[0] != label
        return self._hits(labels[:, keep][:, :k], distances[:, keep][:, :k])[0]

    def search_filtered(
        self,
        queries: Matrix,
        ks: Sequence[int],
        params: Sequence[Mapping[str, float]],
        filters: Sequence[Filter | None],
        *,
        threads: int = 1,
    ) -> list[Answer]:
        """Search already-validated queries, each with its own k, params and filter (None for none);
        the planner (flux.core.filters) chooses per query how."""
        return self.planner.search(queries, ks, params, filters, threads=threads)

    def search_by_id_filtered(self, item_id: str, k: int, params: Mapping[str, float], query_filter: Filter) -> Answer:
        """The k nearest neighbours of a stored item that pass ``query_filter``, the item itself excluded."""
        label = self.label_of(item_id)
        try:
            vector = self.backend.get_vectors(np.array([label], np.int64))
        except KeyError:  # deleted since the lookup
            raise ItemNotFound(f"index {self.name!r} has no item with id {item_id!r}", field="id") from None
        itself = replace(query_filter, exclude_ids=(*query_filter.exclude_ids, item_id))
        return self.planner.search(vector, [k], [params], [itself])[0]

    def labels_of(self, ids: Iterable[str]) -> Labels:
        """The labels of those of ``ids`` the index holds; the others are left out."""
        return np.fromiter((label for label in map(self.ids.label, ids) if label is not None), np.int64)

    def label_of(self, item_id: str) -> int:
        label = self.ids.label(item_id)
        if label is None:
            raise ItemNotFound(f"index {self.name!r} has no item with id {item_id!r}", field="id")
        return label

    def _hits(self, labels: np.ndarray, distances: Matrix) -> list[Hits]:
        found = (labels >= 0).sum(axis=1)
        k = labels.shape[1]
        ids = self.ids.strings(np.where(labels >= 0, labels, 0).ravel())  # one lookup for every row
        return [Hits(ids[row * k : row * k + n], distances[row, :n]) for row, n in enumerate(found.tolist())]
