"""The client's channel: TLS and mutual TLS, bearer tokens, round-robin over replicas."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from flux.server import FluxServer, build_server
from flux_api.v1 import types_pb2, vector_service_pb2, vector_service_pb2_grpc
from flux_client import TLS, FluxClient, Unauthenticated, Unavailable
from tests import support

TOKEN = "s3cret-token"
SERVER_NAME = "flux.test"  # the only name in the server certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A throwaway CA, a server certificate for flux.test and a client certificate, from openssl;
    plus a second CA that signed neither."""
    root = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={ca}")
    extensions = {
        "server": f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in extensions.items():
        (root / f"{name}.ext").write_text(ext)
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return {p.name: p.read_bytes() for p in root.iterdir() if p.suffix in {".pem", ".key"}}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """A small dataset and two artifacts of it, versions 1 and 2, to tell servers apart."""
    base, queries = support.dataset(n=400, dimension=16, queries=5)
    root = tmp_path_factory.mktemp("small")
    v1, v2 = (
        support.build_artifact(root / f"v{v}", base, backend="exact", metric="l2", name="small", version=v)
        for v in (1, 2)
    )
    return base, queries, v1, v2


@contextmanager
def flux_server(artifact: Path, *extra_ports: grpc.ServerCredentials) -> Iterator[tuple[FluxServer, list[int]]]:
    """A real Flux server; each credential adds a TLS port on 127.0.0.1 beside the plaintext one."""
    server = build_server(support.server_config([{"name": "small", "path": str(artifact)}]))
    ports = [server.grpc_server.add_secure_port("127.0.0.1:0", credentials) for credentials in extra_ports]
    server.start()
    try:
        assert server.wait_ready(30)
        yield server, ports
    finally:
        server.stop(grace=0)


@pytest.fixture(scope="module")
def tls_ports(pki: dict[str, bytes], small: tuple[np.ndarray, np.ndarray, Path, Path]) -> Iterator[tuple[int, int]]:
    """A Flux server with a TLS port and a mutual-TLS port (client certificate required)."""
    pair = [(pki["server.key"], pki["server.pem"])]
    tls = grpc.ssl_server_credentials(pair)
    mutual = grpc.ssl_server_credentials(pair, root_certificates=pki["ca.pem"], require_client_auth=True)
    with flux_server(small[2], tls, mutual) as (_, ports):
        yield ports[0], ports[1]


def test_tls_verifies_the_server_against_the_given_ca(
    tls_ports: tuple[int, int], pki: dict[str, bytes], small: tuple[np.ndarray, np.ndarray, Path, Path]
) -> None:
    base, queries, _, _ = small
    target = f"127.0.0.1:{tls_ports[0]}"
    truth, _ = support.brute_force(base, queries[:1], "l2", 5)
    with FluxClient(target, tls=TLS(root_certificates=pki["ca.pem"], server_name=SERVER_NAME)) as flux:
        ids, _ = flux.search("small", queries[0], k=5)
    assert ids.tolist() == [support.ids_for(len(base))[i] for i in truth[0]]

    # The certificate names neither 127.0.0.1 nor other.test, and the other CA did not sign it.
    for tls in (
        TLS(root_certificates=pki["ca.pem"]),
        TLS(root_certificates=pki["ca.pem"], server_name="other.test"),
        TLS(root_certificates=pki["other-ca.pem"], server_name=SERVER_NAME),
    ):
        with FluxClient(target, tls=tls, retries=0) as flux, pytest.raises(Unavailable):
            flux.search("small", queries[0], k=5)
    with FluxClient(target, retries=0) as flux, pytest.raises(Unavailable):  # plaintext to a TLS port
        flux.search("small", queries[0], k=5)


def test_mutual_tls_needs_the_client_certificate(
    tls_ports: tuple[int, int], pki: dict[str, bytes], small: tuple[np.ndarray, np.ndarray, Path, Path], tmp_path: Path
) -> None:
    _, queries, _, _ = small
    target = f"127.0.0.1:{tls_ports[1]}"
    for name, data in pki.items():
        (tmp_path / name).write_bytes(data)
    server_only = TLS.from_files(ca=tmp_path / "ca.pem", server_name=SERVER_NAME)
    with FluxClient(target, tls=server_only, retries=0) as flux, pytest.raises(Unavailable):
        flux.search("small", queries[0], k=5)
    mutual = TLS.from_files(
        ca=tmp_path / "ca.pem", cert=tmp_path / "client.pem", key=tmp_path / "client.key", server_name=SERVER_NAME
    )
    with FluxClient(target, tls=mutual) as flux:
        assert len(flux.search("small", queries[0], k=5).ids) == 5
    with pytest.raises(ValueError, match="both"):
        TLS(certificate_chain=pki["client.pem"])


class Gatekeeper(vector_service_pb2_grpc.VectorServiceServicer):
    """Answers Search only for the right bearer token, as a Flux server with auth will."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def Search(self, request: vector_service_pb2.SearchRequest, context: grpc.ServicerContext) -> object:
        authorization = dict(context.invocation_metadata()).get("authorization")
        self.seen.append(authorization)
        if authorization != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "send authorization: Bearer <token>")
        neighbors = types_pb2.Neighbors(ids=["granted"], distances=[0.0])
        return vector_service_pb2.SearchResponse(index=request.index, version=1, neighbors=neighbors)


@pytest.fixture(scope="module")
def gatekeeper(pki: dict[str, bytes]) -> Iterator[tuple[Gatekeeper, int, int]]:
    """A token-checking server on a plaintext port and a TLS port."""
    servicer = Gatekeeper()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    vector_service_pb2_grpc.add_VectorServiceServicer_to_server(servicer, server)
    plain = server.add_insecure_port("127.0.0.1:0")
    tls = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(pki["server.key"], pki["server.pem"])]))
    server.start()
    try:
        yield servicer, plain, tls
    finally:
        server.stop(grace=0).wait()


def test_the_token_travels_as_call_credentials_over_tls(
    gatekeeper: tuple[Gatekeeper, int, int], pki: dict[str, bytes]
) -> None:
    servicer, _, port = gatekeeper
    tls = TLS(root_certificates=pki["ca.pem"], server_name=SERVER_NAME)
    with FluxClient(f"127.0.0.1:{port}", tls=tls, token=TOKEN) as flux:
        assert flux.search("any", np.ones(4), k=1).ids.tolist() == ["granted"]
    assert servicer.seen[-1] == f"Bearer {TOKEN}"
    with FluxClient(f"127.0.0.1:{port}", tls=tls) as flux, pytest.raises(Unauthenticated) as caught:
        flux.search("any", np.ones(4), k=1)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in caught.value.message


def test_the_token_goes_on_each_call_over_plaintext(gatekeeper: tuple[Gatekeeper, int, int]) -> None:
    servicer, port, _ = gatekeeper
    with FluxClient(f"127.0.0.1:{port}", token=TOKEN) as flux:
        for _ in range(2):
            assert flux.search("any", np.ones(4), k=1).ids.tolist() == ["granted"]
    assert servicer.seen[-2:] == [f"Bearer {TOKEN}"] * 2
    with FluxClient(f"127.0.0.1:{port}", token="wrong") as flux, pytest.raises(Unauthenticated):
        flux.search("any", np.ones(4), k=1)


def test_round_robin_spreads_calls_over_every_replica(small: tuple[np.ndarray, np.ndarray, Path, Path]) -> None:
    """Two replicas (told apart by their index version) behind one multi-address target."""
    _, queries, v1, v2 = small
    with flux_server(v1) as (first, _), flux_server(v2) as (second, _):
        target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
        with FluxClient(target) as flux:
            seen: set[int] = set()
            for _ in range(200):  # until both connections are up; a few calls at most
                seen.add(flux.search("small", queries[0], k=3).version)
                if seen == {1, 2}:
                    break
            assert seen == {1, 2}
            versions = [flux.search("small", queries[0], k=3).version for _ in range(10)]
            assert sorted(versions) == [1] * 5 + [2] * 5  # strict alternation once both are ready
        with FluxClient(target, load_balancing="pick_first") as flux:
            assert len({flux.search("small", queries[0], k=3).version for _ in range(10)}) == 1


def test_a_dns_target_skips_addresses_that_do_not_answer(small: tuple[np.ndarray, np.ndarray, Path, Path]) -> None:
    """``localhost`` may also resolve to ::1, where nothing listens; calls go to 127.0.0.1."""
    _, queries, v1, _ = small
    with flux_server(v1) as (server, _), FluxClient(f"dns:///localhost:{server.port}") as flux:
        assert [flux.search("small", queries[0], k=3).version for _ in range(5)] == [1] * 5
