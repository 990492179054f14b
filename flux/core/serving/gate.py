"""The activation gate: a new version answers nobody until it has warmed up and proved its quality.

Warm-up queries touch the index's pages before real traffic does. The canary then
measures, on a sample of queries, recall@k against exact search over the new
version's own vectors, and overlap@k with the version being replaced. A version
below either threshold stays out of service and the reason is recorded.

An artifact built by Flux carries its canary: sample queries with their exact neighbours,
computed once by the builder (flux_core.storage.canary). The gate then searches those queries
and compares, and reads no stored vector. Otherwise (an artifact from before canaries, a
snapshot of a writable index, a gate asking for more queries or neighbours than stored) it
samples queries from the stored vectors and finds their neighbours by exact search:

The exact search reads every stored vector while the active version serves. They come
from the artifact's own float32 copy of the vectors when it has one, else from the
backend's ``vector_blocks``: hnsw reads them from its index file, with the GIL released,
where hnswlib's ``get_items`` would hold it about 6 us a vector at 128 dimensions (0.6 s
for 100,000); other backends' blocks come from ``get_vectors``, a few hundred at a time,
with a pause after each read that lets the request threads take the GIL back. Blocks are
read in a thread at the caller's priority and ranked, several thousand vectors at a time,
at low priority by code that lets go of the GIL for all but a few moments a block
(``quality.Nearest``), in two threads where there are two cores.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from flux.core.serving.index import ServedIndex
from flux_core.backend import Labels, Matrix
from flux_core.quality import Nearest, overlap
from flux_core.storage.background import Pacer, at_low_priority
from flux_core.storage.canary import Canary, moved

T = TypeVar("T")

#: Queries searched between two pauses of a paced gate: a fraction of a millisecond of search.
SLICE_QUERIES = 4
#: The pause after each block read from the backend: a request thread waiting for the GIL gets it.
PAUSE_SECONDS = 0.0005
#: Vectors ranked at a time (smaller blocks from the backend are put together): few moments of
#: GIL per block for the low-priority ranking, and about 6 MB of scores per block for 200 queries.
ROWS_PER_BLOCK = 8192
#: Blocks read ahead of the ranking: bounds the memory the gate takes.
_BLOCKS_AHEAD = 4
#: Threads that rank blocks at once, each at low priority: they take what serving leaves of a
#: core (and a small share of a busy one), so two finish in about half the time one would.
SCAN_THREADS = max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class GateConfig:
    warmup_queries: int = 32
    canary_queries: int = 0  # 0 turns the canary off
    k: int = 10
    min_recall: float = 0.0
    min_overlap: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class GateReport:
    passed: bool
    warmup_queries: int = 0
    canary_queries: int = 0
    k: int = 0
    recall: float = 0.0
    overlap: float = 0.0
    reason: str = ""
    seconds: float = 0.0  # how long the gate took
    truth: str = ""  # where the canary's exact neighbours came from: "stored" (built with it) or "scan"


def run(
    candidate: ServedIndex, active: ServedIndex | None, config: GateConfig, pacer: Pacer | None = None
) -> GateReport:
    """Warm ``candidate`` up and, when configured, compare it with exact search and with ``active``.

    With ``pacer`` (a server readying a version while it serves), the searches run a few queries
    at a time with a pause after each. Without, the candidate's run in one call at low priority
    (it serves nobody yet and its searches let go of the GIL), and the active version's at the
    usual priority (a request waiting at its backend's gate must not wait on a thread the kernel
    puts off).
    """
    started = time.perf_counter()
    count = len(candidate.backend)
    if count == 0:
        return GateReport(passed=True, reason="empty index: nothing to check")
    rng = np.random.default_rng(config.seed)
    k = min(config.k, count)
    params = candidate.default_params
    warmup = _sample(candidate, rng, config.warmup_queries)
    if len(warmup):
        _in_slices(lambda part: candidate.nearest(part, k, params), warmup, pacer)
    if config.canary_queries <= 0:
        return GateReport(passed=True, warmup_queries=len(warmup), k=k, seconds=time.perf_counter() - started)

    stored = _stored_canary(candidate, config.canary_queries, k)
    queries = stored.queries[: config.canary_queries] if stored else _sample(candidate, rng, config.canary_queries)
    labels = np.concatenate(
        [part for part, _ in _in_slices(lambda part: candidate.nearest(part, k, params), queries, pacer)]
    )
    recall = _recall(labels, stored.labels[: len(queries), :k]) if stored else exact_recall(candidate, queries, labels)
    agreement = 1.0
    if active is not None and active.dimension == candidate.dimension:
        found = [candidate.ids.strings(row[row >= 0]) for row in labels]
        parts = _in_slices(lambda part: active.search(part, k, active.default_params), queries, pacer, low=False)
        current = [row for part in parts for row in part]
        agreement = overlap(found, current, k)
    reasons = []
    if recall < config.min_recall:
        reasons.append(f"recall@{k} {recall:.3f} is below {config.min_recall}")
    if active is not None and agreement < config.min_overlap:
        reasons.append(f"overlap@{k} with version {active.version} {agreement:.3f} is below {config.min_overlap}")
    return GateReport(
        passed=not reasons,
        warmup_queries=len(warmup),
        canary_queries=len(queries),
        k=k,
        recall=recall,
        overlap=agreement,
        reason="; ".join(reasons),
        seconds=time.perf_counter() - started,
        truth="stored" if stored else "scan",
    )


def _in_slices(search: Callable[[Matrix], T], queries: Matrix, pacer: Pacer | None, *, low: bool = True) -> list[T]:
    """``search`` of ``queries``: SLICE_QUERIES at a time with ``pacer``'s pause after each, else in
    one call, at low priority when ``low``."""
    if pacer is None:
        return [at_low_priority(lambda: search(queries)) if low else search(queries)]
    results = []
    for start in range(0, len(queries), SLICE_QUERIES):
        results.append(search(queries[start : start + SLICE_QUERIES]))
        pacer.pause()
    return results


def _stored_canary(index: ServedIndex, queries: int, k: int) -> Canary | None:
    """The artifact's canary when it covers the gate's queries and k, and every label it was built
    with still holds its item (a snapshot of a writable index may have moved on)."""
    canary = index.artifact.canary
    if canary is None or not canary.covers(queries, k) or len(index.backend) != index.manifest.count:
        return None
    live = index.ids.live()
    return canary if len(live) == index.manifest.count and _as_built(live) else None


def _as_built(live: Labels) -> bool:
    """Whether the labels holding items are 0..n-1, as the builder gave them (``live`` ascending)."""
    return len(live) == 0 or live[-1] == len(live) - 1


def exact_recall(index: ServedIndex, queries: Matrix, found: Labels) -> float:
    """Recall@k of ``found`` (the labels ``index`` answered ``queries`` with, -1 padded) against exact
    search over ``index``'s stored vectors."""
    live = index.ids.live()  # a snapshot of a writable index has labels without items
    copy = index.artifact.filter_vectors
    if copy is not None and (len(live) == 0 or live[-1] < len(copy)):
        source = _from_copy(copy, live)
    else:
        source = index.backend.vector_blocks(live)
    parts = [Nearest(queries, index.manifest.metric, found.shape[1]) for _ in range(SCAN_THREADS)]
    with _Reader(source) as reader, ThreadPoolExecutor(len(parts), thread_name_prefix="flux-gate") as pool:
        scans = [pool.submit(at_low_priority, partial(_scan, part, reader)) for part in parts]
        for scan in scans:
            scan.result()
    for part in parts[1:]:
        parts[0].merge(part)
    return _recall(found, parts[0].labels())


def _scan(nearest: Nearest, reader: _Reader) -> None:
    while (block := reader.next()) is not None:
        labels, vectors = block
        nearest.add(labels, nearest.scores(vectors))


def _recall(found: Labels, truth: Labels) -> float:
    """The share of ``truth``'s labels that ``found`` holds, query by query (-1 pads neither)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / found.size if found.size else 1.0


def _from_copy(copy: Matrix, live: Labels) -> Iterator[tuple[Labels, Matrix]]:
    """The artifact's vector copy in blocks (a slice when the labels are 0..n-1, as built)."""
    ranged = _as_built(live)
    for start in range(0, len(live), ROWS_PER_BLOCK):
        labels = live[start : start + ROWS_PER_BLOCK]
        yield labels, copy[start : start + len(labels)] if ranged else copy[labels]


class _Reader:
    """Reads ``source`` (a backend's ``vector_blocks``, or the artifact's copy) in a thread of its
    own, with a pause after each block, at the caller's priority: a thread that holds the GIL must
    not be one the kernel puts off. Blocks smaller than ``ROWS_PER_BLOCK`` are put together."""

    def __init__(self, source: Iterator[tuple[Labels, Matrix]]) -> None:
        self._source = source
        self._blocks: queue.Queue[tuple[Labels, Matrix] | BaseException | None] = queue.Queue(_BLOCKS_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="flux-gate-reader", daemon=True)

    def __enter__(self) -> _Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def next(self) -> tuple[Labels, Matrix] | None:
        """The next block, or None after the last; for any number of threads at once."""
        block = self._blocks.get()
        if block is None or isinstance(block, BaseException):
            self._blocks.put(block)  # the end, for the other threads too (it took the only item queued)
            if block is not None:
                raise block
            return None
        return block

    def _read(self) -> None:
        held: list[tuple[Labels, Matrix]] = []
        try:
            for block in self._source:
                held.append(block)
                if sum(len(labels) for labels, _ in held) >= ROWS_PER_BLOCK:
                    if not self._put(_joined(held)):
                        return
                    held = []
                time.sleep(PAUSE_SECONDS)
            if held and not self._put(_joined(held)):
                return
        except BaseException as exc:  # handed to the reading side
            self._put(exc)
            return
        self._put(None)

    def _put(self, item: tuple[Labels, Matrix] | BaseException | None) -> bool:
        """Queue ``item`` unless the reading side has gone; False when it has."""
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


def _joined(blocks: list[tuple[Labels, Matrix]]) -> tuple[Labels, Matrix]:
    if len(blocks) == 1:
        return blocks[0]
    return np.concatenate([labels for labels, _ in blocks]), np.concatenate([vectors for _, vectors in blocks])


def _sample(index: ServedIndex, rng: np.random.Generator, n: int) -> np.ndarray:
    """Stored vectors as queries, with a little noise so that no query is exactly an item."""
    live = index.ids.live()
    if n <= 0:
        return np.empty((0, index.dimension), np.float32)
    labels = rng.choice(live, size=n, replace=n > len(live))
    return moved(index.backend.get_vectors(labels.astype(np.int64)), rng)
