"""What the client returns: numpy arrays for neighbours, plain dataclasses for index descriptions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of one query (1-D arrays of length k) or of a batch (2-D, one row per query).

    Nearest first. Rows shorter than k (an index with fewer items) are padded with id ``""``
    and distance ``inf``. Unpacks like hnswlib's answer: ``ids, distances = client.search(...)``.
    ``index`` and ``version`` name the index version that answered.
    """

    ids: npt.NDArray[np.object_]
    distances: npt.NDArray[np.float32]
    index: str
    version: int

    def __iter__(self) -> Iterator[npt.NDArray[Any]]:
        return iter((self.ids, self.distances))


@dataclass(frozen=True)
class IndexInfo:
    """What the server says of one index (AdminService.GetIndex)."""

    name: str
    backend: str
    dimension: int
    metric: str  # "l2", "cosine" or "ip"
    count: int
    version: int
    state: str  # "loading", "serving" or "failed"
    error: str = ""  # why loading failed
    build_params: dict[str, Any] = field(default_factory=dict)
    default_search_params: dict[str, float] = field(default_factory=dict)
    capabilities: dict[str, bool] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
