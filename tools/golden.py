"""Golden examples of the wire contract: record them from a real server, replay them against one.

    python tools/golden.py record                 # `make golden`: answer every case, rewrite protos/examples/*.json
    python tools/golden.py replay                 # replay protos/examples/ against a fresh server, report differences
    python tools/golden.py replay --target HOST:PORT --examples DIR
    python tools/golden.py serve                  # serve the fixture, print its address, stop on end of input

protos/examples/README.md describes the files. The cases themselves are written here (``CASES``):
the requests, in order, that a fresh server of ``protos/examples/fixture.json`` answers. Record
after an intended change of an answer and review the diff of protos/examples/ like code; a diff
you did not mean is a break of the contract that Python, Java and Go clients would all see.

The replayer reads a file's requests and expected answers into the generated types of the Python
client (``flux_api``), calls the server, clears the fields a case ignores on both sides and compares
the messages; an error is compared by code, ErrorInfo reason and metadata, and the fields of its
BadRequest violations, never by its message. clients/java/golden and clients/go/golden do the same.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
from google.protobuf import descriptor, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from flux_api.v1 import admin_service_pb2 as apb
from flux_api.v1 import types_pb2 as tpb
from flux_api.v1 import vector_service_pb2 as vpb
from flux_api.v1 import write_service_pb2 as wpb

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "protos" / "examples"
FIXTURE = "fixture.json"
DOMAIN = "flux.vectors"
TIMEOUT_SECONDS = 30.0

VECTORS, ADMIN, WRITES = "flux_api.v1.VectorService", "flux_api.v1.AdminService", "flux_api.v1.WriteService"


# -- the fixture: the indexes, and the server that serves them --------------------------------------------


def load_fixture(examples: Path = EXAMPLES) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((examples / FIXTURE).read_text(encoding="utf-8"))
    return fixture


def build_indexes(fixture: Mapping[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Build every version of every fixture index under ``folder``; the config's index entries."""
    from flux_core.backend import Metric
    from flux_core.storage import builder
    from flux_core.storage.attributes import ItemAttributes

    entries = []
    for index in fixture["indexes"]:
        source = folder / index["name"]
        for version, items_name in sorted(index["versions"].items(), key=lambda pair: int(pair[0])):
            items = fixture["items"][items_name]
            attributes = None
            if any("restricts" in item or "crowding_tag" in item for item in items):
                attributes = [
                    ItemAttributes.create(item.get("restricts", {}), item.get("crowding_tag", "")) for item in items
                ]
            builder.build(
                source / version,
                np.array([item["vector"] for item in items], dtype=np.float32),
                [item["id"] for item in items],
                backend=index["backend"],
                metric=Metric(index["metric"]),
                name=index["name"],
                version=int(version),
                attributes=attributes,
            )
        # poll_seconds 0: no version appears or goes while the cases run, so every answer is the same.
        entries.append({"name": index["name"], "path": str(source), "poll_seconds": 0, **index.get("config", {})})
    return entries


@contextmanager
def serve(examples: Path = EXAMPLES, *, ready_timeout: float = 60.0) -> Iterator[str]:
    """A fresh server of the fixture on 127.0.0.1 (a free port); yields its address. Its files go at exit."""
    from flux import config as flux_config
    from flux.server import build_server

    fixture = load_fixture(examples)
    with ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="flux-golden-"))
        stack.callback(shutil.rmtree, folder, True)
        raw: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.5},
            "indexes": build_indexes(fixture, folder),
            **fixture.get("config", {}),
        }
        server = build_server(flux_config.parse(raw, source=f"{examples / FIXTURE}"))
        server.start()
        stack.callback(server.stop, 0)
        if not server.wait_ready(ready_timeout):
            raise TimeoutError(f"the golden server did not load its indexes within {ready_timeout}s")
        yield server.address


# -- calling any method by name -------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One RPC of the contract, found by its full name (``flux_api.v1.VectorService/Search``)."""

    name: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool

    @classmethod
    def named(cls, name: str) -> Method:
        service_name, _, method_name = name.partition("/")
        try:
            service = descriptor_pool.Default().FindServiceByName(service_name)
        except KeyError:
            raise ValueError(f"no service {service_name!r} in the contract") from None
        method = service.methods_by_name.get(method_name)
        if method is None:
            raise ValueError(f"{service_name} has no method {method_name!r}")
        return cls(
            name,
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
            bool(method.client_streaming),
        )

    def call(self, channel: grpc.Channel, requests: Sequence[Message]) -> Message:
        """Call the method: with the one request, or with the stream of them (client streaming)."""
        path = f"/{self.name}"
        if self.client_streaming:
            stream = channel.stream_unary(
                path, request_serializer=_serialize, response_deserializer=self.response.FromString
            )
            answer: Message = stream(iter(requests), timeout=TIMEOUT_SECONDS)
            return answer
        [request] = requests
        unary = channel.unary_unary(path, request_serializer=_serialize, response_deserializer=self.response.FromString)
        answer = unary(request, timeout=TIMEOUT_SECONDS)
        return answer


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def error_of(failure: grpc.RpcError) -> dict[str, Any]:
    """A failed call as the examples write it: code, ErrorInfo reason and metadata, BadRequest fields.

    The Python client's own decoding of status details reads them (``flux_client``), so the
    replay checks what its users get."""
    from flux_client._errors import from_rpc_error

    error = from_rpc_error(failure)
    said: dict[str, Any] = {"code": error.code.name, "reason": error.reason}
    if error.domain != DOMAIN:
        said["domain"] = error.domain  # never in an example: every Flux error names its domain
    if error.metadata:
        said["metadata"] = dict(sorted(error.metadata.items()))
    if error.field_violations:
        said["field_violations"] = [v.field for v in error.field_violations]
    return said


# -- clearing the fields a case ignores ---------------------------------------------------------------


def clear(message: Message, path: str, whole: str = "") -> None:
    """Clear the field at ``path`` (proto field names joined by dots) in ``message``, in every element of
    the repeated messages on the way. Raises ValueError when a name is no field of its message."""
    whole = whole or path
    head, _, rest = path.partition(".")
    fields = message.DESCRIPTOR.fields_by_name
    if head not in fields:
        raise ValueError(f"{message.DESCRIPTOR.full_name} has no field {head!r} (ignore: {whole!r})")
    if not rest:
        message.ClearField(head)
        return
    found = fields[head]
    if found.message_type is None or found.message_type.GetOptions().map_entry:
        raise ValueError(f"{found.full_name} holds no message fields (ignore: {whole!r})")
    present = list(getattr(message, head)) if found.is_repeated else [getattr(message, head)]
    if not found.is_repeated and not message.HasField(head):
        present = []
    for element in present:
        clear(element, rest, whole)
    if not present:  # still check that the names exist
        clear(message_factory.GetMessageClass(cast(descriptor.Descriptor, found.message_type))(), rest, whole)


# -- replaying ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """A case whose answer is not the example's."""

    file: str
    case: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}: {self.case}: {self.what}"


@dataclass
class Replay:
    """What one replay found: the cases that matched, and the differences."""

    passed: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)


def example_files(examples: Path = EXAMPLES) -> list[Path]:
    """The example files in the order they are replayed (the fixture's ``files``)."""
    return [examples / name for name in load_fixture(examples)["files"]]


def replay(target: str, examples: Path = EXAMPLES) -> Replay:
    """Replay every case of ``examples``, in order, against the fresh fixture server at ``target``."""
    result = Replay()
    with grpc.insecure_channel(target) as channel:
        for path in example_files(examples):
            for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
                what = replay_case(channel, case)
                if what is None:
                    result.passed.append(f"{path.name}: {case.get('name')}")
                else:
                    result.differences.append(Difference(path.name, str(case.get("name")), what))
    return result


def replay_case(channel: grpc.Channel, case: Mapping[str, Any]) -> str | None:
    """None when the server answers ``case`` as the example says, else what differs."""
    try:
        method = Method.named(case["method"])
        raw_requests = case["requests"] if method.client_streaming else [case["request"]]
        requests = [json_format.ParseDict(r, method.request()) for r in raw_requests]
        expected: Message | None = None
        if "response" in case:
            expected = json_format.ParseDict(case["response"], method.response())
        elif "error" not in case:
            return "the case has neither a response nor an error"
    except (KeyError, ValueError, json_format.ParseError) as exc:
        return f"the example does not read as the contract's messages: {exc}"
    try:
        answer = method.call(channel, requests)
    except grpc.RpcError as failure:
        said = error_of(failure)
        if expected is not None:
            return f"expected a response, got the error {json.dumps(said)}"
        return compare_errors(case["error"], said)
    if expected is None:
        return f"expected the error {json.dumps(case['error'])}, got a response: {_json(answer)}"
    try:
        for path in case.get("ignore", []):
            clear(expected, path)
            clear(answer, path)
    except ValueError as exc:
        return str(exc)
    if answer != expected:
        return f"expected {_json(expected)}, got {_json(answer)}"
    return None


def compare_errors(expected: Mapping[str, Any], said: Mapping[str, Any]) -> str | None:
    wanted = {
        "code": expected.get("code"),
        "reason": expected.get("reason"),
        "metadata": expected.get("metadata", {}),
        "field_violations": expected.get("field_violations", []),
    }
    got = {
        "code": said["code"],
        "reason": said["reason"],
        "metadata": said.get("metadata", {}),
        "field_violations": said.get("field_violations", []),
    }
    problems = [f"{key} {wanted[key]!r}, got {got[key]!r}" for key in wanted if wanted[key] != got[key]]
    if "domain" in said:
        problems.append(f"ErrorInfo domain {DOMAIN!r}, got {said['domain']!r}")
    return "expected " + "; ".join(problems) if problems else None


def _json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), sort_keys=True)


# -- the cases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request (or stream of requests) and what is left out of comparing its answer."""

    name: str
    comment: str
    method: str
    request: Message | Sequence[Message]
    ignore: tuple[str, ...] = ()


def vectors(*rows: Sequence[float]) -> tpb.FloatVectors:
    """FloatVectors of ``rows``: little-endian float32 values, row after row (no rows: dimension 4, no data)."""
    data = np.array(rows, dtype="<f4").reshape(len(rows), -1) if rows else np.zeros((0, 4), dtype="<f4")
    return tpb.FloatVectors(dimension=data.shape[1], data=data.tobytes())


def restrict(namespace: str, *tokens: str) -> tpb.Restrict:
    return tpb.Restrict(namespace=namespace, tokens=list(tokens))


def attributes(crowding_tag: str = "", **restricts: Sequence[str]) -> tpb.ItemAttributes:
    return tpb.ItemAttributes(restricts=[restrict(n, *t) for n, t in restricts.items()], crowding_tag=crowding_tag)


Q1, Q2, Q3, Q4 = (1, 2, 3, 4), (8, 1, 0, 5), (5, 5, 5, 5), (0, 9, 2, 7)
NAN = math.nan


def vector_cases() -> list[Case]:
    search, batch, by_id = f"{VECTORS}/Search", f"{VECTORS}/BatchSearch", f"{VECTORS}/SearchById"
    describe, info = f"{VECTORS}/DescribeIndex", f"{VECTORS}/GetServerInfo"
    req, breq, ireq = vpb.SearchRequest, vpb.BatchSearchRequest, vpb.SearchByIdRequest
    return [
        Case("search", f"the 5 items of tracks nearest to {list(Q1)}", search,
             req(index="tracks", vector=vectors(Q1), k=5)),
        Case("search-fewer-items-than-k", "catalog holds 8 items: all of them, and fewer_than_k_matched", search,
             req(index="catalog", vector=vectors(Q2), k=10)),
        Case("search-filter-allow", "genre jazz only (strategy: an exact scan of the few that pass)", search,
             req(index="tracks", vector=vectors(Q1), k=4, filter=tpb.Filter(allow=[restrict("genre", "jazz")]))),
        Case("search-filter-allow-across-namespaces", "genre rock or pop, and market SE", search,
             req(index="tracks", vector=vectors(Q2), k=4,
                 filter=tpb.Filter(allow=[restrict("genre", "rock", "pop"), restrict("market", "SE")]))),
        Case("search-filter-deny", "no item of market US", search,
             req(index="tracks", vector=vectors(Q3), k=5, filter=tpb.Filter(deny=[restrict("market", "US")]))),
        Case("search-filter-exclude-ids", "the answer of `search` without its two nearest; t99 is unknown, ignored",
             search, req(index="tracks", vector=vectors(Q1), k=5,
                         filter=tpb.Filter(exclude_ids=["t14", "t11", "t99"]))),
        Case("search-filter-crowding", "at most one item per crowding tag; untagged items are never held back",
             search, req(index="tracks", vector=vectors(Q4), k=6, filter=tpb.Filter(max_per_crowding_tag=1))),
        Case("search-filter-fewer-than-k-match", "only 2 items are jazz in market DE: fewer_than_k_matched", search,
             req(index="tracks", vector=vectors(Q1), k=5,
                 filter=tpb.Filter(allow=[restrict("genre", "jazz"), restrict("market", "DE")]))),
        Case("search-empty-filter", "a filter with no field set filters nothing (strategy INDEX)", search,
             req(index="tracks", vector=vectors(Q2), k=3, filter=tpb.Filter())),
        Case("search-alias", "through the alias tracks-live, which names itself in the answer", search,
             req(index="tracks-live", vector=vectors(Q1), k=3)),
        Case("search-version", "version 1 asked for explicitly", search,
             req(index="tracks", vector=vectors(Q1), k=3, version=1)),
        Case("search-params", "an hnsw index with its search param ef", search,
             req(index="tracks-hnsw", vector=vectors(Q1), k=3, params={"ef": 32})),
        Case("search-dimension-mismatch", "5 values for an index of dimension 4", search,
             req(index="tracks", vector=vectors((1, 2, 3, 4, 5)), k=3)),
        Case("search-not-finite", "a NaN in the vector", search,
             req(index="tracks", vector=vectors((1, NAN, 3, 4)), k=3)),
        Case("search-norm-too-large", "values so large that distances would overflow float32", search,
             req(index="tracks", vector=vectors((1e30, 1e30, 1e30, 1e30)), k=3)),
        Case("search-two-vectors", "Search takes exactly one vector", search,
             req(index="tracks", vector=vectors(Q1, Q2), k=3)),
        Case("search-malformed-vectors", "12 bytes for dimension 4: not whole rows", search,
             req(index="tracks", vector=tpb.FloatVectors(dimension=4, data=bytes(12)), k=3)),
        Case("search-k-zero", "k must be at least 1", search, req(index="tracks", vector=vectors(Q1), k=0)),
        Case("search-k-above-max", "k above the server's max_k (16 here), named as the limit", search,
             req(index="tracks", vector=vectors(Q1), k=17)),
        Case("search-unknown-index", "no index or alias is named nope", search,
             req(index="nope", vector=vectors(Q1), k=3)),
        Case("search-unknown-param", "the exact backend has no search param ef", search,
             req(index="tracks", vector=vectors(Q1), k=3, params={"ef": 32})),
        Case("search-param-out-of-range", "ef must be at least 1", search,
             req(index="tracks-hnsw", vector=vectors(Q1), k=3, params={"ef": 0})),
        Case("search-invalid-filter", "a restrict without a namespace", search,
             req(index="tracks", vector=vectors(Q1), k=3, filter=tpb.Filter(allow=[restrict("", "jazz")]))),
        Case("search-invalid-filter-namespace-twice", "a namespace twice in allow", search,
             req(index="tracks", vector=vectors(Q1), k=3,
                 filter=tpb.Filter(allow=[restrict("genre", "jazz"), restrict("genre", "pop")]))),
        Case("search-index-failed", "broken has no version it can serve (its folder does not exist)", search,
             req(index="broken", vector=vectors(Q1), k=3)),
        Case("search-version-not-loaded", "version 7 is not loaded", search,
             req(index="tracks", vector=vectors(Q1), k=3, version=7)),
        Case("search-version-on-alias", "a version asked of an alias", search,
             req(index="tracks-live", vector=vectors(Q1), k=3, version=1)),
        Case("batch-search", f"three queries at once: {list(Q1)}, {list(Q2)}, {list(Q3)}", batch,
             breq(index="tracks", queries=vectors(Q1, Q2, Q3), k=3)),
        Case("batch-search-overrides",
             "the batch filters out rock; query 0 takes k 2, query 1 its own filter (market DE), query 2 none", batch,
             breq(index="tracks", queries=vectors(Q1, Q2, Q3), k=3, filter=tpb.Filter(deny=[restrict("genre", "rock")]),
                  overrides=[vpb.QueryOverride(k=2),
                             vpb.QueryOverride(filter=tpb.Filter(allow=[restrict("market", "DE")])),
                             vpb.QueryOverride(filter=tpb.Filter())])),
        Case("batch-search-packed", "the answers of `batch-search` in flat arrays", batch,
             breq(index="tracks", queries=vectors(Q1, Q2, Q3), k=3, packed=True)),
        Case("batch-search-empty", "no queries", batch, breq(index="tracks", queries=vectors(), k=3)),
        Case("batch-search-too-large", "9 queries, above the server's max_batch (8 here)", batch,
             breq(index="tracks", queries=vectors(*[Q1] * 9), k=3)),
        Case("batch-search-overrides-count", "two overrides for three queries", batch,
             breq(index="tracks", queries=vectors(Q1, Q2, Q3), k=3,
                  overrides=[vpb.QueryOverride(k=1), vpb.QueryOverride(k=2)])),
        Case("batch-search-override-k-above-max", "one query's k above max_k", batch,
             breq(index="tracks", queries=vectors(Q1, Q2), k=3,
                  overrides=[vpb.QueryOverride(), vpb.QueryOverride(k=17)])),
        Case("batch-search-override-invalid-filter", "a deny restrict without tokens in one query's filter", batch,
             breq(index="tracks", queries=vectors(Q1, Q2), k=3,
                  overrides=[vpb.QueryOverride(), vpb.QueryOverride(filter=tpb.Filter(deny=[restrict("genre")]))])),
        Case("search-by-id", "the 3 items nearest to t05, t05 itself left out", by_id,
             ireq(index="tracks", id="t05", k=3)),
        Case("search-by-id-filter", "the same, market SE only", by_id,
             ireq(index="tracks", id="t05", k=3, filter=tpb.Filter(allow=[restrict("market", "SE")]))),
        Case("search-by-id-unknown-item", "tracks holds no t99", by_id, ireq(index="tracks", id="t99", k=3)),
        Case("search-by-id-k-zero", "k must be at least 1", by_id, ireq(index="tracks", id="t05", k=0)),
        Case("describe-index", "what a reader needs to query tracks", describe,
             vpb.DescribeIndexRequest(index="tracks")),
        Case("describe-index-params", "an hnsw index and its default search params", describe,
             vpb.DescribeIndexRequest(index="tracks-hnsw")),
        Case("describe-index-writable", "feed takes writes: mutable, and empty so far", describe,
             vpb.DescribeIndexRequest(index="feed")),
        Case("describe-index-alias", "the index behind the alias tracks-live", describe,
             vpb.DescribeIndexRequest(index="tracks-live")),
        Case("describe-index-failed", "an index that failed to load is described from its config, with its state",
             describe, vpb.DescribeIndexRequest(index="broken")),
        Case("describe-index-unknown", "no index or alias is named nope", describe,
             vpb.DescribeIndexRequest(index="nope")),
        Case("server-info", "the contract release; the server's version and its backends depend on the install",
             info, vpb.GetServerInfoRequest(), ignore=("server_version", "backends")),
    ]  # fmt: skip


VERSION_TIMES = ("version.load_seconds", "version.artifact_bytes")


def admin_cases() -> list[Case]:
    def op(method: str, request: Message, name: str, comment: str, ignore: tuple[str, ...] = VERSION_TIMES) -> Case:
        return Case(name, comment, f"{ADMIN}/{method}", request, ignore)

    versions = ("versions.load_seconds", "versions.artifact_bytes")
    return [
        op("ListIndexes", apb.ListIndexesRequest(), "list-indexes",
           "every configured index, sorted by name; broken's error names a folder of the test server",
           ("indexes.stats", "indexes.error")),
        op("GetIndex", apb.GetIndexRequest(name="tracks"), "get-index", "what an admin may know of tracks",
           ("index.stats",)),
        op("GetIndex", apb.GetIndexRequest(name="broken"), "get-index-failed",
           "state FAILED; the error names a folder of the test server", ("index.stats", "index.error")),
        op("GetIndex", apb.GetIndexRequest(name="nope"), "get-index-unknown", "no index is named nope"),
        op("ListVersions", apb.ListVersionsRequest(index="catalog"), "list-versions",
           "catalog's policy is `specific [2]`: version 2 active, 1 and 3 on disk only", versions),
        op("LoadVersion", apb.LoadVersionRequest(index="catalog", version=1), "load-version",
           "version 1 loaded and gated (same items as version 2: recall and overlap 1), not active"),
        op("LoadVersion", apb.LoadVersionRequest(index="catalog", version=3), "load-version-gate-fails",
           "version 3 numbers the same vectors otherwise: its overlap with version 2 is below the gate's 0.9"),
        op("LoadVersion", apb.LoadVersionRequest(index="catalog", version=9), "load-version-unknown",
           "catalog has no version 9"),
        op("ActivateVersion", apb.ActivateVersionRequest(index="catalog", version=1), "activate-version",
           "version 1 answers queries now; 2 stays loaded"),
        op("RollbackVersion", apb.RollbackVersionRequest(index="catalog"), "rollback-version-without-older",
           "version 1 is active: nothing older to roll back to"),
        op("UnloadVersion", apb.UnloadVersionRequest(index="catalog", version=1), "unload-version-active",
           "the active version cannot be unloaded"),
        op("PinVersion", apb.PinVersionRequest(index="catalog", version=2), "pin-version",
           "version 2 active and pinned; version 1, which neither the policy nor the pin keeps, is unloaded"),
        op("RollbackVersion", apb.RollbackVersionRequest(index="catalog"), "rollback-version",
           "from 2 to the newest older version that has not failed: 1, now pinned"),
        op("ListVersions", apb.ListVersionsRequest(index="catalog"), "list-versions-after-rollback",
           "1 active and pinned, 2 still loaded (the policy keeps it), 3 failed with its gate report", versions),
        op("PinVersion", apb.PinVersionRequest(index="catalog", version=2), "pin-version-again",
           "back to version 2, pinned"),
        op("PinVersion", apb.PinVersionRequest(index="catalog", version=0), "unpin-version",
           "version 0 unpins: the policy decides again (it wants 2, already active); the answer is empty"),
        op("LoadVersion", apb.LoadVersionRequest(index="catalog", version=1), "load-version-again",
           "version 1 loaded once more, gated against version 2"),
        op("UnloadVersion", apb.UnloadVersionRequest(index="catalog", version=1), "unload-version",
           "version 1 released; it stays on disk"),
        op("UnloadVersion", apb.UnloadVersionRequest(index="catalog", version=1), "unload-version-not-loaded",
           "version 1 is not loaded"),
        op("ActivateVersion", apb.ActivateVersionRequest(index="nope", version=1), "activate-version-unknown-index",
           "no index is named nope"),
        op("ListVersions", apb.ListVersionsRequest(index="nope"), "list-versions-unknown-index",
           "no index is named nope"),
        op("GetIndex", apb.GetIndexRequest(name="catalog"), "get-index-after-versions",
           "catalog after the version operations: version 2, unpinned, and why version 3 failed", ("index.stats",)),
        op("ListAliases", apb.ListAliasesRequest(), "list-aliases",
           "tracks-live and the requests it routed in vector_service.json; latency varies",
           ("aliases.arms.mean_latency_ms",)),
    ]  # fmt: skip


def write_cases() -> list[Case]:
    upsert, stream, delete = f"{WRITES}/Upsert", f"{WRITES}/UpsertStream", f"{WRITES}/Delete"
    snapshot = f"{WRITES}/Snapshot"
    ureq, sreq = wpb.UpsertRequest, wpb.UpsertStreamRequest
    return [
        Case("upsert", "three new items into the empty writable index feed", upsert,
             ureq(index="feed", ids=["f1", "f2", "f3"], vectors=vectors((1, 0, 0, 0), (0, 2, 0, 0), (0, 0, 3, 0)),
                  attributes=[attributes("artist-a", genre=["rock"]), attributes(genre=["jazz"]),
                              attributes("artist-a", genre=["rock"], market=["SE"])])),
        Case("search-after-upsert", "an acknowledged write is seen by the next search", f"{VECTORS}/Search",
             vpb.SearchRequest(index="feed", vector=vectors((1, 1, 1, 1)), k=5)),
        Case("upsert-replace", "f2 replaced (updated), f4 new (inserted)", upsert,
             ureq(index="feed", ids=["f2", "f4"], vectors=vectors((0, 0, 0, 2), (4, 4, 0, 0)))),
        Case("upsert-stream", "a bulk load of two batches", stream,
             [sreq(index="feed", ids=["f5", "f6"], vectors=vectors((5, 0, 0, 0), (0, 6, 0, 0))),
              sreq(index="feed", ids=["f6", "f7"], vectors=vectors((0, 0, 6, 0), (0, 0, 0, 7)))]),
        Case("delete", "f1 deleted; f99 was never written", delete, wpb.DeleteRequest(index="feed", ids=["f1", "f99"])),
        Case("search-after-writes", "f1 is gone, f2 moved, f5 to f7 arrived", f"{VECTORS}/Search",
             vpb.SearchRequest(index="feed", vector=vectors((1, 1, 1, 1)), k=8)),
        Case("snapshot", "the index as it is now becomes version 2", snapshot, wpb.SnapshotRequest(index="feed")),
        Case("snapshot-nothing-new", "nothing was written since: the same version", snapshot,
             wpb.SnapshotRequest(index="feed")),
        Case("describe-index-after-writes", "feed after the writes and the snapshot", f"{VECTORS}/DescribeIndex",
             vpb.DescribeIndexRequest(index="feed")),
        Case("upsert-dimension-mismatch", "vectors of dimension 3 for an index of dimension 4", upsert,
             ureq(index="feed", ids=["x1"], vectors=vectors((1, 2, 3)))),
        Case("upsert-not-finite", "an infinity in the vector", upsert,
             ureq(index="feed", ids=["x1"], vectors=vectors((1, math.inf, 0, 0)))),
        Case("upsert-count-mismatch", "two ids, one vector", upsert,
             ureq(index="feed", ids=["x1", "x2"], vectors=vectors((1, 2, 3, 4)))),
        Case("upsert-attributes-count-mismatch", "two ids, one attributes entry", upsert,
             ureq(index="feed", ids=["x1", "x2"], vectors=vectors(Q1, Q2), attributes=[attributes(genre=["pop"])])),
        Case("upsert-invalid-attributes", "an empty token", upsert,
             ureq(index="feed", ids=["x1"], vectors=vectors(Q1), attributes=[attributes(genre=[""])])),
        Case("upsert-duplicate-id", "x1 twice", upsert, ureq(index="feed", ids=["x1", "x1"], vectors=vectors(Q1, Q2))),
        Case("upsert-empty-id", "an id must not be empty", upsert, ureq(index="feed", ids=[""], vectors=vectors(Q1))),
        Case("upsert-id-too-long", "a 33-byte id, above the server's max_id_bytes (32 here)", upsert,
             ureq(index="feed", ids=["x" * 33], vectors=vectors(Q1))),
        Case("upsert-no-ids", "nothing to write", upsert, ureq(index="feed", vectors=vectors())),
        Case("upsert-too-many", "9 items, above the server's max_batch (8 here)", upsert,
             ureq(index="feed", ids=[f"x{i}" for i in range(9)], vectors=vectors(*[Q1] * 9))),
        Case("upsert-writes-disabled", "tracks' config does not enable writes", upsert,
             ureq(index="tracks", ids=["x1"], vectors=vectors(Q1))),
        Case("upsert-index-immutable", "annoy indexes cannot change: publish a new version instead", upsert,
             ureq(index="tracks-annoy", ids=["x1"], vectors=vectors(Q1))),
        Case("upsert-index-failed", "broken has no version it can serve", upsert,
             ureq(index="broken", ids=["x1"], vectors=vectors(Q1))),
        Case("upsert-unknown-index", "no index is named nope", upsert,
             ureq(index="nope", ids=["x1"], vectors=vectors(Q1))),
        # A refused stream's earlier messages may or may not be applied (the contract says "may"): these
        # rewrite f5 as it is, so that no later answer depends on it, and no write that follows shows a log sequence.
        Case("upsert-stream-index-mismatch", "the second message names another index; the first rewrites f5 as is",
             stream, [sreq(index="feed", ids=["f5"], vectors=vectors((5, 0, 0, 0))),
                      sreq(index="tracks", ids=["x1"], vectors=vectors(Q1))]),
        Case("upsert-stream-invalid-message", "an empty id in the second message, named with its message", stream,
             [sreq(index="feed", ids=["f5"], vectors=vectors((5, 0, 0, 0))),
              sreq(index="feed", ids=[""], vectors=vectors(Q1))]),
        Case("upsert-stream-empty", "a stream with no message", stream, []),
        Case("delete-no-ids", "nothing to delete", delete, wpb.DeleteRequest(index="feed")),
        Case("delete-duplicate-id", "f2 twice", delete, wpb.DeleteRequest(index="feed", ids=["f2", "f2"])),
        Case("delete-writes-disabled", "tracks' config does not enable writes", delete,
             wpb.DeleteRequest(index="tracks", ids=["t01"])),
        Case("delete-index-immutable", "annoy indexes cannot change", delete,
             wpb.DeleteRequest(index="tracks-annoy", ids=["c1"])),
        Case("snapshot-writes-disabled", "tracks' config does not enable writes", snapshot,
             wpb.SnapshotRequest(index="tracks")),
        Case("snapshot-unknown-index", "no index is named nope", snapshot, wpb.SnapshotRequest(index="nope")),
        Case("search-after-refused-writes", "a refused write changes nothing: feed is as `search-after-writes` left it",
             f"{VECTORS}/Search", vpb.SearchRequest(index="feed", vector=vectors((1, 1, 1, 1)), k=8)),
    ]  # fmt: skip


CASES: dict[str, Callable[[], list[Case]]] = {
    "vector_service.json": vector_cases,
    "admin_service.json": admin_cases,
    "write_service.json": write_cases,
}


# -- recording ----------------------------------------------------------------------------------------


def record(examples: Path = EXAMPLES) -> dict[str, Any]:
    """Answer every case on a fresh server; the files' contents by name (written by ``write``)."""
    files = load_fixture(examples)["files"]
    if list(CASES) != files:
        raise ValueError(f"{FIXTURE} replays {files}, tools/golden.py defines {list(CASES)}")
    recorded: dict[str, Any] = {}
    with serve(examples) as address, grpc.insecure_channel(address) as channel:
        for name in files:
            cases = [record_case(channel, case) for case in CASES[name]()]
            names = [c["name"] for c in cases]
            if len(set(names)) != len(names):
                raise ValueError(f"{name}: case names repeat")
            recorded[name] = {"cases": cases}
    return recorded


def record_case(channel: grpc.Channel, case: Case) -> dict[str, Any]:
    method = Method.named(case.method)
    requests = list(case.request) if isinstance(case.request, Sequence) else [case.request]
    entry: dict[str, Any] = {"name": case.name, "comment": case.comment, "method": case.method}
    as_json = [as_dict(r) for r in requests]
    if method.client_streaming:
        entry["requests"] = as_json
    else:
        entry["request"] = as_json[0]
    try:
        answer = method.call(channel, requests)
    except grpc.RpcError as failure:
        said = error_of(failure)
        if "domain" in said:
            raise ValueError(f"{case.name}: the error names the domain {said['domain']!r}, not {DOMAIN!r}") from None
        entry["error"] = said  # an error's message is never compared: nothing to ignore
        return entry
    _check_no_ties(case.name, answer)
    if case.ignore:
        entry["ignore"] = list(case.ignore)
    for path in case.ignore:
        clear(answer, path)
    entry["response"] = as_dict(answer)
    return entry


def as_dict(message: Message) -> dict[str, Any]:
    """``message`` in protobuf JSON, with the keys of maps and Structs sorted (the server's order may vary)."""
    value: dict[str, Any] = _sort_maps(json_format.MessageToDict(message), message.DESCRIPTOR)
    return value


def _sort_maps(value: Any, kind: Any) -> Any:
    if kind.full_name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        return json.loads(json.dumps(value, sort_keys=True))
    for found in kind.fields:
        if found.json_name not in value or found.message_type is None:
            continue
        inner = value[found.json_name]
        if found.message_type.GetOptions().map_entry:
            entry_value = found.message_type.fields_by_name["value"].message_type
            value[found.json_name] = {
                key: inner[key] if entry_value is None else _sort_maps(inner[key], entry_value) for key in sorted(inner)
            }
        elif found.is_repeated:
            value[found.json_name] = [_sort_maps(element, found.message_type) for element in inner]
        else:
            value[found.json_name] = _sort_maps(inner, found.message_type)
    return value


def _check_no_ties(name: str, answer: Message) -> None:
    """Equal distances in one answer would make it depend on how ties are broken: pick other data."""
    answers: list[list[float]] = []
    if isinstance(answer, vpb.SearchResponse | vpb.SearchByIdResponse):
        answers = [list(answer.neighbors.distances)]
    elif isinstance(answer, vpb.BatchSearchResponse):
        answers = [list(n.distances) for n in answer.results]
        start = 0
        for count in answer.packed.counts:
            answers.append(list(answer.packed.distances[start : start + count]))
            start += count
    for distances in answers:
        if len(set(distances)) != len(distances):
            raise ValueError(f"{name}: equal distances in one answer {distances}; choose another query")


def write(recorded: Mapping[str, Any], examples: Path = EXAMPLES) -> list[Path]:
    written = []
    for name, content in recorded.items():
        path = examples / name
        path.write_text(dumps(content) + "\n", encoding="utf-8")
        written.append(path)
    return written


def dumps(value: Any, depth: int = 0) -> str:
    """JSON indented by two spaces, with lists of numbers or strings on one line."""
    pad = "  " * depth
    if isinstance(value, dict) and value:
        inner = [f"{pad}  {json.dumps(k, ensure_ascii=False)}: {dumps(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(inner) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(f"{pad}  {dumps(v, depth + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def decode_vectors(value: Mapping[str, Any]) -> list[list[float]]:
    """The rows of a FloatVectors in protobuf JSON (``{"dimension": 4, "data": "<base64>"}``), for people."""
    data = np.frombuffer(base64.b64decode(value.get("data", "")), dtype="<f4")
    rows: list[list[float]] = data.reshape(-1, int(value["dimension"])).tolist()
    return rows


# -- command line --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("record", help="answer every case on a fresh server and rewrite the example files")
    play = commands.add_parser("replay", help="replay the examples against a server; exit 1 on any difference")
    play.add_argument("--target", help="a fresh server of the fixture (default: start one here)")
    play.add_argument("--examples", type=Path, default=EXAMPLES, help="the folder of the examples")
    commands.add_parser("serve", help="serve the fixture, print its address, stop at the end of standard input")
    args = parser.parse_args(argv)

    if args.command == "record":
        for path in write(record()):
            print(f"wrote {path.relative_to(ROOT)}")
        print("review the diff of protos/examples/: every change in it is a change clients see")
        return 0
    if args.command == "serve":
        with serve() as address:
            print(address, flush=True)
            sys.stdin.read()
        return 0
    with ExitStack() as stack:
        target = args.target or stack.enter_context(serve(args.examples))
        result = replay(target, args.examples)
    for difference in result.differences:
        print(f"DIFFERENT {difference}")
    print(f"{len(result.passed)} passed, {len(result.differences)} failed")
    return 1 if result.differences else 0


if __name__ == "__main__":
    sys.exit(main())
