"""The control plane: what the server holds, read from the catalog."""

from __future__ import annotations

import grpc

from flux.api import convert
from flux.core import artifact
from flux.core.catalog import Catalog, Slot
from flux_api.v1 import admin_service_pb2 as pb
from flux_api.v1 import admin_service_pb2_grpc


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def ListIndexes(self, request: pb.ListIndexesRequest, context: grpc.ServicerContext) -> pb.ListIndexesResponse:
        return pb.ListIndexesResponse(indexes=[describe(self._catalog.slot(n)) for n in self._catalog.names()])

    def GetIndex(self, request: pb.GetIndexRequest, context: grpc.ServicerContext) -> pb.GetIndexResponse:
        return pb.GetIndexResponse(index=describe(self._catalog.slot(request.name)))


def describe(slot: Slot) -> pb.IndexInfo:
    """An IndexInfo from what is loaded, or else from what the config expects."""
    config, index = slot.config, slot.index
    info = pb.IndexInfo(name=config.name, state=convert.STATES[slot.state], error=slot.error)
    if index is None:
        info.backend = config.backend or ""
        info.dimension = config.dimension or 0
        if config.metric is not None:
            info.metric = convert.METRICS[config.metric]
        return info
    manifest = index.manifest
    info.backend = manifest.backend
    info.dimension = manifest.dimension
    info.metric = convert.METRICS[manifest.metric]
    info.count = len(index.backend)
    info.version = manifest.version
    info.build_params.update(manifest.build_params)
    info.default_search_params.update(index.default_params)
    info.stats.update(
        {
            **index.backend.stats(),
            "library": manifest.library,
            "created_at": manifest.created_at,
            "artifact_bytes": artifact.size_bytes(manifest),
            "load_seconds": round(slot.load_seconds, 3),
        }
    )
    info.capabilities.CopyFrom(convert.capabilities(type(index.backend).capabilities))
    return info
