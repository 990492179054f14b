"""Helpers shared by the tests: datasets, artifacts and a real server on an ephemeral port."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from flux import config as flux_config
from flux.datasets import clustered
from flux.router.server import RouterServer, build_router
from flux.server import FluxServer, build_server
from flux_api.v1 import types_pb2
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.backend import Metric
from flux_core.storage import builder


def dataset(n: int = 5000, dimension: int = 64, queries: int = 200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Base vectors and held-out queries from the same overlapping clusters."""
    data = clustered(n + queries, dimension, spread=1.0, seed=seed)
    return data[:n], data[n:]


def ids_for(n: int) -> list[str]:
    return [f"item:{i:06d}" for i in range(n)]


def build_artifact(
    path: Path,
    vectors: np.ndarray,
    *,
    backend: str,
    metric: Metric | str,
    name: str = "test",
    version: int = 1,
    params: Mapping[str, float] | None = None,
    ids: list[str] | None = None,
) -> Path:
    builder.build(
        path,
        vectors,
        ids if ids is not None else ids_for(len(vectors)),
        backend=backend,
        metric=Metric(metric),
        name=name,
        version=version,
        params=params,
        threads=2,
    )
    return path


def server_config(indexes: list[dict[str, Any]], **sections: Any) -> flux_config.FluxConfig:
    """A config listening on 127.0.0.1 port 0 (a free port) with the given indexes."""
    raw: dict[str, Any] = {"server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 1.0}, "indexes": indexes}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return flux_config.parse(raw, source="test config")


@contextmanager
def running_server(config: flux_config.FluxConfig, *, ready_timeout: float = 60.0) -> Iterator[FluxServer]:
    """Start a real gRPC server, wait until its indexes have loaded, stop it afterwards."""
    server = build_server(config)
    server.start()
    try:
        if not server.wait_ready(ready_timeout):
            raise TimeoutError(f"server did not load its indexes within {ready_timeout}s")
        yield server
    finally:
        server.stop(grace=0)


@contextmanager
def channel_to(server: FluxServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def router_config(indexes: list[dict[str, Any]], *, metrics: bool = False, **router: Any) -> flux_config.FluxConfig:
    """A router config on 127.0.0.1 port 0 over ``indexes``; ``metrics`` serves /metrics on a free port."""
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.5}
    if metrics:
        server["metrics_port"] = 0
    return flux_config.parse({"server": server, "router": {"indexes": indexes, **router}}, source="router test config")


#: Prometheus samples by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(process: RouterServer | FluxServer | int) -> Samples:
    """Every sample ``process`` (or whatever listens on that metrics port) serves on /metrics, by name and labels."""
    if not isinstance(process, int):
        assert process.metrics is not None
        process = process.metrics.port
    text = urllib.request.urlopen(f"http://127.0.0.1:{process}/metrics", timeout=10).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@contextmanager
def routing(config: flux_config.FluxConfig) -> Iterator[tuple[RouterServer, VectorServiceStub]]:
    """A router started from ``config``, and a stub on a channel to it; stopped on exit."""
    router = build_router(config)
    router.start()
    try:
        with grpc.insecure_channel(router.address) as channel:
            yield router, VectorServiceStub(channel)
    finally:
        router.stop(grace=0)


def brute_force(base: np.ndarray, queries: np.ndarray, metric: Metric | str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth in float64, independent of every backend: (labels, distances) per query."""
    b, q = base.astype(np.float64), queries.astype(np.float64)
    metric = Metric(metric)
    if metric is Metric.L2:
        d = (q**2).sum(1)[:, None] - 2 * q @ b.T + (b**2).sum(1)[None, :]
    else:
        if metric is Metric.COSINE:
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = 1.0 - q @ b.T
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def unpacked(packed: types_pb2.PackedNeighbors) -> list[types_pb2.Neighbors]:
    """A packed batch answer as one Neighbors per query, to compare with an unpacked one."""
    rows, start = [], 0
    for count, strategy, short in zip(packed.counts, packed.strategies, packed.fewer_than_k_matched, strict=True):
        end = start + count
        rows.append(
            types_pb2.Neighbors(
                ids=packed.ids[start:end],
                distances=packed.distances[start:end],
                strategy=strategy,
                fewer_than_k_matched=short,
            )
        )
        start = end
    assert start == len(packed.ids) == len(packed.distances)
    return rows
