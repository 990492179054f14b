"""Aliases route by weight, sticky per routing key, and report per-arm traffic."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from flux import config as flux_config
from flux.core.serving.aliases import Alias, Arm
from flux.server import FluxServer
from flux_api.v1 import admin_service_pb2 as admin
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.errors import ConfigError
from tests import support

DIM = 8


def test_routing_is_sticky_and_follows_the_weights() -> None:
    alias = Alias("tracks", [Arm("control", 90), Arm("treatment", 10)])
    keys = [f"user:{i}" for i in range(10_000)]
    arms = [alias.route(key) for key in keys]
    assert arms == [alias.route(key) for key in keys], "the same key must always reach the same arm"
    share = Counter(arms)[1] / len(arms)
    assert abs(share - 0.10) <= 0.03


def test_requests_without_a_key_are_spread_by_weight() -> None:
    alias = Alias("tracks", [Arm("a", 50), Arm("b", 50)])
    share = Counter(alias.route() for _ in range(10_000))[0] / 10_000
    assert abs(share - 0.5) <= 0.03


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    root = tmp_path_factory.mktemp("aliases")
    base = support.dataset(n=200, dimension=DIM, queries=1)[0]
    control = support.build_artifact(root / "control", base, backend="exact", metric="l2", version=4)
    treatment = support.build_artifact(root / "treatment", base, backend="hnsw", metric="l2", version=9)
    config = support.server_config(
        [{"name": "control", "path": str(control)}, {"name": "treatment", "path": str(treatment)}],
    )
    raw = config.model_dump(mode="json")
    raw["aliases"] = [
        {"name": "tracks", "arms": [{"index": "control", "weight": 90}, {"index": "treatment", "weight": 10}]}
    ]
    with support.running_server(flux_config.parse(raw)) as srv:
        yield srv


def test_ten_thousand_requests_split_90_10_and_stay_sticky(server: FluxServer) -> None:
    query = types_pb2.FloatVectors(dimension=DIM, data=np.ones(DIM, "<f4").tobytes())
    with support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        first: dict[str, str] = {}
        answered = Counter[str]()
        for i in range(10_000):
            key = f"user:{i % 2000}"  # each key is asked five times
            response = stub.Search(pb.SearchRequest(index="tracks", vector=query, k=1, routing_key=key))
            assert response.alias == "tracks"
            assert first.setdefault(key, response.index) == response.index, f"{key} changed arm"
            answered[response.index] += 1
            assert response.version == {"control": 4, "treatment": 9}[response.index]
        assert abs(answered["treatment"] / 10_000 - 0.10) <= 0.03

        arms = {a.index: a for a in AdminServiceStub(channel).ListAliases(admin.ListAliasesRequest()).aliases[0].arms}
        assert arms["control"].requests + arms["treatment"].requests >= 10_000
        assert arms["treatment"].requests == answered["treatment"]
        assert arms["control"].mean_latency_ms > 0
    counted = REGISTRY.get_sample_value("flux_alias_requests_total", {"alias": "tracks", "arm": "treatment"})
    assert counted is not None
    assert counted >= answered["treatment"]


def test_an_alias_to_an_unknown_index_is_a_config_error() -> None:
    raw = {"indexes": [{"name": "a", "path": "x"}], "aliases": [{"name": "b", "arms": [{"index": "nope"}]}]}
    with pytest.raises(ConfigError, match=r"aliases\[0\].arms\[0\].index: no index named 'nope'"):
        flux_config.parse(raw)


def test_an_alias_named_like_an_index_is_a_config_error() -> None:
    raw = {"indexes": [{"name": "a", "path": "x"}], "aliases": [{"name": "a", "arms": [{"index": "a"}]}]}
    with pytest.raises(ConfigError, match=r"aliases\[0\].name: 'a' is already the name of an index"):
        flux_config.parse(raw)


def test_an_unknown_name_is_not_found(server: FluxServer) -> None:
    query = types_pb2.FloatVectors(dimension=DIM, data=np.ones(DIM, "<f4").tobytes())
    with support.channel_to(server) as channel, pytest.raises(grpc.RpcError) as caught:
        VectorServiceStub(channel).Search(pb.SearchRequest(index="trakcs", vector=query, k=1))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_version_with_an_alias_is_invalid_argument(server: FluxServer) -> None:
    query = types_pb2.FloatVectors(dimension=DIM, data=np.ones(DIM, "<f4").tobytes())
    with support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        for key in (f"user:{i}" for i in range(20)):  # whichever arm the key reaches
            with pytest.raises(grpc.RpcError) as caught:
                stub.Search(pb.SearchRequest(index="tracks", vector=query, k=1, version=4, routing_key=key))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "version 4 was asked of 'tracks', an alias" in caught.value.details()
        # The same version through the index's own name is what a caller means.
        assert stub.Search(pb.SearchRequest(index="control", vector=query, k=1, version=4)).version == 4


def test_flux_aliases_says_what_its_time_column_measures(server: FluxServer) -> None:
    query = types_pb2.FloatVectors(dimension=DIM, data=np.ones(DIM, "<f4").tobytes())
    with support.channel_to(server) as channel:
        VectorServiceStub(channel).Search(pb.SearchRequest(index="tracks", vector=query, k=1, routing_key="u"))
    result = subprocess.run(
        [sys.executable, "-m", "flux", "aliases", "--target", server.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    header, *rows, note = result.stdout.splitlines()
    assert header.split()[-2:] == ["handler", "ms"]
    assert "mean ms" not in result.stdout
    assert note.startswith("handler ms: the mean time the server spent routing and answering a request")
    assert "a client also waits for transport, queueing and serialization" in note
    assert any(row.split()[0] == "tracks" and float(row.split()[-1]) > 0 for row in rows)
