"""The synchronous client: numpy in, numpy out, production defaults on the channel."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from flux_api.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    types_pb2,
    vector_service_pb2,
    vector_service_pb2_grpc,
)
from flux_client._errors import from_rpc_error

_SERVICES = ("flux_api.v1.VectorService", "flux_api.v1.AdminService")
_METRICS = {types_pb2.METRIC_L2: "l2", types_pb2.METRIC_COSINE: "cosine", types_pb2.METRIC_INNER_PRODUCT: "ip"}


def service_config(*, retries: int, load_balancing: str) -> str:
    """The channel's service config: retry UNAVAILABLE with backoff, and balance over resolved addresses."""
    config: dict[str, Any] = {"loadBalancingConfig": [{load_balancing: {}}]}
    if retries > 0:
        config["methodConfig"] = [
            {
                "name": [{"service": s} for s in _SERVICES],
                "retryPolicy": {
                    "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of one query (1-D arrays) or of a batch (2-D, one row per query).

    Rows shorter than k (small indexes) are padded with id ``""`` and distance ``inf``.
    Unpacks like hnswlib's answer: ``ids, distances = client.search(...)``.
    """

    ids: npt.NDArray[np.object_]
    distances: npt.NDArray[np.float32]
    index: str
    version: int

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.ids, self.distances))


@dataclass(frozen=True)
class IndexInfo:
    """What the server says of one index."""

    name: str
    backend: str
    dimension: int
    metric: str
    count: int
    version: int
    state: str
    error: str = ""
    build_params: dict[str, Any] = field(default_factory=dict)
    default_search_params: dict[str, float] = field(default_factory=dict)
    capabilities: dict[str, bool] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class FluxClient:
    """A connection to a Flux server (or, through ``dns:///`` targets, to many replicas).

    ``timeout`` is the default deadline of every call in seconds; each method takes its
    own ``timeout`` too. ``retries`` re-sends calls that failed with UNAVAILABLE (a
    restarting server, an index still loading), with exponential backoff, through
    gRPC's own retry support. Failures raise ``flux_client.FluxError`` subclasses.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        load_balancing: str = "round_robin",
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config(retries=retries, load_balancing=load_balancing)),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            *channel_options,
        ]
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=options)
        self._vectors = vector_service_pb2_grpc.VectorServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)

    def search(
        self,
        index: str,
        vectors: npt.ArrayLike,
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> SearchResult:
        """Nearest neighbours of one vector (1-D) or of each row of a matrix (2-D, one call)."""
        matrix = np.asarray(vectors, dtype="<f4")
        if matrix.ndim == 1:
            request = vector_service_pb2.SearchRequest(index=index, vector=_encode(matrix), k=k, params=params or {})
            response = self._call(self._vectors.Search, request, timeout)
            ids, distances = _pad([response.neighbors], k)
            return SearchResult(ids[0], distances[0], response.index, response.version)
        return self.batch_search(index, matrix, k, params=params, timeout=timeout)

    def batch_search(
        self,
        index: str,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        ks: Sequence[int] | None = None,
        timeout: float | None = None,
    ) -> SearchResult:
        """Nearest neighbours of every row of ``queries`` in one call; ``ks`` gives rows their own k."""
        matrix = np.asarray(queries, dtype="<f4")
        if matrix.ndim != 2:
            raise ValueError(f"queries must be a 2-D matrix, got shape {matrix.shape}")
        overrides = [vector_service_pb2.QueryOverride(k=row_k) for row_k in ks] if ks is not None else []
        request = vector_service_pb2.BatchSearchRequest(
            index=index, queries=_encode(matrix), k=k, params=params or {}, overrides=overrides
        )
        response = self._call(self._vectors.BatchSearch, request, timeout)
        ids, distances = _pad(response.results, max([k, *(ks or [])]))
        return SearchResult(ids, distances, response.index, response.version)

    def search_by_id(
        self,
        index: str,
        item_id: str,
        k: int = 10,
        *,
        params: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> SearchResult:
        """Nearest neighbours of an item already in the index, the item itself excluded."""
        request = vector_service_pb2.SearchByIdRequest(index=index, id=item_id, k=k, params=params or {})
        response = self._call(self._vectors.SearchById, request, timeout)
        ids, distances = _pad([response.neighbors], k)
        return SearchResult(ids[0], distances[0], response.index, response.version)

    def describe(self, index: str, *, timeout: float | None = None) -> IndexInfo:
        """What the server says of ``index``: backend, dimension, count, version, state."""
        response = self._call(self._admin.GetIndex, admin_service_pb2.GetIndexRequest(name=index), timeout)
        return _index_info(response.index)

    def list_indexes(self, *, timeout: float | None = None) -> list[IndexInfo]:
        """Every index the server is configured to serve."""
        response = self._call(self._admin.ListIndexes, admin_service_pb2.ListIndexesRequest(), timeout)
        return [_index_info(i) for i in response.indexes]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FluxClient({self.target!r}, timeout={self.timeout})"

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


def _encode(matrix: np.ndarray) -> types_pb2.FloatVectors:
    matrix = np.atleast_2d(matrix)
    return types_pb2.FloatVectors(dimension=matrix.shape[1], data=matrix.tobytes())


def _pad(results: Sequence[types_pb2.Neighbors], k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(results), k), "", dtype=object)
    distances = np.full((len(results), k), np.inf, dtype=np.float32)
    for row, neighbors in enumerate(results):
        n = len(neighbors.ids)
        ids[row, :n] = list(neighbors.ids)
        distances[row, :n] = neighbors.distances
    return ids, distances


def _index_info(info: admin_service_pb2.IndexInfo) -> IndexInfo:
    return IndexInfo(
        name=info.name,
        backend=info.backend,
        dimension=info.dimension,
        metric=_METRICS.get(info.metric, ""),
        count=info.count,
        version=info.version,
        state=admin_service_pb2.IndexState.Name(info.state).removeprefix("INDEX_STATE_").lower(),
        error=info.error,
        build_params=json_format.MessageToDict(info.build_params),
        default_search_params=dict(info.default_search_params),
        capabilities={f.name: getattr(info.capabilities, f.name) for f in info.capabilities.DESCRIPTOR.fields},
        stats=json_format.MessageToDict(info.stats),
    )
