"""The backend interface: what an ANN library adapter implements to be served by Flux.

A backend knows vectors and integer labels only. Labels are the row numbers of
the matrix the index was built from (0 .. n-1); Flux keeps the string ids and
maps between the two. A backend knows nothing of gRPC, ids, artifacts or config.

Distances follow one convention whatever the library says, so that results from
different backends compare (smaller is nearer):

* ``l2``: squared Euclidean distance
* ``cosine``: 1 - cosine similarity
* ``ip``: 1 - dot product

See ``backends/README.md`` for a guide and ``flux.testing`` for the conformance kit.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from flux_core.errors import InvalidArgument

#: The interface version this Flux implements. A backend declares the version it was
#: written against; Flux refuses versions it does not support.
API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
#: Called during long work with (done, total) so callers can show progress.
Progress = Callable[[int, int], None]
#: One flag per label, True where the label may be returned (``Backend.search_filtered``).
Mask = npt.NDArray[np.bool_]
#: Labels per ``get_vectors`` call of the default ``Backend.vector_blocks``.
VECTORS_PER_BLOCK = 256
_NO_LABELS: Labels = np.empty(0, np.int64)
_NO_LABELS.flags.writeable = False


@dataclass(frozen=True, eq=False)  # compared by identity: arrays have no single truth value
class Allowed:
    """Which labels a filtered search (``Backend.search_filtered``) may return.

    With a ``mask``: the labels True in it (a read-only bool array over labels; a label at or
    past its end is not allowed). Without one: every item the index holds except the labels in
    ``excluded`` (ascending, distinct, read-only). A filter that only leaves ids out, a user's
    already-played tracks, comes the second way: a mask costs time in proportion to the index on
    every query (about 20 ms at 30 million labels), a list of excluded labels only what it holds.
    """

    mask: Mask | None = None
    excluded: Labels = field(default_factory=lambda: _NO_LABELS)  # without a mask only

    def flags(self, size: int) -> Mask:
        """A new array of one flag per label below ``size``: for a library that takes a mask. Building
        it reads or writes every label, so a library that takes a list of labels to leave out should
        take ``excluded`` instead when there is no mask."""
        if self.mask is None:
            flags = np.ones(size, np.bool_)
            flags[self.excluded[self.excluded < size]] = False
            return flags
        flags = np.zeros(size, np.bool_)
        covered = min(size, len(self.mask))
        flags[:covered] = self.mask[:covered]
        return flags


class Metric(StrEnum):
    """How distance is measured. The value is the name used in configs and manifests."""

    L2 = "l2"
    COSINE = "cosine"
    IP = "ip"


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares it can do. The conformance kit selects its tests by these."""

    mutable: bool = False
    """Items can be added or replaced after build (``add``)."""
    supports_delete: bool = False
    """Items can be removed (``delete``)."""
    filterable: bool = False
    """``search_filtered`` returns only the items a mask over labels allows, filtering inside the search."""
    mmap_load: bool = False
    """``load`` memory-maps the files, so processes share one copy of the pages."""
    thread_safe_search: bool = True
    """``search`` may be called from several threads at once on one instance."""


@dataclass(frozen=True)
class Param:
    """A numeric knob a backend accepts at build or search time, with its bounds."""

    default: float
    minimum: float
    maximum: float
    integer: bool = True
    doc: str = ""

    def coerce(self, name: str, value: float) -> float:
        """Return ``value`` checked against the bounds, or raise ValueError saying what is allowed."""
        if value != value or not self.minimum <= value <= self.maximum:  # NaN fails both
            raise ValueError(f"{name} must be between {_fmt(self.minimum)} and {_fmt(self.maximum)}, got {_fmt(value)}")
        if self.integer:
            if value != int(value):
                raise ValueError(f"{name} must be a whole number, got {value}")
            return int(value)
        return float(value)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class Backend(ABC):
    """An index of float32 vectors under integer labels, adapted from one ANN library.

    Lifecycle: ``build`` (offline) or ``load`` (serving) makes an instance; ``search``
    answers queries for as long as it is served; ``close`` releases it. Construction
    through ``__init__`` must stay cheap: expensive work belongs in ``build``/``load``.

    Thread safety: when ``capabilities.thread_safe_search`` is true, ``search``,
    ``get_vectors``, ``vector_blocks``, ``__len__`` and ``stats`` may run concurrently from
    many threads. Long library calls must release the GIL so that searches run in parallel.

    Errors: raise ``ValueError`` for arguments the caller got wrong, ``KeyError`` for
    unknown labels, ``OSError`` for unreadable files and ``NotImplementedError`` for an
    operation the capabilities do not declare. Flux validates dimension, finiteness, k
    and params before calling ``search``, so a backend need not check them again.
    """

    #: The short name used in configs and on the command line (``hnsw``, ``annoy``, ...).
    name: ClassVar[str]
    #: The version of this interface the backend implements (see ``API_VERSION``).
    api_version: ClassVar[int] = API_VERSION
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Knobs accepted by ``build``; values arrive validated and with defaults filled in. Where a
    #: knob means what one of Flux's own backends calls it, reuse that name: ``M`` (graph degree),
    #: ``ef_construction`` (build beam), ``n_trees``, ``nlist`` (lists of an inverted file), ``seed``.
    build_params: ClassVar[Mapping[str, Param]] = {}
    #: Knobs accepted by ``search``; values arrive validated and with defaults filled in. Reuse
    #: ``ef`` (search beam), ``search_k`` (nodes inspected), ``nprobe`` (lists scanned) where they
    #: mean the same. More of a search knob must not lower recall (the kit checks it).
    search_params: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, dimension: int, metric: Metric) -> None:
        self.dimension = dimension
        self.metric = metric

    @classmethod
    @abstractmethod
    def library_version(cls) -> str:
        """The name and version of the library behind the backend, e.g. ``hnswlib 0.8.0``."""

    @classmethod
    @abstractmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> Backend:
        """Build an index over ``vectors`` (n x d, C-contiguous float32); row i gets label i.

        ``n`` may be 0. Call ``progress(done, n)`` now and then when the library allows it, on the
        thread that called ``build``: a caller may keep state per thread (Beam's metrics do).

        ``threads`` bounds the threads this call may use (``flux build --threads``; ``search``
        gets its own). An OpenMP library (faiss) otherwise runs every parallel region on all
        cores: call ``omp_set_num_threads(threads)`` in the calling thread before the library
        call. OpenMP keeps that setting per calling thread, so calls on other threads keep theirs.
        """

    @abstractmethod
    def save(self, directory: Path) -> list[str]:
        """Write the index into the existing, empty ``directory``; return the file names written."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, dimension: int, metric: Metric, count: int) -> Backend:
        """Open an index that ``save`` wrote into ``directory`` and that holds ``count`` items.

        Raise ``ValueError`` (or ``OSError``, ``RuntimeError``) when the files hold another
        count or dimension, are cut short, or do not belong together: never serve them."""

    @abstractmethod
    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        """Return the labels and distances of the ``k`` nearest items to each query.

        ``queries`` is q x d float32, C-contiguous and read-only: usually a view of the
        request's own bytes, never copied on the way; copy it if the library must write
        (or insists on a writable array). Both results are q x k, nearest first. Where
        fewer than k items can be returned, the row is padded with label -1 and
        distance +inf. ``k`` may exceed ``len(self)``.

        Whatever ``params`` say, a row holds k results whenever the index holds k items: a
        search budget below k (``ef`` < k, too few lists probed) is raised to what k results
        need. hnswlib raises ``ef`` to k itself; faiss's ``efSearch`` is not raised, and returns
        fewer. ``threads`` bounds the threads the call may use: 1 for a single query, the
        server's ``search_threads`` for a batch, while other calls run on other gRPC threads
        (for OpenMP libraries see ``build``).
        """

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Allowed, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        """As ``search``, but only the items ``allowed`` allows may be returned.

        Only for ``capabilities.filterable`` backends. ``allowed`` (a mask over labels, or the
        labels left out of every item the index holds) is shared by every query row.
        ``depth`` (at least k) is how many of the nearest items, allowed or not, the search
        should take in for the k nearest allowed ones to be among them: Flux sizes it from the
        share of items allowed and from how many excluded items lie near the query. A graph
        backend searches with a beam of at least ``depth`` (``ef``). Each row holds the k
        nearest allowed items found, nearest first, padded with label -1 and distance +inf
        only where fewer than k items are allowed.
        """
        raise NotImplementedError(f"the {self.name} backend does not filter inside its search")

    def add(self, vectors: Matrix, labels: Labels) -> None:
        """Insert items under ``labels``, replacing the vector of a label already present.

        ``vectors`` is read-only, as ``queries`` of ``search`` is. The labels of one call are
        distinct (Flux keeps the last vector of an id written twice) and not negative.

        Only for ``capabilities.mutable`` backends; may run concurrently with ``search``
        (the backend makes that safe). A deleted label may be added again.
        """
        raise NotImplementedError(f"the {self.name} backend is immutable; build and publish a new version instead")

    def delete(self, labels: Labels) -> None:
        """Remove items so that no search returns them again; a label not present raises KeyError.

        Only for ``capabilities.supports_delete`` backends; may run concurrently with ``search``.
        """
        raise NotImplementedError(f"the {self.name} backend cannot delete items; build and publish a new version")

    @abstractmethod
    def get_vectors(self, labels: Labels) -> Matrix:
        """Return the stored vectors of ``labels`` (as the index keeps them: cosine
        backends may return them normalised)."""

    def vector_blocks(self, labels: Labels) -> Iterator[tuple[Labels, Matrix]]:
        """The stored vectors of ``labels`` (distinct labels that hold items), a block at a time.

        Yields (labels, vectors) pairs that together hold every label of ``labels`` once, in
        any order and blocks of any size, the vectors as ``get_vectors`` returns them. For
        reading many or all items while the index serves (the activation gate reads every
        one): a backend whose ``get_vectors`` holds the GIL for long on many labels yields
        blocks it can read cheaply or with the GIL released. By default, ``get_vectors`` on
        ``VECTORS_PER_BLOCK`` labels at a time.
        """
        for start in range(0, len(labels), VECTORS_PER_BLOCK):
            block = labels[start : start + VECTORS_PER_BLOCK]
            yield block, self.get_vectors(block)

    @abstractmethod
    def __len__(self) -> int:
        """The number of items that searches can return."""

    def stats(self) -> dict[str, Any]:
        """Free-form numbers worth showing an operator (memory, parameters in effect)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what the instance holds. Searches never run after close."""


def pad_results(labels: Labels, distances: Matrix, k: int) -> tuple[Labels, Matrix]:
    """Pad q x k' results (k' <= k) to q x k with label -1 and distance +inf."""
    missing = k - labels.shape[1]
    if missing <= 0:
        return labels, distances
    q = labels.shape[0]
    return (
        np.hstack([labels.astype(np.int64, copy=False), np.full((q, missing), -1, np.int64)]),
        np.hstack([distances.astype(np.float32, copy=False), np.full((q, missing), np.inf, np.float32)]),
    )


def resolve_params(
    spec: Mapping[str, Param], base: Mapping[str, float], overrides: Mapping[str, float], field: str
) -> dict[str, float]:
    """Merge ``overrides`` over ``base``, each checked against ``spec``; errors name ``field``."""
    merged = dict(base)
    for name, value in overrides.items():
        param = spec.get(name)
        if param is None:
            accepted = ", ".join(sorted(spec)) or "none"
            raise InvalidArgument(f"{field}: unknown parameter {name!r} (accepted: {accepted})", field=field)
        try:
            merged[name] = param.coerce(f"{field}.{name}", value)
        except ValueError as exc:
            raise InvalidArgument(str(exc), field=f"{field}.{name}") from None
    return merged


def defaults(spec: Mapping[str, Param]) -> dict[str, float]:
    """The default value of every knob in ``spec``."""
    return {name: param.default for name, param in spec.items()}


def params_from_pairs(pairs: Iterable[str], example: str = "M=32") -> dict[str, float]:
    """Params as command lines take them (``-p NAME=NUMBER``, repeated); checked against a backend later."""
    params: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            params[name.strip()] = float(value)
        except ValueError:
            raise InvalidArgument(f"parameter {pair!r} must look like NAME=NUMBER, e.g. {example}") from None
    return params


class ReadWriteGate:
    """For backends whose library is not safe when writes overlap reads (hnswlib, Voyager).

    Readers run together and a writer runs alone. A reader may name a ``mode`` for state
    the library keeps index-wide (hnswlib's ``ef``): readers of one mode run together, and
    a switch waits until no reader runs, then calls ``on_switch(mode)``. ``mode`` None
    reads without caring which mode is set.

    The gate is phase-fair: once anyone waits (a writer, or a reader of another mode), the
    door closes to newcomers of the running phase, and phases are let in oldest first. So
    no caller waits longer than the calls already inside plus the phases queued before its
    own; a steady stream at one ``ef`` can neither starve another ``ef`` nor a write.
    Waiting readers of one mode share one queued phase and enter together.
    """

    def __init__(self, on_switch: Callable[[Any], None] | None = None) -> None:
        self._on_switch = on_switch
        self._cond = threading.Condition()
        self._mode: Any = None
        self._readers = 0
        self._writing = False
        self._queue: deque[_Phase] = deque()  # phases waiting to run, oldest first

    @property
    def waiting(self) -> int:
        """How many callers wait at the gate now (for stats and tests)."""
        with self._cond:
            return sum(phase.members for phase in self._queue)

    @contextmanager
    def reading(self, mode: Any = None) -> Iterator[None]:
        self.enter_reading(mode)
        try:
            yield
        finally:
            self.exit_reading()

    def enter_reading(self, mode: Any = None) -> None:
        """``reading`` without the context manager, for a backend's search path: every
        ``enter_reading`` must be followed by one ``exit_reading``, in a ``finally``."""
        with self._cond:
            if self._queue or self._writing or (self._readers and not _joins(mode, self._mode)):
                self._wait(self._reading_phase(mode))
            else:
                if not self._readers:
                    self._switch(mode)
                self._readers += 1

    def exit_reading(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._admit_next()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            if self._queue or self._writing or self._readers:
                phase = _Phase(write=True)
                self._queue.append(phase)
                self._wait(phase)
            else:
                self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._admit_next()

    def _reading_phase(self, mode: Any) -> _Phase:
        """The queued phase this reader joins: the oldest reading one of its mode, else a new one at the back."""
        for phase in self._queue:
            if not phase.write and (_joins(mode, phase.mode) or phase.mode is None):
                if phase.mode is None:
                    phase.mode = mode
                phase.members += 1
                return phase
        phase = _Phase(write=False, mode=mode)
        self._queue.append(phase)
        return phase

    def _wait(self, phase: _Phase) -> None:
        while not phase.admitted:
            self._cond.wait()

    def _admit_next(self) -> None:
        """Let the oldest waiting phase in; called with the lock held once the gate is empty."""
        if not self._queue:
            return
        phase = self._queue.popleft()
        if phase.write:
            self._writing = True
        else:
            self._switch(phase.mode)
            self._readers += phase.members
        phase.admitted = True
        self._cond.notify_all()

    def _switch(self, mode: Any) -> None:
        if mode is not None and mode != self._mode:
            if self._on_switch is not None:
                self._on_switch(mode)
            self._mode = mode


@dataclass
class _Phase:
    """Callers that will run together: one writer, or readers of one mode."""

    write: bool
    mode: Any = None
    members: int = 1
    admitted: bool = False


def _joins(mode: Any, running: Any) -> bool:
    """Whether a reader of ``mode`` may share the index with readers of ``running``."""
    return mode is None or mode == running
