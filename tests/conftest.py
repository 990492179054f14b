"""Shared fixtures: one dataset, one artifact per backend and metric, one real server serving them all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from flux.server import FluxServer
from flux_api.v1 import admin_service_pb2_grpc, vector_service_pb2_grpc
from tests import support

# The Beam tests run in .venv-beam (`make pytest` runs them there with --noconftest): Beam needs protobuf<7.
collect_ignore = ["test_beam.py"]

BACKENDS = ("exact", "hnsw", "annoy", "voyager", "faiss", "faiss-ivf")  # every in-tree backend, served through gRPC
METRICS = ("l2", "cosine", "ip")
# Annoy's default search_k (n_trees * k) trades recall for speed; served indexes set their own.
SEARCH_PARAMS = {"annoy": {"search_k": 2000}}


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    """5,000 x 64 base vectors and 200 held-out queries from the same clusters."""
    return support.dataset(n=5000, dimension=64, queries=200)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> dict[str, Path]:
    """An artifact per backend and metric, named ``<backend>-<metric>``."""
    root = tmp_path_factory.mktemp("artifacts")
    base, _ = data
    return {
        f"{b}-{m}": support.build_artifact(root / f"{b}-{m}", base, backend=b, metric=m, name=f"{b}-{m}", version=3)
        for b in BACKENDS
        for m in METRICS
    }


@pytest.fixture(scope="session")
def server(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """A real server on 127.0.0.1 serving every artifact, plus one index whose artifact is missing."""
    indexes = [
        {"name": name, "path": str(path), "search_params": SEARCH_PARAMS.get(name.split("-")[0], {})}
        for name, path in artifacts.items()
    ]
    indexes.append({"name": "broken", "path": str(tmp_path_factory.mktemp("empty") / "nothing-here")})
    with support.running_server(support.server_config(indexes, limits={"max_k": 256, "max_batch": 512})) as srv:
        yield srv


@pytest.fixture(scope="session")
def channel(server: FluxServer) -> Iterator[grpc.Channel]:
    with support.channel_to(server) as ch:
        yield ch


@pytest.fixture(scope="session")
def vectors_stub(channel: grpc.Channel) -> vector_service_pb2_grpc.VectorServiceStub:
    return vector_service_pb2_grpc.VectorServiceStub(channel)


@pytest.fixture(scope="session")
def admin_stub(channel: grpc.Channel) -> admin_service_pb2_grpc.AdminServiceStub:
    return admin_service_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture(scope="session")
def spans() -> Any:
    """An in-memory span exporter behind the process's one tracer provider (OpenTelemetry allows one
    per process, so every test with tracing on shares it; a server then exports nowhere else)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "a tracer provider was set before this fixture"
    return exporter


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: ca, other-ca, server (flux.test, signed by ca), client (signed by ca), stranger (by other-ca)."""
    from tests import pki as certificates

    return certificates.make(tmp_path_factory.mktemp("pki"))
