"""Applies writes to an index in log order: the flusher after each durable group, recovery when it replays the log.

Each run of consecutive upserts (or of deletes) becomes one backend call. New ids get labels
from the index's id map (deleted ones give theirs up), and the attributes follow, so filtered
searches see a write as soon as it is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from flux import metrics
from flux.core.serving.index import ServedIndex
from flux.core.writes.mutations import Delete, Op, Upsert
from flux_core.storage.attributes import ItemAttributes


class Counts(NamedTuple):
    """What applying one write did to the index."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    missing: int = 0


def apply_ops(index: ServedIndex, ops: Sequence[Op]) -> list[Counts]:
    """Apply ``ops`` in order; each run of upserts (or of deletes) becomes one backend call."""
    counts: list[Counts] = []
    start = 0
    for end in range(1, len(ops) + 1):
        if end == len(ops) or type(ops[end]) is not type(ops[start]):
            run = ops[start:end]
            if isinstance(run[0], Upsert):
                counts += _upsert(index, [op for op in run if isinstance(op, Upsert)])
            else:
                counts += _delete(index, [op for op in run if isinstance(op, Delete)])
            start = end
    return counts


def _upsert(index: ServedIndex, run: list[Upsert]) -> list[Counts]:
    latest: dict[str, tuple[int, int]] = {}  # id -> (op, row) of its last vector in the run
    counts = []
    for number, op in enumerate(run):
        inserted = 0
        for row, item in enumerate(op.ids):
            if item not in latest and index.ids.label(item) is None:
                inserted += 1
            latest[item] = (number, row)
        counts.append(Counts(inserted=inserted, updated=len(op.ids) - inserted))
    if len(run) == 1:
        vectors = run[0].vectors
    else:
        offsets = np.cumsum([0, *(len(op.ids) for op in run)])
        rows = [int(offsets[number]) + row for number, row in latest.values()]
        vectors = np.concatenate([op.vectors for op in run])[rows]
    labels = index.ids.assign(list(latest))
    index.backend.add(np.ascontiguousarray(vectors, np.float32), labels)
    index.attributes.set(labels, [_attributes(run[number], row) for number, row in latest.values()])
    metrics.WRITES.labels(index.name, "upsert").inc(len(labels))
    return counts


def _attributes(op: Upsert, row: int) -> ItemAttributes:
    return op.attributes[row] if op.attributes is not None else ItemAttributes()


def _delete(index: ServedIndex, run: list[Delete]) -> list[Counts]:
    gone: dict[str, None] = {}
    counts = []
    for op in run:
        deleted = 0
        for item in op.ids:
            if item not in gone and index.ids.label(item) is not None:
                gone[item] = None
                deleted += 1
        counts.append(Counts(deleted=deleted, missing=len(op.ids) - deleted))
    labels = index.ids.release(list(gone))
    if len(labels):
        index.backend.delete(labels)
        index.attributes.clear(labels)
        metrics.WRITES.labels(index.name, "delete").inc(len(labels))
    return counts
