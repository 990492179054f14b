"""The control plane, health and reflection report what the config and the loaded data say."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flux_api.v1 import admin_service_pb2 as pb
from flux_api.v1 import types_pb2
from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub
from tests.conftest import BACKENDS, METRICS

METRIC_ENUM = {"l2": types_pb2.METRIC_L2, "cosine": types_pb2.METRIC_COSINE, "ip": types_pb2.METRIC_INNER_PRODUCT}


def test_list_indexes_names_every_configured_index(admin_stub: AdminServiceStub) -> None:
    response = admin_stub.ListIndexes(pb.ListIndexesRequest())
    names = [i.name for i in response.indexes]
    assert names == sorted([f"{b}-{m}" for b in BACKENDS for m in METRICS] + ["broken"])
    states = {i.name: i.state for i in response.indexes}
    assert states.pop("broken") == pb.INDEX_STATE_FAILED
    assert set(states.values()) == {pb.INDEX_STATE_SERVING}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_get_index_reports_the_artifact(admin_stub: AdminServiceStub, backend: str, metric: str) -> None:
    info = admin_stub.GetIndex(pb.GetIndexRequest(name=f"{backend}-{metric}")).index
    assert (info.name, info.backend, info.dimension, info.count, info.version) == (
        f"{backend}-{metric}",
        backend,
        64,
        5000,
        3,
    )
    assert info.metric == METRIC_ENUM[metric]
    assert info.state == pb.INDEX_STATE_SERVING
    assert info.error == ""
    build_params = json_format.MessageToDict(info.build_params)
    expected_build = {
        "exact": {},
        "hnsw": {"M": 16, "ef_construction": 200, "seed": 100},
        "annoy": {"n_trees": 32, "seed": 42},
        "voyager": {"M": 16, "ef_construction": 200, "seed": 1},
        "faiss": {"M": 16, "ef_construction": 200, "seed": 12345},
        "faiss-ivf": {"nlist": 0, "seed": 1234},
    }
    assert build_params == expected_build[backend]
    # annoy's from the config
    expected_search = {
        "exact": {},
        "hnsw": {"ef": 64},
        "annoy": {"search_k": 2000},
        "voyager": {"ef": 64},
        "faiss": {"ef": 64},
        "faiss-ivf": {"nprobe": 0},
    }
    assert dict(info.default_search_params) == expected_search[backend]
    assert info.capabilities.thread_safe_search
    assert info.capabilities.mmap_load == (backend in {"annoy", "exact"})
    stats = json_format.MessageToDict(info.stats)
    libraries = {"exact": "numpy", "hnsw": "hnswlib", "annoy": "annoy", "voyager": "voyager"}
    libraries |= {"faiss": "faiss-cpu", "faiss-ivf": "faiss-cpu"}
    assert stats["library"].split()[0] == libraries[backend]
    assert stats["artifact_bytes"] > 0


def test_get_index_of_a_failed_index_says_why(admin_stub: AdminServiceStub) -> None:
    info = admin_stub.GetIndex(pb.GetIndexRequest(name="broken")).index
    assert info.state == pb.INDEX_STATE_FAILED
    assert "nothing-here is neither an artifact (with manifest.json) nor a directory of numbered versions" in info.error


def test_get_unknown_index_is_not_found(admin_stub: AdminServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        admin_stub.GetIndex(pb.GetIndexRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no index named 'nope'" in caught.value.details()


def test_health_overall_and_per_index(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service)).status

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert status("") == serving
    assert status("flux_api.v1.VectorService") == serving
    assert status("flux.index.hnsw-l2") == serving
    assert status("flux.index.broken") == not_serving


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "flux_api.v1.VectorService",
        "flux_api.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
