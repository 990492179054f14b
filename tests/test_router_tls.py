"""TLS through the router: to shard servers that serve TLS (mutual TLS too), and on the router's own port.

The shards and the router are real gRPC servers on 127.0.0.1 ephemeral ports; the certificates come
from the ``pki`` fixture (tests/pki.py): the shard's certificate names flux.test, so the router is
told that name (``router.tls.server_name``), as it would be for a static ``ipv4:`` list of replicas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from flux import config as flux_config
from flux.router.server import RouterServer, build_router
from flux.server import FluxServer
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.errors import ConfigError
from tests.pki import SERVER_NAME
from tests.support import build_artifact, dataset, running_server, server_config


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    base, queries = dataset(300, 8, 3, seed=9)
    path = build_artifact(tmp_path_factory.mktemp("router-tls") / "items", base, backend="exact", metric="l2")
    return queries, path


@pytest.fixture(scope="module")
def mutual_shard(pki: dict[str, Path], small: tuple[np.ndarray, Path]) -> Iterator[FluxServer]:
    """A shard that serves TLS and wants a client certificate signed by the CA."""
    tls = {"cert_file": str(pki["server"]), "key_file": str(pki["server.key"]), "client_ca_file": str(pki["ca"])}
    with running_server(server_config([{"name": "items", "path": str(small[1])}], tls=tls)) as server:
        yield server


def _config(shard: FluxServer, shard_tls: dict[str, str] | None, **sections: Any) -> flux_config.FluxConfig:
    router: dict[str, Any] = {"indexes": [{"name": "items", "shard_count": 1, "shards": [shard.address]}]}
    if shard_tls is not None:
        router["tls"] = shard_tls
    raw = {"server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.5}, "router": router, **sections}
    return flux_config.parse(raw, source="router tls test config")


@contextmanager
def _routing(config: flux_config.FluxConfig) -> Iterator[RouterServer]:
    router = build_router(config)
    router.start()
    try:
        yield router
    finally:
        router.stop(grace=0)


def _search(channel: grpc.Channel, query: np.ndarray, timeout: float = 10) -> pb.SearchResponse:
    vector = types_pb2.FloatVectors(dimension=len(query), data=np.asarray(query, dtype="<f4").tobytes())
    response: pb.SearchResponse = VectorServiceStub(channel).Search(
        pb.SearchRequest(index="items", vector=vector, k=5), timeout=timeout
    )
    return response


def _truth(shard: FluxServer, pki: dict[str, Path], query: np.ndarray) -> pb.SearchResponse:
    credentials = grpc.ssl_channel_credentials(
        pki["ca"].read_bytes(), pki["client.key"].read_bytes(), pki["client"].read_bytes()
    )
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(shard.address, credentials, options=options) as channel:
        return _search(channel, query)


def _shard_tls(pki: dict[str, Path], *, ca: str = "ca", client: str | None = "client") -> dict[str, str]:
    tls = {"ca_file": str(pki[ca]), "server_name": SERVER_NAME}
    if client is not None:
        tls |= {"cert_file": str(pki[client]), "key_file": str(pki[f"{client}.key"])}
    return tls


def test_the_router_reaches_a_mutual_tls_shard(
    mutual_shard: FluxServer, pki: dict[str, Path], small: tuple[np.ndarray, Path]
) -> None:
    queries = small[0]
    with (
        _routing(_config(mutual_shard, _shard_tls(pki))) as router,
        grpc.insecure_channel(router.address) as channel,
    ):
        for query in queries:
            got = _search(channel, query)
            assert list(got.neighbors.ids) == list(_truth(mutual_shard, pki, query).neighbors.ids)
            assert list(got.missing_shards) == []


@pytest.mark.parametrize(
    "case",
    ["plaintext", "no client certificate", "client certificate of another CA", "shard certificate of another CA"],
)
def test_a_shard_the_router_cannot_reach_over_tls_is_missing(
    case: str, mutual_shard: FluxServer, pki: dict[str, Path], small: tuple[np.ndarray, Path]
) -> None:
    shard_tls = {
        "plaintext": None,
        "no client certificate": _shard_tls(pki, client=None),
        "client certificate of another CA": _shard_tls(pki, client="stranger"),
        "shard certificate of another CA": _shard_tls(pki, ca="other-ca"),
    }[case]
    with (
        _routing(_config(mutual_shard, shard_tls)) as router,
        grpc.insecure_channel(router.address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _search(channel, small[0][0], timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "shard-00000-of-00001" in (caught.value.details() or "")


def test_the_router_serves_tls_on_its_own_port(
    mutual_shard: FluxServer, pki: dict[str, Path], small: tuple[np.ndarray, Path]
) -> None:
    own = {"tls": {"cert_file": str(pki["server"]), "key_file": str(pki["server.key"])}}
    query = small[0][0]
    with _routing(_config(mutual_shard, _shard_tls(pki), **own)) as router:
        credentials = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
        options = [("grpc.ssl_target_name_override", SERVER_NAME)]
        with grpc.secure_channel(router.address, credentials, options=options) as channel:
            got = _search(channel, query)
        assert list(got.neighbors.ids) == list(_truth(mutual_shard, pki, query).neighbors.ids)
        with grpc.insecure_channel(router.address) as channel, pytest.raises(grpc.RpcError) as caught:
            _search(channel, query, timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_router_tls_files_are_checked(
    mutual_shard: FluxServer, pki: dict[str, Path], tmp_path: Path, small: tuple[np.ndarray, Path]
) -> None:
    (tmp_path / "notes.txt").write_text("not a certificate")
    half = {"ca_file": str(pki["ca"]), "cert_file": str(pki["client"])}
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        _config(mutual_shard, half)
    cases = {
        "router.tls.ca_file": {"ca_file": str(tmp_path / "missing.pem")},
        "router.tls.cert_file": _shard_tls(pki) | {"cert_file": str(tmp_path / "notes.txt")},
        "router.tls.key_file": _shard_tls(pki) | {"key_file": str(tmp_path / "notes.txt")},
    }
    for key, shard_tls in cases.items():
        with pytest.raises(ConfigError, match=key):
            build_router(_config(mutual_shard, shard_tls))


def test_relative_router_tls_paths_are_taken_from_the_config_files_folder(pki: dict[str, Path], tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_bytes((pki["ca"].parent / name).read_bytes())
    config_file = tmp_path / "router.yaml"
    config_file.write_text(
        "router:\n"
        "  tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client.key}\n"
        "  indexes: [{name: items, shard_count: 1, shards: ['127.0.0.1:1']}]\n"
    )
    router = flux_config.load(config_file).router
    assert router is not None
    assert router.tls is not None
    files = (router.tls.ca_file, router.tls.cert_file, router.tls.key_file)
    assert files == (tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key")
