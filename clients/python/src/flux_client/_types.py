"""What the client returns: numpy arrays for neighbours, plain dataclasses for index descriptions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of one query (1-D arrays of length k) or of a batch (2-D, one row per query).

    Nearest first. Rows shorter than k (an index with fewer items, or fewer that pass the
    filter) are padded with id ``""`` and distance ``inf``. Unpacks like hnswlib's answer:
    ``ids, distances = client.search(...)``. ``index`` and ``version`` name the index version
    that answered; ``alias`` the alias the request named, if it named one.
    """

    ids: npt.NDArray[np.object_]
    distances: npt.NDArray[np.float32]
    index: str
    version: int
    alias: str = ""

    def __iter__(self) -> Iterator[npt.NDArray[Any]]:
        return iter((self.ids, self.distances))


@dataclass(frozen=True)
class Filter:
    """Narrows a query's results, e.g. ``Filter(allow={"market": ["SE", "NO"]}, exclude_ids=played)``.

    An item passes when it is not in ``exclude_ids``, has none of the ``deny`` tokens, and,
    for every namespace in ``allow``, has at least one of its tokens (AND across namespaces,
    OR within one). ``max_per_crowding_tag`` caps results sharing a crowding tag (0: no cap).
    ``exclude_id_hashes`` leaves ids out as ``exclude_ids`` does, each given by its hash
    (``flux_client.id_hashes``): for a list of thousands, cheaper to send and to look up.
    The server picks how to search (exact scan or the index) from how many items pass.
    """

    allow: Mapping[str, Sequence[str]] = field(default_factory=dict)
    deny: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exclude_ids: Sequence[str] = ()
    max_per_crowding_tag: int = 0
    exclude_id_hashes: Sequence[int] | npt.NDArray[np.uint64] = ()


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
    alias: str = ""  # DescribeIndex asked through an alias: its name (``name`` is the arm's index)


@dataclass(frozen=True)
class BackendInfo:
    """A backend the server has installed (GetServerInfo)."""

    name: str
    capabilities: dict[str, bool] = field(default_factory=dict)
    default_search_params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerInfo:
    """What a client talks to (VectorService.GetServerInfo).

    ``contract_version`` is the release of the wire contract the server speaks (``protos/CHANGELOG.md``);
    this client's own is ``flux_client.CONTRACT_VERSION``. ``server_version`` is the server software's.
    """

    contract_version: str
    server_version: str
    backends: tuple[BackendInfo, ...] = ()

    def supports(self, contract_version: str) -> bool:
        """Whether the server speaks ``contract_version`` (e.g. "1.1.0") or a later release of the same major."""
        mine, theirs = _release(contract_version), _release(self.contract_version)
        return mine[0] == theirs[0] and theirs >= mine


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


@dataclass(frozen=True)
class Attributes:
    """What filters match on, given with an upserted item: restrict tokens per namespace and a crowding tag,
    e.g. ``Attributes({"market": ["US", "SE"]}, crowding_tag="artist:42")``."""

    restricts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    crowding_tag: str = ""


@dataclass(frozen=True)
class WriteResult:
    """What a write did (WriteService): the index and the version that hold it now, the write's sequence
    number in the index's log, and the counts that apply to the call (``inserted`` and ``updated`` for
    upserts, ``deleted`` and ``not_found`` for deletes, ``messages`` for a stream)."""

    index: str
    version: int
    log_sequence: int
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    not_found: int = 0
    messages: int = 0
