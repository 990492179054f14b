"""What a filtered query is and what it gets back: ``Filter``, ``Answer`` and ``Strategy``.

``flux.core.query.filters`` (the planner) answers them and re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np

from flux_core.backend import Labels, Matrix
from flux_core.errors import InvalidArgument
from flux_core.storage.attributes import parse_restricts

#: Ids one query may exclude.
MAX_EXCLUDE_IDS = 10_000


_NO_HASHES = np.empty(0, np.uint64)
_NO_HASHES.flags.writeable = False


class Strategy(Enum):
    """How a query was answered."""

    INDEX = "index"  # no filter: the backend's index alone
    EXACT_SCAN = "exact_scan"
    OVERFETCH = "overfetch"
    NATIVE_FILTER = "native_filter"  # the backend's own filtered search


@dataclass(frozen=True)
class Filter:
    """One query's filter, validated; ``create`` returns None for a filter that keeps everything."""

    #: Namespace -> tokens as sent: a repeated token stays (the attribute table reads it once).
    allow: Mapping[str, tuple[str, ...]]
    deny: Mapping[str, tuple[str, ...]]
    exclude_ids: tuple[str, ...] = ()
    max_per_tag: int = 0
    #: Ids left out by their contract hash (``flux_core.storage.ids.id_hashes``), read-only uint64.
    exclude_id_hashes: np.ndarray = field(default_factory=lambda: _NO_HASHES, compare=False)

    @classmethod
    def create(
        cls,
        *,
        allow: Iterable[tuple[str, Iterable[str]]] = (),
        deny: Iterable[tuple[str, Iterable[str]]] = (),
        exclude_ids: Sequence[str] = (),
        max_per_tag: int = 0,
        exclude_id_hashes: Sequence[int] = (),
        field: str = "filter",
    ) -> Filter | None:
        """Errors are InvalidArgument naming the field at fault, under ``field``."""
        excluded = len(exclude_ids) + len(exclude_id_hashes)
        if excluded > MAX_EXCLUDE_IDS:
            both = len(exclude_ids) and len(exclude_id_hashes)
            named = "exclude_id_hashes" if len(exclude_id_hashes) else "exclude_ids"
            holds = (
                f"{field}.exclude_ids and {field}.exclude_id_hashes hold {excluded:,} ids together"
                if both
                else f"{field}.{named} holds {excluded:,} ids"
            )
            raise InvalidArgument(f"{holds}; at most {MAX_EXCLUDE_IDS:,} per query", field=f"{field}.{named}")
        if max_per_tag < 0:
            raise InvalidArgument(f"{field}.max_per_crowding_tag must be >= 0", field=f"{field}.max_per_crowding_tag")
        allowed = parse_restricts(allow, f"{field}.allow", unique=False)
        denied = parse_restricts(deny, f"{field}.deny", unique=False)
        if not (allowed or denied or excluded or max_per_tag):
            return None
        hashes = _NO_HASHES
        if len(exclude_id_hashes):
            hashes = np.array(exclude_id_hashes, np.uint64)
            hashes.flags.writeable = False
        return cls(allowed, denied, tuple(exclude_ids), max_per_tag, hashes)


@dataclass(frozen=True)
class Answer:
    """One query's result, nearest first, and how it was found."""

    labels: Labels
    distances: Matrix
    strategy: Strategy
    #: Fewer than k items pass the filter (with the crowding cap) in the whole index:
    #: the short answer is complete, not a recall loss.
    fewer_than_k: bool


class Nearest(Protocol):
    """The index's own search (``ServedIndex.nearest``): q x k labels and distances, padded with -1."""

    def __call__(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]: ...
