"""A served index: a loaded artifact plus the rules every query to it must follow."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import numpy as np

from flux.core.query.filters import Filter, Planner
from flux.core.query.request import FilterSpec, IdArray, Query, Result
from flux_core.backend import Backend, Labels, Matrix, resolve_params
from flux_core.errors import InvalidArgument, ItemNotFound, Reason, shown
from flux_core.storage.artifact import Artifact
from flux_core.storage.attributes import AttributeStore
from flux_core.storage.ids import Ids
from flux_core.vectors import check_vectors

#: Distinct search-parameter overrides whose resolution an index remembers.
_RESOLVED_CACHE = 256


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_k: int = 1024
    max_batch: int = 1024
    max_id_bytes: int = 1024  # UTF-8; every answer carries k ids per query, so one long id costs every reader


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
        self.ids = Ids(artifact.ids)  # grows with upserts (flux.core.writes.writer)
        # A backend that does not declare thread-safe search gets one search at a time.
        thread_safe = type(self.backend).capabilities.thread_safe_search
        self._serial: AbstractContextManager[object] = nullcontext() if thread_safe else threading.Lock()
        spec = type(self.backend).search_params
        defaults = {n: p.default for n, p in spec.items()}
        self.default_params = resolve_params(spec, defaults, default_params or {}, "search_params")
        self._resolved: dict[tuple[tuple[str, float], ...], dict[str, float]] = {}
        #: The items' attributes, by label; the write path changes them (``set``, ``clear``).
        self.attributes = artifact.attributes or AttributeStore.empty(len(artifact.ids))
        #: Plans the filtered queries (flux.core.query.filters); its fixed cost model is public, for tools and tests.
        self.planner = Planner(self.nearest, self.backend, self.attributes, self.excluded_of, artifact.filter_vectors)

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

    def check_ids(self, ids: Sequence[str], field: str) -> None:
        """Ids a write would store must fit ``limits.max_id_bytes`` (UTF-8): answers carry them, k per query."""
        limit = self.limits.max_id_bytes
        if max(map(len, ids), default=0) <= limit // 4:  # UTF-8 takes at most 4 bytes per character
            return
        for row, item in enumerate(ids):
            if len(item) > limit // 4 and (size := len(item.encode("utf-8", "surrogatepass"))) > limit:
                raise InvalidArgument(
                    f"{field}[{row}] is {size} bytes long (UTF-8); ids may be at most {limit} bytes "
                    "(limits.max_id_bytes): use a shorter id, e.g. a hash of a long key",
                    field=f"{field}[{row}]",
                    reason=Reason.ID_TOO_LONG,
                )

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

    def answer(self, query: Query) -> Result:
        """The one entry point of every search: validate ``query``, then answer it the cheapest way.

        A plain query (no per-row k or params, no filter) is one backend call, encoded straight from
        its label matrix; rows with their own k or params, and filtered rows, go to the planner
        (``flux.core.query.filters``), which groups rows that share params and chooses per filter how. A
        search by id looks the item's vector up and leaves the item itself out of its answer.
        """
        vectors, exclude = self._query_vectors(query)
        k = query.k
        self.check_k(k)
        params = self.params(query.params)
        threads = self.batch_threads if query.batch else 1
        shared = self._filter(query.filter, "filter", exclude)
        if not query.overrides and shared is None:
            if exclude is None:
                labels, distances = self.nearest(vectors, k, params, threads=threads)
                return Result.from_padded(labels, distances, self.ids_of, k, self.name, self.version)
            return self._by_id(vectors, exclude, k, params)
        ks, rows_params, filters = self._rows(query, len(vectors), k, params, shared, exclude)
        answers = self.planner.search(vectors, ks, rows_params, filters, threads=threads)
        return Result.from_answers(answers, self.ids_of, self.name, self.version)

    def search(self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1) -> list[list[str]]:
        """The ids of the k nearest neighbours of already-validated queries, row by row (for tools and checks)."""
        labels, _ = self.nearest(queries, k, params, threads=threads)
        return [self.ids.strings(row[row >= 0]) for row in labels]

    def nearest(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        """The backend's answer to already-validated queries: q x k labels and distances, padded
        with label -1 where fewer than k were found."""
        with self._serial:
            return self.backend.search(queries, k, params, threads=threads)

    def ids_of(self, labels: Labels) -> IdArray:
        """The id of each label, in the shape of ``labels`` (which must all be >= 0), as str or
        UTF-8 bytes (``flux_core.storage.ids.packed``): for protobuf string fields, which take either."""
        return self.ids.of(labels)

    # -- validating and planning a query --------------------------------------------------------

    def _query_vectors(self, query: Query) -> tuple[Matrix, _Itself | None]:
        """The query rows, checked; for a search by id, the item's vector and the item to leave out."""
        if query.item_id is not None:
            label = self.label_of(query.item_id)
            try:
                vector = self.backend.get_vectors(np.array([label], np.int64))
            except KeyError:  # deleted since the lookup
                raise self._no_item(query.item_id) from None
            return vector, _Itself(query.item_id, label)
        vectors, name = query.vectors, query.vectors_field
        assert vectors is not None, "a query names vectors or an item"
        self.check_dimension(query.dimension, name)
        check_vectors(vectors, name)
        if not query.batch and len(vectors) != 1:
            raise InvalidArgument(
                f"{name} must hold exactly one vector, got {len(vectors)}; use BatchSearch for several", field=name
            )
        if len(vectors) > self.limits.max_batch:
            raise InvalidArgument(
                f"{name} holds {len(vectors)} vectors; the limit is {self.limits.max_batch} per call, split the batch",
                field=name,
                reason=Reason.BATCH_TOO_LARGE,
            )
        return vectors, None

    def _filter(self, spec: FilterSpec | None, field: str, exclude: _Itself | None) -> Filter | None:
        """``spec`` validated, with the searched-by item excluded when there is one."""
        if spec is None:
            return None
        found = Filter.create(
            allow=spec.allow,
            deny=spec.deny,
            exclude_ids=spec.exclude_ids,
            max_per_tag=spec.max_per_tag,
            exclude_id_hashes=spec.exclude_id_hashes,
            field=field,
        )
        if found is not None and exclude is not None:
            found = replace(found, exclude_ids=(*found.exclude_ids, exclude.id))
        return found

    def _rows(
        self,
        query: Query,
        rows: int,
        k: int,
        params: Mapping[str, float],
        shared: Filter | None,
        exclude: _Itself | None,
    ) -> tuple[list[int], list[Mapping[str, float]], list[Filter | None]]:
        """Each row's k, params and filter, its override's over the query's."""
        if not query.overrides:
            return [k] * rows, [params] * rows, [shared] * rows
        if len(query.overrides) != rows:
            raise InvalidArgument(
                f"overrides has {len(query.overrides)} entries for {rows} queries; send none or one per query",
                field="overrides",
            )
        ks: list[int] = []
        rows_params: list[Mapping[str, float]] = []
        filters: list[Filter | None] = []
        for row, override in enumerate(query.overrides):
            row_k = override.k or k
            self.check_k(row_k, f"overrides[{row}].k")
            ks.append(row_k)
            own = override.params
            rows_params.append(self.params({**query.params, **own}, f"overrides[{row}].params") if own else params)
            own_filter = override.filter
            filters.append(
                shared if own_filter is None else self._filter(own_filter, f"overrides[{row}].filter", exclude)
            )
        return ks, rows_params, filters

    def _by_id(self, vector: Matrix, itself: _Itself, k: int, params: Mapping[str, float]) -> Result:
        """The k nearest neighbours of a stored item's vector, the item itself left out."""
        labels, distances = self.nearest(vector, k + 1, params)
        keep = labels[0] != itself.label
        labels, distances = labels[:, keep][:, :k], distances[:, keep][:, :k]
        return Result.from_padded(labels, distances, self.ids_of, k, self.name, self.version)

    def _no_item(self, item_id: str) -> ItemNotFound:
        return ItemNotFound(f"index {self.name!r} has no item with id {shown(item_id)}", field="id")

    def vectors_of(self, ids: Sequence[str], field: str = "ids") -> tuple[Matrix, list[bool]]:
        """The stored vectors of ``ids`` (len(ids) x dimension, zeros where not found) and which were found.

        At most ``limits.max_batch`` ids, at least one; an id the index does not hold (or that was
        deleted meanwhile) is not found, which is no error.
        """
        if not ids:
            raise InvalidArgument(f"{field} is empty; send at least one id", field=field, reason=Reason.EMPTY_BATCH)
        if len(ids) > self.limits.max_batch:
            raise InvalidArgument(
                f"{field} holds {len(ids)} ids; the limit is {self.limits.max_batch} per call, split the request",
                field=field,
                reason=Reason.BATCH_TOO_LARGE,
            )
        labels = [self.ids.label(item) for item in ids]
        found = [label is not None for label in labels]
        out = np.zeros((len(ids), self.dimension), np.float32)
        rows = [row for row, ok in enumerate(found) if ok]
        if rows:
            wanted = np.array([labels[row] for row in rows], np.int64)
            try:
                out[rows] = self.backend.get_vectors(wanted)
            except KeyError:  # some deleted since the lookup: ask one at a time
                for row, label in zip(rows, wanted.tolist(), strict=True):
                    try:
                        out[row] = self.backend.get_vectors(np.array([label], np.int64))[0]
                    except KeyError:
                        found[row] = False
        return out, found

    def labels_of(self, ids: Iterable[str]) -> Labels:
        """The labels of those of ``ids`` the index holds; the others are left out."""
        return self.ids.labels(ids)

    def excluded_of(self, query_filter: Filter) -> Labels:
        """The labels of the items ``query_filter`` leaves out by id, by either field (unsorted, maybe twice)."""
        hashes = query_filter.exclude_id_hashes
        if not len(hashes):
            return self.ids.labels(query_filter.exclude_ids)
        by_hash = self.ids.labels_by_hash(hashes)
        if not query_filter.exclude_ids:
            return by_hash
        return np.concatenate((self.ids.labels(query_filter.exclude_ids), by_hash))

    def label_of(self, item_id: str) -> int:
        label = self.ids.label(item_id)
        if label is None:
            raise self._no_item(item_id)
        return label


@dataclass(frozen=True)
class _Itself:
    """The stored item a search by id starts from, which its answer leaves out."""

    id: str
    label: int
