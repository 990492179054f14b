"""Every error a real server answers carries a google.rpc.ErrorInfo: domain flux.vectors, a stable reason
from the contract's list, metadata (field, index, limit, ...), the reason again in the flux-error-reason
trailer, and for INVALID_ARGUMENT the BadRequest field violation. Also what the interceptors answer
themselves (auth, malformed bytes, an answer too large) and gRPC's own refusals as the client names them."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from flux import config as flux_config
from flux.api.auth import hash_token
from flux.api.convert import encode_vectors
from flux.api.errors import reason_of
from flux.core.serving.budget import MemoryBudget
from flux.core.writes import wal
from flux.core.writes.commit import GroupCommit, Ticket
from flux.server import build_server
from flux_api.v1 import admin_service_pb2 as apb
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1 import write_service_pb2 as wpb
from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_api.v1.write_service_pb2_grpc import WriteServiceStub
from flux_core.errors import (
    DOMAIN,
    FailedPrecondition,
    FluxError,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from tests import support

DIM = 64
PROTO = Path(__file__).resolve().parent.parent / "protos" / "flux_api" / "v1" / "vector_service.proto"


class Answer:
    """What a failed call said: code, message, ErrorInfo and BadRequest."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.code: grpc.StatusCode = error.code()
        self.message: str = error.details() or ""
        status = rpc_status.from_call(error)
        assert status is not None, f"{self.code.name} without status details: {self.message}"
        assert status.message == self.message
        infos = [_unpack(d, error_details_pb2.ErrorInfo) for d in status.details if d.Is(_descriptor("ErrorInfo"))]
        assert len(infos) == 1, status
        self.info = infos[0]
        self.reason = self.info.reason
        self.metadata = dict(self.info.metadata)
        requests = [_unpack(d, error_details_pb2.BadRequest) for d in status.details if d.Is(_descriptor("BadRequest"))]
        self.fields = [v.field for r in requests for v in r.field_violations]
        assert self.info.domain == DOMAIN == "flux.vectors"
        assert ("flux-error-reason", self.reason) in (error.trailing_metadata() or ())
        if self.code is grpc.StatusCode.INVALID_ARGUMENT and "field" in self.metadata:
            assert self.fields == [self.metadata["field"]]


def _descriptor(name: str) -> Any:
    return getattr(error_details_pb2, name).DESCRIPTOR


def _unpack(detail: any_pb2.Any, kind: Any) -> Any:
    message = kind()
    assert detail.Unpack(message)
    return message


def failing(call: Callable[[], object]) -> Answer:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return Answer(caught.value)


def vector(rows: int = 1, dimension: int = DIM, value: float = 1.0) -> types_pb2.FloatVectors:
    return types_pb2.FloatVectors(dimension=dimension, data=np.full((rows, dimension), value, "<f4").tobytes())


def contract_reasons() -> set[str]:
    """The reasons the contract lists, from the comment on VectorService."""
    text = PROTO.read_text(encoding="utf-8")
    listing = text[text.index("// INVALID_ARGUMENT\n") : text.index("// A few statuses come from gRPC itself")]
    return set(re.findall(r"^//\s+(?:[A-Z_]+\s{2,})?([A-Z][A-Z_]+)\s", listing, flags=re.MULTILINE))


def test_the_contract_and_the_docs_list_exactly_the_reasons_the_server_knows() -> None:
    assert contract_reasons() == {r.value for r in Reason}
    documented = (PROTO.parents[3] / "docs" / "errors.md").read_text(encoding="utf-8")
    assert set(re.findall(r"^\| `([A-Z_]+)` \| [A-Z_]+ \|", documented, flags=re.MULTILINE)) == {
        r.value for r in Reason
    }


# -- searches, on the shared server (max_k 256, max_batch 512) --------------------------------------


@pytest.mark.parametrize(
    ("request_", "reason", "field", "limit"),
    [
        (
            pb.SearchRequest(index="hnsw-l2", vector=vector(dimension=32), k=5),
            "DIMENSION_MISMATCH",
            "vector.dimension",
            None,
        ),
        (
            pb.SearchRequest(index="hnsw-l2", vector=vector(dimension=0), k=5),
            "MALFORMED_VECTORS",
            "vector.dimension",
            None,
        ),
        (
            pb.SearchRequest(index="hnsw-l2", vector=types_pb2.FloatVectors(dimension=DIM, data=b"\0" * 258), k=5),
            "MALFORMED_VECTORS",
            "vector.data",
            None,
        ),
        (pb.SearchRequest(index="hnsw-l2", vector=vector(value=np.nan), k=5), "NOT_FINITE", "vector", None),
        (pb.SearchRequest(index="hnsw-l2", vector=vector(value=1e20), k=5), "NORM_TOO_LARGE", "vector", None),
        (pb.SearchRequest(index="hnsw-l2", vector=vector(rows=2), k=5), "COUNT_MISMATCH", "vector", None),
        (pb.SearchRequest(index="hnsw-l2", vector=vector(), k=0), "K_OUT_OF_RANGE", "k", "256"),
        (pb.SearchRequest(index="annoy-l2", vector=vector(), k=257), "K_OUT_OF_RANGE", "k", "256"),
        (pb.SearchRequest(index="annoy-l2", vector=vector(), k=5, params={"ef": 10}), "UNKNOWN_PARAM", "params", None),
        (
            pb.SearchRequest(index="hnsw-l2", vector=vector(), k=5, params={"ef": 0.5}),
            "PARAM_OUT_OF_RANGE",
            "params.ef",
            None,
        ),
        (
            pb.SearchRequest(
                index="hnsw-l2", vector=vector(), k=5, filter=types_pb2.Filter(allow=[types_pb2.Restrict(tokens=["x"])])
            ),
            "INVALID_FILTER",
            "filter.allow[0].namespace",
            None,
        ),
        (
            pb.SearchRequest(
                index="hnsw-l2", vector=vector(), k=5, filter=types_pb2.Filter(exclude_ids=["x"] * 10_001)
            ),
            "INVALID_FILTER",
            "filter.exclude_ids",
            "10000",
        ),
        (pb.SearchRequest(index="hnsw-l2", vector=vector(), k=5, version=99), "VERSION_NOT_FOUND", "version", None),
        (pb.SearchRequest(index="no-such-index", vector=vector(), k=5), "INDEX_NOT_FOUND", "index", None),
        (pb.SearchRequest(index="broken", vector=vector(), k=5), "INDEX_FAILED", "index", None),
    ],
)
def test_search_errors_carry_their_reason_field_index_and_limit(
    vectors_stub: VectorServiceStub, request_: pb.SearchRequest, reason: str, field: str, limit: str | None
) -> None:
    answer = failing(lambda: vectors_stub.Search(request_, timeout=10))
    assert (answer.reason, answer.metadata.get("field"), answer.metadata.get("limit")) == (reason, field, limit)
    assert answer.metadata["index"] == request_.index
    assert answer.message  # what to fix, in words


@pytest.mark.parametrize(
    ("request_", "reason", "field", "limit"),
    [
        (pb.BatchSearchRequest(index="hnsw-l2", queries=vector(rows=0), k=5), "EMPTY_BATCH", "queries.data", None),
        (pb.BatchSearchRequest(index="hnsw-l2", queries=vector(rows=513), k=5), "BATCH_TOO_LARGE", "queries", "512"),
        (
            pb.BatchSearchRequest(index="exact-l2", queries=vector(rows=2), k=5, overrides=[pb.QueryOverride()]),
            "COUNT_MISMATCH",
            "overrides",
            None,
        ),
        (
            pb.BatchSearchRequest(
                index="exact-l2", queries=vector(rows=2), k=5, overrides=[pb.QueryOverride(), pb.QueryOverride(k=999)]
            ),
            "K_OUT_OF_RANGE",
            "overrides[1].k",
            "256",
        ),
        (
            pb.BatchSearchRequest(
                index="hnsw-l2",
                queries=vector(rows=2),
                k=5,
                overrides=[pb.QueryOverride(), pb.QueryOverride(params={"x": 1})],
            ),
            "UNKNOWN_PARAM",
            "overrides[1].params",
            None,
        ),
    ],
)
def test_batch_errors_carry_their_reason(
    vectors_stub: VectorServiceStub, request_: pb.BatchSearchRequest, reason: str, field: str, limit: str | None
) -> None:
    answer = failing(lambda: vectors_stub.BatchSearch(request_, timeout=10))
    assert (answer.code, answer.reason, answer.metadata.get("field"), answer.metadata.get("limit")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        field,
        limit,
    )


def test_an_unknown_id_is_item_not_found(vectors_stub: VectorServiceStub) -> None:
    answer = failing(lambda: vectors_stub.SearchById(pb.SearchByIdRequest(index="hnsw-l2", id="item:nope", k=5)))
    assert (answer.code, answer.reason, answer.metadata["index"]) == (
        grpc.StatusCode.NOT_FOUND,
        "ITEM_NOT_FOUND",
        "hnsw-l2",
    )


def test_bytes_that_are_no_request_are_malformed_request(channel: grpc.Channel) -> None:
    search = channel.unary_unary("/flux_api.v1.VectorService/Search")  # bytes in, bytes out
    answer = failing(lambda: search(b"\xff\xff\xff", timeout=10))
    assert (answer.code, answer.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


def test_version_operations_carry_their_reason(admin_stub: AdminServiceStub) -> None:
    cases = [
        (lambda: admin_stub.LoadVersion(apb.LoadVersionRequest(index="hnsw-l2", version=99)), "VERSION_NOT_FOUND"),
        (lambda: admin_stub.UnloadVersion(apb.UnloadVersionRequest(index="hnsw-l2", version=3)), "VERSION_ACTIVE"),
        (lambda: admin_stub.RollbackVersion(apb.RollbackVersionRequest(index="hnsw-l2")), "NO_ROLLBACK_TARGET"),
        (lambda: admin_stub.RollbackVersion(apb.RollbackVersionRequest(index="broken")), "NO_ROLLBACK_TARGET"),
        (lambda: admin_stub.GetIndex(apb.GetIndexRequest(name="nope")), "INDEX_NOT_FOUND"),
    ]
    assert [failing(call).reason for call, _ in cases] == [reason for _, reason in cases]


def test_a_version_that_fails_to_load_is_version_failed(tmp_path: Path) -> None:
    base, _ = support.dataset(n=50, dimension=8, queries=1)
    support.build_artifact(tmp_path / "items" / "1", base, backend="exact", metric="l2", name="items", version=1)
    (tmp_path / "items" / "2").mkdir()  # a version folder without an artifact
    config = support.server_config([{"name": "items", "path": str(tmp_path / "items"), "poll_seconds": 0}])
    with support.running_server(config) as server, support.channel_to(server) as channel:
        admin = AdminServiceStub(channel)
        answer = failing(lambda: admin.LoadVersion(apb.LoadVersionRequest(index="items", version=2), timeout=30))
    assert (answer.code, answer.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VERSION_FAILED")


def test_an_index_not_loaded_yet_is_index_loading_and_described_from_its_config(tmp_path: Path) -> None:
    base, _ = support.dataset(n=50, dimension=8, queries=1)
    artifact = support.build_artifact(tmp_path / "items", base, backend="exact", metric="l2", name="items")
    config = support.server_config([{"name": "items", "path": str(artifact), "dimension": 8, "metric": "l2"}])
    server = build_server(config)
    server.grpc_server.start()  # answering calls, and no index tried yet (FluxServer.start would load them)
    try:
        with support.channel_to(server) as channel:
            stub = VectorServiceStub(channel)
            answer = failing(lambda: stub.Search(pb.SearchRequest(index="items", vector=vector(dimension=8), k=1)))
            described = stub.DescribeIndex(pb.DescribeIndexRequest(index="items"), timeout=10).index
    finally:
        server.stop(grace=0)
    assert (answer.code, answer.reason, answer.metadata["index"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "INDEX_LOADING",
        "items",
    )
    assert (described.state, described.dimension, described.metric, described.count) == (
        apb.INDEX_STATE_LOADING,
        8,
        types_pb2.METRIC_L2,
        0,
    )


def test_an_answer_too_large_to_send_is_response_too_large_naming_the_limit(tmp_path: Path) -> None:
    base, queries = support.dataset(n=300, dimension=8, queries=100)
    artifact = support.build_artifact(tmp_path / "items", base, backend="exact", metric="l2", name="items")
    config = support.server_config([{"name": "items", "path": str(artifact)}], limits={"max_message_bytes": 4096})
    with support.running_server(config) as server, support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        request = pb.BatchSearchRequest(index="items", queries=encode_vectors(queries), k=50)
        answer = failing(lambda: stub.BatchSearch(request, timeout=10))
    assert (answer.code, answer.reason, answer.metadata["limit"]) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RESPONSE_TOO_LARGE",
        "4096",
    )


def test_an_unknown_health_service_is_not_found_with_a_message(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    index = failing(lambda: health.Check(health_pb2.HealthCheckRequest(service="flux.index.nope"), timeout=10))
    other = failing(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10))
    assert (index.code, index.reason) == (grpc.StatusCode.NOT_FOUND, "INDEX_NOT_FOUND")
    assert "'flux.index.nope'" in index.message
    assert "no index of that name" in index.message
    assert (other.code, other.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert "'no.such.Service'" in other.message
    served = health.Check(health_pb2.HealthCheckRequest(service="flux.index.hnsw-l2"), timeout=10)
    assert served.status == health_pb2.HealthCheckResponse.SERVING


# -- writes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def writes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    root = tmp_path_factory.mktemp("writes")
    base, _ = support.dataset(n=50, dimension=8, queries=1)
    indexes = [
        {
            "name": "songs",
            "path": str(root / "songs"),
            "backend": "exact",
            "dimension": 8,
            "metric": "l2",
            "poll_seconds": 0,
            "writes": {"enabled": True, "snapshot_every": 0},
        },
        {"name": "frozen", "path": str(support.build_artifact(root / "frozen", base, backend="annoy", metric="l2"))},
        {  # takes writes, but its backend cannot apply them
            "name": "trees",
            "path": str(support.build_artifact(root / "trees" / "1", base, backend="annoy", metric="l2").parent),
            "poll_seconds": 0,
            "writes": {"enabled": True, "snapshot_every": 0},
        },
        {"name": "plain", "path": str(support.build_artifact(root / "plain", base, backend="exact", metric="l2"))},
    ]
    config = flux_config.parse(
        {
            "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 1.0},
            "limits": {"max_batch": 4, "max_id_bytes": 16},
            "indexes": indexes,
            "aliases": [{"name": "music", "arms": [{"index": "songs", "weight": 100}]}],
        },
        source="writes test config",
    )
    with support.running_server(config) as server, support.channel_to(server) as channel:
        yield channel


def _upsert(ids: list[str], rows: int | None = None, dimension: int = 8, **fields: Any) -> wpb.UpsertRequest:
    matrix = np.ones((len(ids) if rows is None else rows, dimension), np.float32)
    return wpb.UpsertRequest(index=fields.pop("index", "songs"), ids=ids, vectors=encode_vectors(matrix), **fields)


@pytest.mark.parametrize(
    ("request_", "reason", "field", "limit"),
    [
        (wpb.UpsertRequest(index="songs"), "EMPTY_BATCH", "ids", None),
        (_upsert(["a", "b", "c", "d", "e"]), "BATCH_TOO_LARGE", "ids", "4"),
        (_upsert(["a", ""]), "INVALID_ID", "ids[1]", None),
        (_upsert(["a", "b", "a"]), "DUPLICATE_ID", "ids[2]", None),
        (_upsert(["a", "x" * 17]), "ID_TOO_LONG", "ids[1]", "16"),
        (_upsert(["a", "b"], rows=3), "COUNT_MISMATCH", "vectors", None),
        (_upsert(["a"], dimension=4), "DIMENSION_MISMATCH", "vectors.dimension", None),
        (_upsert(["a", "b"], attributes=[types_pb2.ItemAttributes()]), "COUNT_MISMATCH", "attributes", None),
        (
            _upsert(["a"], attributes=[types_pb2.ItemAttributes(restricts=[types_pb2.Restrict(namespace="m")])]),
            "INVALID_ATTRIBUTES",
            "attributes[0].restricts[0].tokens",
            None,
        ),
        (_upsert(["a"], index="frozen"), "INDEX_IMMUTABLE", "index", None),
        (_upsert(["a"], index="trees"), "INDEX_IMMUTABLE", "index", None),
        (_upsert(["a"], index="plain"), "WRITES_DISABLED", "index", None),
        (_upsert(["a"], index="nope"), "INDEX_NOT_FOUND", "index", None),
    ],
)
def test_write_errors_carry_their_reason(
    writes: grpc.Channel, request_: wpb.UpsertRequest, reason: str, field: str, limit: str | None
) -> None:
    answer = failing(lambda: WriteServiceStub(writes).Upsert(request_, timeout=10))
    assert (answer.reason, answer.metadata.get("field"), answer.metadata.get("limit")) == (reason, field, limit)


def test_stream_errors_carry_their_reason(writes: grpc.Channel) -> None:
    stub = WriteServiceStub(writes)
    first = wpb.UpsertStreamRequest(index="songs", ids=["s1"], vectors=encode_vectors(np.ones((1, 8))))
    other = wpb.UpsertStreamRequest(index="plain", ids=["s2"], vectors=encode_vectors(np.ones((1, 8))))
    mixed = failing(lambda: stub.UpsertStream(iter([first, other]), timeout=10))
    empty = failing(lambda: stub.UpsertStream(iter([]), timeout=10))
    assert (mixed.reason, mixed.metadata["field"]) == ("STREAM_INDEX_MISMATCH", "messages[1].index")
    assert (empty.reason, empty.metadata["field"]) == ("EMPTY_BATCH", "messages")


def test_a_version_asked_of_an_alias_is_version_on_alias(writes: grpc.Channel) -> None:
    request = pb.SearchRequest(index="music", vector=vector(dimension=8), k=1, version=1)
    answer = failing(lambda: VectorServiceStub(writes).Search(request, timeout=10))
    assert (answer.reason, answer.metadata["field"], answer.metadata["index"]) == (
        "VERSION_ON_ALIAS",
        "version",
        "music",
    )


# -- reasons are given where errors are raised, never read from their messages ----------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (Unavailable("index 'x' is shutting down; retry against a running server"), Reason.UNAVAILABLE),
        (Unavailable("index 'x' is still loading; retry shortly"), Reason.UNAVAILABLE),
        (
            ResourceExhausted("version 2 needs 9 MiB, but only 1 MiB of the memory budget are free"),
            Reason.RESOURCE_EXHAUSTED,
        ),
        (InvalidArgument("queries holds 9 vectors; the limit is 4 per call", field="queries"), Reason.COUNT_MISMATCH),
        (InvalidArgument("ids holds 9 ids; the limit is 4 per call", field="ids"), Reason.EMPTY_BATCH),
        (InvalidArgument("ids[2] 'a' repeats ids[0]", field="ids[2]"), Reason.INVALID_ID),
        (InvalidArgument("ids[1] is 17 bytes long (UTF-8)", field="ids[1]"), Reason.INVALID_ID),
        (
            FailedPrecondition("index 'x' uses the annoy backend, which is immutable", field="index"),
            Reason.INDEX_FAILED,
        ),
        (FailedPrecondition("index 'x' is read-only on this server", field="index"), Reason.INDEX_FAILED),
        (FailedPrecondition("index 'x' refuses writes: the disk is full"), Reason.FAILED_PRECONDITION),
        (FailedPrecondition("index 'x' has no version older than 2 to roll back to"), Reason.FAILED_PRECONDITION),
        (FailedPrecondition("version 2 of index 'x' failed: no manifest"), Reason.FAILED_PRECONDITION),
        # A name made up by a caller or an operator is echoed into messages: it must not change the reason.
        (
            FailedPrecondition("index 'immutable' failed to load version 1: no manifest", field="index"),
            Reason.INDEX_FAILED,
        ),
    ],
)
def test_a_reason_never_depends_on_the_message(error: FluxError, reason: Reason) -> None:
    """Only the class and the field count; a cause they cannot tell apart is given its reason where raised."""
    reworded = type(error)("reworded", field=error.field)
    assert (reason_of(error), reason_of(reworded)) == (reason, reason)


def test_a_failed_log_refuses_writes_with_writes_failed_and_a_closing_one_with_shutting_down(tmp_path: Path) -> None:
    log = wal.Log.open(tmp_path)

    def apply(tickets: Sequence[Ticket]) -> list[None]:
        raise RuntimeError("the backend broke")

    commit = GroupCommit(log, apply, name="broken")
    with pytest.raises(FailedPrecondition) as waited:  # refused by the flusher, raised again to the writer
        commit.submit(b"x", None).wait()
    with pytest.raises(FailedPrecondition) as submitted:  # refused at once
        commit.submit(b"y", None)
    commit.close()
    commit = GroupCommit(log, lambda tickets: [None] * len(tickets), name="closing")
    commit.close()
    with pytest.raises(Unavailable) as shutting_down:
        commit.submit(b"z", None)
    log.close()
    assert [reason_of(e.value) for e in (waited, submitted, shutting_down)] == [
        Reason.WRITES_FAILED,
        Reason.WRITES_FAILED,
        Reason.SHUTTING_DOWN,
    ]


def test_a_version_beyond_the_memory_budget_is_memory_budget_exceeded() -> None:
    budget = MemoryBudget(2**20)
    budget.reserve(2**19, "version 1 of index 'x'")
    with pytest.raises(ResourceExhausted) as caught:
        budget.reserve(2**20, "version 2 of index 'x'")
    assert reason_of(caught.value) == Reason.MEMORY_BUDGET_EXCEEDED


# -- auth ------------------------------------------------------------------------------------------


def test_auth_refusals_name_the_role(tmp_path: Path) -> None:
    base, _ = support.dataset(n=50, dimension=8, queries=1)
    artifact = support.build_artifact(tmp_path / "items", base, backend="exact", metric="l2", name="items")
    tokens = [{"name": "ranker", "role": "reader", "sha256": hash_token("reader-secret")}]
    config = support.server_config([{"name": "items", "path": str(artifact)}], auth={"tokens": tokens})
    reader = (("authorization", "Bearer reader-secret"),)
    with support.running_server(config) as server, support.channel_to(server) as channel:
        upsert = _upsert(["a"], index="items")
        denied = failing(lambda: WriteServiceStub(channel).Upsert(upsert, metadata=reader, timeout=10))
        search = pb.SearchRequest(index="items", vector=vector(dimension=8), k=1)
        anonymous = failing(lambda: VectorServiceStub(channel).Search(search, timeout=10))
        index_health = health_pb2.HealthCheckRequest(service="flux.index.items")
        health = failing(lambda: health_pb2_grpc.HealthStub(channel).Check(index_health, timeout=10))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert denied.metadata == {"role": "reader", "required_role": "writer"}
    assert (anonymous.code, anonymous.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert anonymous.metadata == {"required_role": "reader"}
    assert (health.code, health.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


# -- what gRPC answers itself, as the Python client names it ---------------------------------------


def test_the_client_names_grpc_s_own_refusals(tmp_path: Path) -> None:
    from flux_client import DeadlineExceeded, FluxClient, MessageTooLarge, Overloaded

    base, _ = support.dataset(n=50, dimension=8, queries=1)
    artifact = support.build_artifact(tmp_path / "items", base, backend="exact", metric="l2", name="items")
    config = support.server_config(
        [{"name": "items", "path": str(artifact)}],
        server={"max_concurrent_calls": 1},
        limits={"max_message_bytes": 4096},
    )
    with support.running_server(config) as server, FluxClient(server.address, retries=0) as flux:
        with pytest.raises(MessageTooLarge) as too_large:
            flux.search("items", np.ones((200, 8)), k=1)  # 6.4 kB of queries
        ended = threading.Event()

        def one_query() -> Iterator[pb.StreamSearchRequest]:
            yield pb.StreamSearchRequest(index="items", vector=encode_vectors(base[:1]), k=1, request_id=1)
            ended.wait(30)

        stream = VectorServiceStub(flux.channel).StreamSearch(one_query(), timeout=30)
        try:
            assert next(stream).request_id == 1  # the one call allowed runs, and stays open
            with pytest.raises(Overloaded) as overloaded:
                flux.search("items", base[0], k=1)
        finally:
            ended.set()
            stream.cancel()
    # No server any more: a call that waits for one passes its deadline on the client.
    with FluxClient(server.address, retries=0, wait_for_ready=True) as flux, pytest.raises(DeadlineExceeded) as late:
        flux.search("items", base[0], k=1, timeout=0.2)
    for caught, reason in ((too_large, "MESSAGE_TOO_LARGE"), (overloaded, "OVERLOADED"), (late, "DEADLINE_EXCEEDED")):
        assert (caught.value.reason, caught.value.domain) == (reason, "")  # named by the client, not the server


def test_the_error_reasons_need_no_sleep_to_hold_under_concurrency(vectors_stub: VectorServiceStub) -> None:
    """Reasons come from the error, not from shared state: concurrent bad requests each get their own."""
    requests = [
        (pb.SearchRequest(index="hnsw-l2", vector=vector(), k=0), "K_OUT_OF_RANGE"),
        (pb.SearchRequest(index="hnsw-l2", vector=vector(dimension=32), k=5), "DIMENSION_MISMATCH"),
    ] * 20
    found: dict[int, str] = {}

    def ask(number: int, request: pb.SearchRequest) -> None:
        found[number] = failing(lambda: vectors_stub.Search(request, timeout=10)).reason

    threads = [threading.Thread(target=ask, args=(n, r)) for n, (r, _) in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [found[n] for n in range(len(requests))] == [reason for _, reason in requests]
