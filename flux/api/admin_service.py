"""The control plane: what the server holds, and the version operations, over the catalog."""

from __future__ import annotations

import grpc

from flux.api import convert
from flux.core.serving.catalog import Catalog
from flux.core.serving.index import ServedIndex
from flux.core.serving.manager import IndexManager
from flux.core.serving.version_table import VersionSlot
from flux_api.v1 import admin_service_pb2 as pb
from flux_api.v1 import admin_service_pb2_grpc
from flux_core.errors import FailedPrecondition, Unavailable
from flux_core.storage import artifact

VersionRequest = (
    pb.LoadVersionRequest
    | pb.ActivateVersionRequest
    | pb.PinVersionRequest
    | pb.RollbackVersionRequest
    | pb.UnloadVersionRequest
)
_GATE_FIELDS = pb.GateReport.DESCRIPTOR.fields  # each is a field of flux.core.serving.gate.GateReport too


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def ListIndexes(self, request: pb.ListIndexesRequest, context: grpc.ServicerContext) -> pb.ListIndexesResponse:
        return pb.ListIndexesResponse(indexes=[self._describe(name) for name in self._catalog.names()])

    def GetIndex(self, request: pb.GetIndexRequest, context: grpc.ServicerContext) -> pb.GetIndexResponse:
        return pb.GetIndexResponse(index=self._describe(request.name))

    def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.ServicerContext) -> pb.ListVersionsResponse:
        manager = self._catalog.manager(request.index)
        manager.refresh_source()
        return pb.ListVersionsResponse(
            index=manager.name,
            active_version=manager.active.version if manager.active else 0,
            pinned_version=manager.pinned or 0,
            versions=[version_info(s) for s in manager.slots()],
        )

    def LoadVersion(self, request: pb.LoadVersionRequest, context: grpc.ServicerContext) -> pb.LoadVersionResponse:
        return pb.LoadVersionResponse(version=version_info(self._versions(request).load(request.version)))

    def ActivateVersion(
        self, request: pb.ActivateVersionRequest, context: grpc.ServicerContext
    ) -> pb.ActivateVersionResponse:
        return pb.ActivateVersionResponse(version=version_info(self._versions(request).activate(request.version)))

    def PinVersion(self, request: pb.PinVersionRequest, context: grpc.ServicerContext) -> pb.PinVersionResponse:
        slot = self._versions(request).pin(request.version or None)  # 0: unpin
        return pb.PinVersionResponse(version=version_info(slot) if slot else None)

    def RollbackVersion(
        self, request: pb.RollbackVersionRequest, context: grpc.ServicerContext
    ) -> pb.RollbackVersionResponse:
        previous, slot = self._versions(request).rollback()
        return pb.RollbackVersionResponse(previous_version=previous, version=version_info(slot))

    def UnloadVersion(
        self, request: pb.UnloadVersionRequest, context: grpc.ServicerContext
    ) -> pb.UnloadVersionResponse:
        return pb.UnloadVersionResponse(version=version_info(self._versions(request).unload(request.version)))

    def _versions(self, request: VersionRequest) -> IndexManager:
        """The manager of the index a version operation names."""
        return self._catalog.manager(request.index)

    def ListAliases(self, request: pb.ListAliasesRequest, context: grpc.ServicerContext) -> pb.ListAliasesResponse:
        return pb.ListAliasesResponse(
            aliases=[
                pb.AliasInfo(
                    name=alias.name,
                    arms=[
                        pb.AliasArm(
                            index=arm.index,
                            version=arm.version,
                            weight=arm.weight,
                            requests=requests,
                            mean_latency_ms=seconds * 1000,
                        )
                        for arm, requests, seconds in alias.traffic()
                    ],
                )
                for alias in self._catalog.aliases()
            ]
        )

    def _describe(self, name: str) -> pb.IndexInfo:
        manager = self._catalog.manager(name)
        return describe(manager, convert.STATES[self._catalog.state(name)])


def describe(manager: IndexManager, state: pb.IndexState.ValueType) -> pb.IndexInfo:
    """An IndexInfo from the active version, or else from what the config expects."""
    settings = manager.settings
    info = pb.IndexInfo(
        name=manager.name,
        state=state,
        pinned_version=manager.pinned or 0,
        version_policy=settings.policy.describe(),
    )
    failures = [s for s in manager.slots() if s.error]
    if failures:
        info.error = f"version {failures[0].version}: {failures[0].error}"
    elif state != pb.INDEX_STATE_LOADING:
        info.error = manager.problem()
    try:
        with manager.acquire() as index:  # held, so no swap closes it while it is read
            _describe_active(info, index, manager.slot(index.version))
            return info
    except (Unavailable, FailedPrecondition):  # no active version: what the config expects
        pass
    info.backend = settings.backend or ""
    info.dimension = settings.dimension or 0
    if settings.metric is not None:
        info.metric = convert.METRICS[settings.metric]
    return info


def _describe_active(info: pb.IndexInfo, index: ServedIndex, slot: VersionSlot) -> None:
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


def version_info(slot: VersionSlot) -> pb.VersionInfo:
    info = pb.VersionInfo(
        version=slot.version,
        state=convert.VERSION_STATES[slot.state],
        error=slot.error,
        artifact_bytes=slot.artifact_bytes,
        load_seconds=slot.load_seconds,
        in_flight=slot.in_flight,
    )
    if slot.report is not None:  # the gate's report, field by field as the contract names them
        info.gate.CopyFrom(pb.GateReport(**{f.name: getattr(slot.report, f.name) for f in _GATE_FIELDS}))
    return info
