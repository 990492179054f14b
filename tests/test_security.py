"""TLS and mutual TLS, bearer tokens and roles, and the data root, against real servers.

Certificates come from the ``pki`` fixture (tests/pki.py): a CA, a second CA that signed
nothing of ours, a server certificate for flux.test and a client certificate.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from flux import config as flux_config
from flux.api.auth import hash_token
from flux.server import FluxServer
from flux_api.v1 import admin_service_pb2, types_pb2, vector_service_pb2
from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_client import (
    CONTRACT_VERSION,
    TLS,
    FailedPrecondition,
    FluxClient,
    IndexNotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from flux_core.errors import ConfigError
from tests import support
from tests.pki import SERVER_NAME

TOKENS = {"reader": "r-token-7f3a", "writer": "w-token-91bc", "admin": "a-token-c044"}
UPSERT = "/flux_api.v1.WriteService/Upsert"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    base, queries = support.dataset(n=300, dimension=8, queries=3)
    path = support.build_artifact(
        tmp_path_factory.mktemp("small") / "small", base, backend="exact", metric="l2", name="small"
    )
    return queries, path


def _serve(artifact: Path, **sections: Any) -> Any:
    return support.running_server(support.server_config([{"name": "small", "path": str(artifact)}], **sections))


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, Path], small: tuple[np.ndarray, Path]) -> Iterator[FluxServer]:
    tls = {"cert_file": str(pki["server"]), "key_file": str(pki["server.key"])}
    with _serve(small[1], tls=tls, server={"health_port": 0}) as server:
        yield server


def test_tls_client_with_the_ca_succeeds_and_without_it_fails(
    tls_server: FluxServer, pki: dict[str, Path], small: tuple[np.ndarray, Path]
) -> None:
    queries, _ = small
    trusted = TLS.from_files(ca=pki["ca"], server_name=SERVER_NAME)
    with FluxClient(tls_server.address, tls=trusted) as client:
        assert len(client.search("small", queries[0], k=3).ids) == 3
    for tls in (TLS(server_name=SERVER_NAME), TLS.from_files(ca=pki["other-ca"], server_name=SERVER_NAME)):
        with FluxClient(tls_server.address, tls=tls, retries=0) as client, pytest.raises(Unavailable):
            client.search("small", queries[0], k=3)  # the system's roots, or another CA, do not know ours
    with FluxClient(tls_server.address, retries=0) as client, pytest.raises(Unavailable):
        client.search("small", queries[0], k=3)  # plaintext to the TLS port


def test_the_health_port_answers_probes_in_plaintext_beside_a_tls_port(tls_server: FluxServer) -> None:
    assert tls_server.health_port is not None
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.health_port.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        index = health_pb2.HealthCheckRequest(service="flux.index.small")
        assert health.Check(index, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        grpc_search = channel.unary_unary("/flux_api.v1.VectorService/Search")
        with pytest.raises(grpc.RpcError) as caught:  # only health lives there
            grpc_search(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_mutual_tls_without_a_client_certificate_fails(pki: dict[str, Path], small: tuple[np.ndarray, Path]) -> None:
    queries, artifact = small
    tls = {"cert_file": str(pki["server"]), "key_file": str(pki["server.key"]), "client_ca_file": str(pki["ca"])}
    with _serve(artifact, tls=tls) as server:
        server_only = TLS.from_files(ca=pki["ca"], server_name=SERVER_NAME)
        with FluxClient(server.address, tls=server_only, retries=0) as client, pytest.raises(Unavailable):
            client.search("small", queries[0], k=3)
        stranger = TLS.from_files(
            ca=pki["ca"], cert=pki["stranger"], key=pki["stranger.key"], server_name=SERVER_NAME
        )  # a certificate, but signed by a CA the server does not trust
        with FluxClient(server.address, tls=stranger, retries=0) as client, pytest.raises(Unavailable):
            client.search("small", queries[0], k=3)
        mutual = TLS.from_files(ca=pki["ca"], cert=pki["client"], key=pki["client.key"], server_name=SERVER_NAME)
        with FluxClient(server.address, tls=mutual) as client:
            assert len(client.search("small", queries[0], k=3).ids) == 3


def test_tls_files_that_are_missing_or_not_pem_are_named(pki: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a certificate")
    cases = {
        "tls.cert_file": {"cert_file": str(tmp_path / "missing.pem"), "key_file": str(pki["server.key"])},
        "tls.key_file": {"cert_file": str(pki["server"]), "key_file": str(tmp_path / "notes.txt")},
    }
    for key, tls in cases.items():
        config = support.server_config([], tls=tls)
        with pytest.raises(ConfigError, match=key):
            support.running_server(config).__enter__()


# --- tokens and roles ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(small: tuple[np.ndarray, Path]) -> Iterator[FluxServer]:
    tokens = [{"name": f"{role}-1", "role": role, "sha256": hash_token(token)} for role, token in TOKENS.items()]
    with _serve(small[1], auth={"tokens": tokens}, logging={"requests": True}) as server:
        yield server


def _bearer(role: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[role]}"),) if role else ()


def _search(channel: grpc.Channel, role: str | None, queries: np.ndarray) -> grpc.StatusCode:
    vector = types_pb2.FloatVectors(dimension=8, data=queries[0].astype("<f4").tobytes())
    request = vector_service_pb2.SearchRequest(index="small", vector=vector, k=3)
    try:
        VectorServiceStub(channel).Search(request, metadata=_bearer(role), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _upsert(channel: grpc.Channel, role: str | None) -> grpc.RpcError:
    """Upsert by its full name through a generic call, whether or not WriteService is registered."""
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(UPSERT)(b"", metadata=_bearer(role), timeout=10)
    return caught.value


def _load_version(channel: grpc.Channel, role: str | None) -> grpc.RpcError:
    request = admin_service_pb2.LoadVersionRequest(index="small", version=99)
    with pytest.raises(grpc.RpcError) as caught:
        AdminServiceStub(channel).LoadVersion(request, metadata=_bearer(role), timeout=10)
    return caught.value


def test_a_reader_token_can_search_but_cannot_upsert_or_load(
    auth_server: FluxServer, small: tuple[np.ndarray, Path]
) -> None:
    with support.channel_to(auth_server) as channel:
        assert _search(channel, "reader", small[0]) is grpc.StatusCode.OK
        upsert = _upsert(channel, "reader")
        assert upsert.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "'reader-1' has the reader role" in upsert.details()
        assert "needs the writer role" in upsert.details()
        load = _load_version(channel, "reader")
        assert load.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "needs the admin role" in load.details()


def test_roles_include_the_ones_below(auth_server: FluxServer, small: tuple[np.ndarray, Path]) -> None:
    with support.channel_to(auth_server) as channel:
        assert _search(channel, "writer", small[0]) is grpc.StatusCode.OK
        assert _upsert(channel, "writer").code() is not grpc.StatusCode.PERMISSION_DENIED  # past auth
        assert _load_version(channel, "writer").code() is grpc.StatusCode.PERMISSION_DENIED
        assert _search(channel, "admin", small[0]) is grpc.StatusCode.OK
        assert _upsert(channel, "admin").code() is not grpc.StatusCode.PERMISSION_DENIED
        load = _load_version(channel, "admin")
        assert load.code() is grpc.StatusCode.NOT_FOUND  # past auth: version 99 does not exist
        assert "version 99" in load.details()


def test_no_token_or_an_unknown_token_is_unauthenticated(
    auth_server: FluxServer, small: tuple[np.ndarray, Path]
) -> None:
    with support.channel_to(auth_server) as channel:
        assert _search(channel, None, small[0]) is grpc.StatusCode.UNAUTHENTICATED
        assert _upsert(channel, None).code() is grpc.StatusCode.UNAUTHENTICATED
        assert _load_version(channel, None).code() is grpc.StatusCode.UNAUTHENTICATED
        for metadata in ((("authorization", "Bearer not-a-token"),), (("authorization", TOKENS["admin"]),)):
            with pytest.raises(grpc.RpcError) as caught:  # an unknown token, and a known one without "Bearer"
                channel.unary_unary("/flux_api.v1.AdminService/ListIndexes")(b"", metadata=metadata, timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <token>" in caught.value.details()


def test_a_refused_call_is_counted_and_logged_and_refused_before_its_bytes_are_judged(
    auth_server: FluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Auth sits inside the metrics and the request log, and outside the malformed-request check."""
    method = "flux_api.v1.VectorService/Search"

    def counted(code: str) -> float:
        return REGISTRY.get_sample_value("flux_requests_total", {"method": method, "index": "", "code": code}) or 0

    before = counted("UNAUTHENTICATED")
    caplog.set_level(logging.INFO, logger="flux.requests")
    with support.channel_to(auth_server) as channel:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as caught:  # bytes that are no SearchRequest, and no token
                channel.unary_unary(f"/{method}")(b"\xff\xff", timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:  # with a token, the same bytes reach the check
            channel.unary_unary(f"/{method}")(b"\xff\xff", metadata=_bearer("reader"), timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert counted("UNAUTHENTICATED") - before == 2
    logged = [r.__dict__ for r in caplog.records if r.name == "flux.requests" and r.__dict__.get("method") == method]
    assert [(r["code"], r["principal"]) for r in logged[-3:]] == [
        ("UNAUTHENTICATED", ""),
        ("UNAUTHENTICATED", ""),
        ("INVALID_ARGUMENT", "reader-1"),
    ]


def test_unknown_methods_need_admin_and_health_and_reflection_stay_open(auth_server: FluxServer) -> None:
    with support.channel_to(auth_server) as channel:
        unknown = channel.unary_unary("/flux_api.v1.SecretService/Peek")
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", metadata=_bearer("writer"), timeout=10)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", metadata=_bearer("admin"), timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        answers = list(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in answers[0].list_services_response.service}
        assert "flux_api.v1.VectorService" in names


def test_the_client_sends_its_token_over_tls_and_tokens_never_reach_the_logs(
    pki: dict[str, Path], small: tuple[np.ndarray, Path], caplog: pytest.LogCaptureFixture
) -> None:
    queries, artifact = small
    tls = {"cert_file": str(pki["server"]), "key_file": str(pki["server.key"])}
    tokens = [{"name": "ranker", "role": "reader", "sha256": hash_token(TOKENS["reader"])}]
    caplog.set_level(logging.DEBUG)
    with _serve(artifact, tls=tls, auth={"tokens": tokens}, logging={"requests": True}) as server:
        secure = TLS.from_files(ca=pki["ca"], server_name=SERVER_NAME)
        with FluxClient(server.address, tls=secure, token=TOKENS["reader"]) as client:
            assert len(client.search("small", queries[0], k=3).ids) == 3
            described = client.describe_index("small")  # VectorService: what a reader needs to query
            assert (described.dimension, described.metric, described.state) == (8, "l2", "serving")
            assert client.server_info().contract_version == CONTRACT_VERSION
            with pytest.raises(PermissionDenied) as denied:
                client.describe("small")  # AdminService: admin only
            assert denied.value.metadata == {"role": "reader", "required_role": "admin"}
        other = FluxClient(server.address, tls=secure, token=TOKENS["admin"], retries=0)
        with other, pytest.raises(Unauthenticated):
            other.search("small", queries[0], k=3)  # a token this server does not list
    requests = [r for r in caplog.records if r.name == "flux.requests"]
    assert [getattr(r, "principal", None) for r in requests[:2]] == ["ranker", "ranker"]
    assert [getattr(r, "code", None) for r in requests[-3:]] == ["OK", "PERMISSION_DENIED", "UNAUTHENTICATED"]
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for token in TOKENS.values():
        assert token not in logged


# --- the data root ---------------------------------------------------------------------------------


def test_index_paths_outside_the_data_root_are_refused_by_name(tmp_path: Path, small: tuple[np.ndarray, Path]) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    shutil.copytree(small[1], outside)
    (root / "escape").symlink_to(outside)
    for path in ("../outside", str(outside), "escape", "tracks/../../outside"):
        (tmp_path / "flux.yaml").write_text(
            f"server: {{data_root: root}}\nindexes:\n  - name: tracks\n    path: root/{path}\n"
            if not path.startswith("/")
            else f"server: {{data_root: root}}\nindexes:\n  - name: tracks\n    path: {path}\n"
        )
        with pytest.raises(ConfigError) as caught:
            flux_config.load(tmp_path / "flux.yaml", environ={})
        assert "indexes[0].path" in caught.value.message
        assert f"outside server.data_root {root}" in caught.value.message
    (tmp_path / "flux.yaml").write_text(
        "server: {data_root: root}\nindexes:\n  - name: tracks\n    path: root/tracks\n"
    )
    assert flux_config.load(tmp_path / "flux.yaml", environ={}).indexes[0].path == root / "tracks"


def test_version_directories_and_artifact_files_that_lead_out_are_refused(
    tmp_path: Path, small: tuple[np.ndarray, Path], caplog: pytest.LogCaptureFixture
) -> None:
    queries, artifact = small
    root, outside = tmp_path / "root", tmp_path / "outside"
    source = root / "tracks"
    source.mkdir(parents=True)
    outside.mkdir()
    shutil.copytree(artifact, source / "1")
    shutil.copytree(artifact, outside / "2")
    (source / "2").symlink_to(outside / "2")  # a whole version elsewhere
    shutil.copytree(artifact, source / "3")
    shutil.copy(source / "3" / "ids.json", outside / "ids.json")
    (source / "3" / "ids.json").unlink()
    (source / "3" / "ids.json").symlink_to(outside / "ids.json")  # one file elsewhere, same bytes
    config = support.server_config(
        [{"name": "tracks", "path": str(source), "versions": {"policy": "specific", "versions": [1]}}],
        server={"data_root": str(root)},
    )
    caplog.set_level(logging.WARNING, logger="flux_core.storage.confine")
    with support.running_server(config) as server, support.channel_to(server) as channel:
        admin = AdminServiceStub(channel)
        cases = (
            (2, source / "2", "the version directory leads outside the data root"),
            (3, source / "3" / "ids.json", "ids.json: leads outside the data root"),
        )
        for version, culprit, said in cases:
            with pytest.raises(grpc.RpcError) as caught:
                admin.LoadVersion(admin_service_pb2.LoadVersionRequest(index="tracks", version=version), timeout=30)
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert f"version {version} of index 'tracks' failed: {said}; refused" in caught.value.details()
            assert str(tmp_path) not in caught.value.details()  # the server's paths stay on the server
            assert f"{culprit}: resolves to {culprit.resolve()}, outside the data root {root}" in caplog.text
        listed = admin.ListVersions(admin_service_pb2.ListVersionsRequest(index="tracks"), timeout=10)
        assert listed.active_version == 1  # version 1 keeps serving
        with FluxClient(server.address) as client:
            assert len(client.search("tracks", queries[0], k=3).ids) == 3


def test_index_names_never_reach_the_file_system(auth_server: FluxServer) -> None:
    with support.channel_to(auth_server) as channel:
        for name in ("../small", "small/../../etc", "/etc/passwd"):
            request = admin_service_pb2.GetIndexRequest(name=name)
            with pytest.raises(grpc.RpcError) as caught:
                AdminServiceStub(channel).GetIndex(request, metadata=_bearer("admin"), timeout=10)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND


# --- what errors and health tell a caller ------------------------------------------------------------


def test_a_reader_learns_the_index_version_and_file_of_a_failure_and_the_log_the_full_path(
    tmp_path: Path, small: tuple[np.ndarray, Path], caplog: pytest.LogCaptureFixture
) -> None:
    queries, artifact = small
    source = tmp_path / "srv" / "tracks"
    shutil.copytree(artifact, source / "1")
    ids = source / "1" / "ids.json"
    ids.write_text(ids.read_text().replace("item:000001", "item:00000X"))  # same size, other bytes
    caplog.set_level(logging.WARNING)
    config = support.server_config([{"name": "tracks", "path": str(source)}])
    with (
        support.running_server(config) as server,
        FluxClient(server.address, retries=0) as client,
        pytest.raises(FailedPrecondition) as caught,
    ):
        client.search("tracks", queries[0], k=3)
    message = caught.value.message
    assert message == "index 'tracks' failed to load version 1: ids.json: checksum mismatch, the file is corrupt"
    assert f"artifact {source / '1'} refused: ids.json: checksum mismatch" in caplog.text


def test_with_tokens_unknown_index_errors_list_no_names_and_index_health_needs_a_token(
    auth_server: FluxServer, small: tuple[np.ndarray, Path]
) -> None:
    with (
        FluxClient(auth_server.address, token=TOKENS["reader"], retries=0) as client,
        pytest.raises(IndexNotFound) as caught,  # the client still tells the cause apart (reason trailer)
    ):
        client.search("nope", small[0][0], k=3)
    assert caught.value.message == "no index named 'nope'"  # not "(indexes: small)"
    with support.channel_to(auth_server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving  # probes stay open
        for service in ("flux.index.small", "flux.index.nope"):  # the same answer whether or not it exists
            request = health_pb2.HealthCheckRequest(service=service)
            with pytest.raises(grpc.RpcError) as refused:
                health.Check(request, timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <token>" in refused.value.details()
            with pytest.raises(grpc.RpcError) as refused:
                next(health.Watch(request, timeout=5))
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        small_health = health_pb2.HealthCheckRequest(service="flux.index.small")
        assert health.Check(small_health, metadata=_bearer("reader"), timeout=5).status == serving
        watch = health.Watch(small_health, metadata=_bearer("reader"), timeout=5)
        assert next(watch).status == serving
        watch.cancel()
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(
                health_pb2.HealthCheckRequest(service="flux.index.nope"), metadata=_bearer("reader"), timeout=5
            )
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
        assert "'flux.index.nope'" in unknown.value.details()
        assert "small" not in unknown.value.details()  # names no index that exists


def _health_of(address: str, service: str) -> object:
    """The status a plaintext health check of ``service`` answers, or the code it fails with."""
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
        except grpc.RpcError as exc:
            return exc.code()


@pytest.mark.parametrize("open_index_health", [False, True])
def test_open_index_health_opens_one_index_health_on_both_ports_and_nothing_else(
    small: tuple[np.ndarray, Path], open_index_health: bool
) -> None:
    queries, artifact = small
    tokens = [{"name": "ranker", "role": "reader", "sha256": hash_token(TOKENS["reader"])}]
    auth = {"tokens": tokens, "open_index_health": open_index_health}
    with _serve(artifact, auth=auth, server={"health_port": 0}) as server:
        assert server.health_port is not None
        expected = health_pb2.HealthCheckResponse.SERVING if open_index_health else grpc.StatusCode.UNAUTHENTICATED
        for address in (server.address, f"127.0.0.1:{server.health_port.port}"):
            assert _health_of(address, "flux.index.small") == expected
            assert _health_of(address, "") == health_pb2.HealthCheckResponse.SERVING
        with support.channel_to(server) as channel:
            assert _search(channel, None, queries) is grpc.StatusCode.UNAUTHENTICATED  # searches still need a token
            vector = types_pb2.FloatVectors(dimension=8, data=queries[0].astype("<f4").tobytes())
            request = vector_service_pb2.SearchRequest(index="nope", vector=vector, k=3)
            with pytest.raises(grpc.RpcError) as caught:
                VectorServiceStub(channel).Search(request, metadata=_bearer("reader"), timeout=10)
            assert caught.value.details() == "no index named 'nope'"


def test_without_tokens_an_unknown_index_error_lists_the_indexes(
    tls_server: FluxServer, pki: dict[str, Path], small: tuple[np.ndarray, Path]
) -> None:
    tls = TLS.from_files(ca=pki["ca"], server_name=SERVER_NAME)
    with FluxClient(tls_server.address, tls=tls) as client, pytest.raises(IndexNotFound) as caught:
        client.search("nope", small[0][0], k=3)
    assert caught.value.message == "no index named 'nope' (indexes: small)"


@pytest.mark.parametrize("first", ["reader", None])
def test_with_tracing_on_every_call_is_still_checked_for_its_own_token(
    small: tuple[np.ndarray, Path], first: str | None, spans: Any
) -> None:
    """Tracing wraps the chain outside auth: what it remembers of one call must not decide the next."""
    queries, path = small
    tokens = [{"name": "reader-1", "role": "reader", "sha256": hash_token(TOKENS["reader"])}]
    with _serve(path, auth={"tokens": tokens}, tracing={"enabled": True}) as server, support.channel_to(server) as ch:
        codes = [_search(ch, role, queries) for role in (first, None, "reader", None, "reader")]
    expected = {None: grpc.StatusCode.UNAUTHENTICATED, "reader": grpc.StatusCode.OK}
    assert codes == [expected[role] for role in (first, None, "reader", None, "reader")]
