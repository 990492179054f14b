"""What a filtered query is and what it gets back: ``Filter``, ``Answer`` and ``Strategy``.

``flux.core.query.filters`` (the planner) answers them and re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from flux_core.backend import Labels, Matrix
from flux_core.errors import InvalidArgument
from flux_core.storage.attributes import parse_restricts

#: Ids one query may exclude.
MAX_EXCLUDE_IDS = 10_000


class Strategy(Enum):
    """How a query was answered."""

    INDEX = "index"  # no filter: the backend's index alone
    EXACT_SCAN = "exact_scan"
    OVERFETCH = "overfetch"
    NATIVE_FILTER = "native_filter"  # the backend's own filtered search


@dataclass(frozen=True)
class Filter:
    """One query's filter, validated; ``create`` returns None for a filter that keeps everything."""

    allow: Mapping[str, tuple[str, ...]]
    deny: Mapping[str, tuple[str, ...]]
    exclude_ids: tuple[str, ...] = ()
    max_per_tag: int = 0

    @classmethod
    def create(
        cls,
        *,
        allow: Iterable[tuple[str, Iterable[str]]] = (),
        deny: Iterable[tuple[str, Iterable[str]]] = (),
        exclude_ids: Sequence[str] = (),
        max_per_tag: int = 0,
        field: str = "filter",
    ) -> Filter | None:
        """Errors are InvalidArgument naming the field at fault, under ``field``."""
        if len(exclude_ids) > MAX_EXCLUDE_IDS:
            raise InvalidArgument(
                f"{field}.exclude_ids holds {len(exclude_ids):,} ids; at most {MAX_EXCLUDE_IDS:,} per query",
                field=f"{field}.exclude_ids",
            )
        if max_per_tag < 0:
            raise InvalidArgument(f"{field}.max_per_crowding_tag must be >= 0", field=f"{field}.max_per_crowding_tag")
        allowed = parse_restricts(allow, f"{field}.allow")
        denied = parse_restricts(deny, f"{field}.deny")
        if not (allowed or denied or exclude_ids or max_per_tag):
            return None
        return cls(allowed, denied, tuple(exclude_ids), max_per_tag)


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
