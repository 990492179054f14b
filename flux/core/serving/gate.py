"""The activation gate: a new version answers nobody until it has warmed up and proved its quality.

Warm-up queries touch the index's pages before real traffic does. The canary then
measures, on a sample of queries, recall@k against exact search over the new
version's own vectors, and overlap@k with the version being replaced. A version
below either threshold stays out of service and the reason is recorded.

The exact search reads every stored vector while the active version serves, and a
backend may hold the GIL while it copies vectors out (hnswlib does: about 6 us a vector
at 128 dimensions, 0.6 s for 100,000, on an idle core). So they are read a few hundred
at a time, with a pause after each read that lets the request threads take the GIL
back, while the distances are computed at low priority by code that lets go of the GIL
(``quality.Nearest``). An artifact's own float32 copy of the vectors, when it has one,
costs no GIL and is read instead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from flux.core.serving.index import ServedIndex
from flux.core.serving.quality import Nearest, overlap
from flux_core.backend import Backend, Labels, Matrix
from flux_core.storage.background import at_low_priority

#: Vectors per read from the backend: about 2 ms of GIL for hnswlib at 128 dimensions.
ROWS_PER_READ = 256
#: The pause after each read: a request thread waiting for the GIL gets it.
PAUSE_SECONDS = 0.0005
#: Vectors per block from the artifact's own copy, which costs no GIL to read.
_ROWS_PER_BLOCK = 4096
#: Blocks read ahead of the distance computation: bounds the memory the gate takes.
_BLOCKS_AHEAD = 32


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


def run(candidate: ServedIndex, active: ServedIndex | None, config: GateConfig) -> GateReport:
    """Warm ``candidate`` up and, when configured, compare it with exact search and with ``active``."""
    started = time.perf_counter()
    count = len(candidate.backend)
    if count == 0:
        return GateReport(passed=True, reason="empty index: nothing to check")
    rng = np.random.default_rng(config.seed)
    k = min(config.k, count)
    warmup = _sample(candidate, rng, config.warmup_queries)
    if len(warmup):
        candidate.search(warmup, k, candidate.default_params, threads=candidate.batch_threads)
    if config.canary_queries <= 0:
        return GateReport(passed=True, warmup_queries=len(warmup), k=k, seconds=time.perf_counter() - started)

    queries = _sample(candidate, rng, config.canary_queries)
    labels, _ = candidate.nearest(queries, k, candidate.default_params, threads=candidate.batch_threads)
    recall = exact_recall(candidate, queries, labels)
    agreement = 1.0
    if active is not None and active.dimension == candidate.dimension:
        found = [candidate.ids.strings(row[row >= 0]) for row in labels]
        current = active.search(queries, k, active.default_params, threads=active.batch_threads)
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
    )


def exact_recall(index: ServedIndex, queries: Matrix, found: Labels) -> float:
    """Recall@k of ``found`` (the labels ``index`` answered ``queries`` with, -1 padded) against exact
    search over ``index``'s stored vectors."""
    live = index.ids.live()  # a snapshot of a writable index has labels without items
    nearest = Nearest(queries, index.manifest.metric, found.shape[1])
    copy = index.artifact.filter_vectors
    if copy is not None and (len(live) == 0 or live[-1] < len(copy)):
        at_low_priority(lambda: _scan(nearest, _from_copy(copy, live)))
    else:
        with _Reader(index.backend, live) as reader:
            at_low_priority(lambda: _scan(nearest, reader.blocks()))
    return _recall(found, nearest.labels())


def _scan(nearest: Nearest, blocks: Iterator[tuple[Labels, Matrix]]) -> None:
    for labels, vectors in blocks:
        nearest.add(labels, nearest.scores(vectors))


def _recall(found: Labels, truth: Labels) -> float:
    """The share of ``truth``'s labels that ``found`` holds, query by query (-1 pads neither)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / found.size if found.size else 1.0


def _from_copy(copy: Matrix, live: Labels) -> Iterator[tuple[Labels, Matrix]]:
    """The artifact's vector copy in blocks (a slice when the labels are 0..n-1, as built)."""
    ranged = len(live) == 0 or live[-1] == len(live) - 1
    for start in range(0, len(live), _ROWS_PER_BLOCK):
        labels = live[start : start + _ROWS_PER_BLOCK]
        yield labels, copy[start : start + len(labels)] if ranged else copy[labels]


class _Reader:
    """Reads the stored vectors of ``labels`` from the backend in a thread of its own, a few at a
    time, at the caller's priority: a thread that holds the GIL must not be one the kernel puts off."""

    def __init__(self, backend: Backend, labels: Labels) -> None:
        self._backend = backend
        self._labels = labels
        self._blocks: queue.Queue[tuple[Labels, Matrix] | BaseException | None] = queue.Queue(_BLOCKS_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="flux-gate-reader", daemon=True)

    def __enter__(self) -> _Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def blocks(self) -> Iterator[tuple[Labels, Matrix]]:
        while (block := self._blocks.get()) is not None:
            if isinstance(block, BaseException):
                raise block
            yield block

    def _read(self) -> None:
        try:
            for start in range(0, len(self._labels), ROWS_PER_READ):
                labels = self._labels[start : start + ROWS_PER_READ]
                if not self._put((labels, self._backend.get_vectors(labels))):
                    return
                time.sleep(PAUSE_SECONDS)
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


def _sample(index: ServedIndex, rng: np.random.Generator, n: int) -> np.ndarray:
    """Stored vectors as queries, with a little noise so that no query is exactly an item."""
    live = index.ids.live()
    if n <= 0:
        return np.empty((0, index.dimension), np.float32)
    labels = rng.choice(live, size=n, replace=n > len(live))
    vectors = index.backend.get_vectors(labels.astype(np.int64))
    scale = float(np.std(vectors)) or 1.0
    noise = rng.standard_normal(vectors.shape).astype(np.float32) * 0.05 * scale
    return np.ascontiguousarray(vectors + noise, dtype=np.float32)
