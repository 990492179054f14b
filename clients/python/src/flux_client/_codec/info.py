"""GetIndex, ListIndexes, DescribeIndex and GetServerInfo answers as ``IndexInfo`` and ``ServerInfo``."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from flux_api.v1 import admin_service_pb2, types_pb2, vector_service_pb2
from flux_client._types import BackendInfo, IndexInfo, ServerInfo

_METRICS = {types_pb2.METRIC_L2: "l2", types_pb2.METRIC_COSINE: "cosine", types_pb2.METRIC_INNER_PRODUCT: "ip"}


def index_info(info: admin_service_pb2.IndexInfo) -> IndexInfo:
    return IndexInfo(
        **_described(info),
        error=info.error,
        build_params=json_format.MessageToDict(info.build_params),
        stats=json_format.MessageToDict(info.stats),
    )


def index_description(response: vector_service_pb2.DescribeIndexResponse) -> IndexInfo:
    """What DescribeIndex tells a reader, as an IndexInfo (without what only GetIndex tells an admin)."""
    return IndexInfo(**_described(response.index), alias=response.alias)


def _described(info: Any) -> dict[str, Any]:
    """The fields GetIndex's IndexInfo and DescribeIndex's description share, by the same names."""
    return {
        "name": info.name,
        "backend": info.backend,
        "dimension": info.dimension,
        "metric": _METRICS.get(info.metric, ""),
        "count": info.count,
        "version": info.version,
        "state": admin_service_pb2.IndexState.Name(info.state).removeprefix("INDEX_STATE_").lower(),
        "default_search_params": dict(info.default_search_params),
        "capabilities": _capabilities(info.capabilities),
    }


def server_info(response: vector_service_pb2.GetServerInfoResponse) -> ServerInfo:
    return ServerInfo(
        contract_version=response.contract_version,
        server_version=response.server_version,
        backends=tuple(
            BackendInfo(b.name, _capabilities(b.capabilities), dict(b.default_search_params)) for b in response.backends
        ),
    )


def _capabilities(caps: admin_service_pb2.Capabilities) -> dict[str, bool]:
    return {f.name: getattr(caps, f.name) for f in caps.DESCRIPTOR.fields}
