"""The cases of the golden examples: the requests, in order, that a fresh server of the fixture
answers, one list per example file (``CASES``), with the fields left out of comparing each answer.
Changing a case changes what `make golden` records; review the diff of protos/examples/."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import Message

from flux_api.v1 import admin_service_pb2 as apb
from flux_api.v1 import types_pb2 as tpb
from flux_api.v1 import vector_service_pb2 as vpb
from flux_api.v1 import write_service_pb2 as wpb
from flux_client import id_hashes

VECTORS, ADMIN, WRITES = "flux_api.v1.VectorService", "flux_api.v1.AdminService", "flux_api.v1.WriteService"


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


def decode_vectors(value: Mapping[str, Any]) -> list[list[float]]:
    """The rows of a FloatVectors in protobuf JSON (``{"dimension": 4, "data": "<base64>"}``), for people."""
    data = np.frombuffer(base64.b64decode(value.get("data", "")), dtype="<f4")
    rows: list[list[float]] = data.reshape(-1, int(value["dimension"])).tolist()
    return rows


def restrict(namespace: str, *tokens: str) -> tpb.Restrict:
    return tpb.Restrict(namespace=namespace, tokens=list(tokens))


def attributes(crowding_tag: str = "", **restricts: Sequence[str]) -> tpb.ItemAttributes:
    return tpb.ItemAttributes(restricts=[restrict(n, *t) for n, t in restricts.items()], crowding_tag=crowding_tag)


Q1, Q2, Q3, Q4 = (1, 2, 3, 4), (8, 1, 0, 5), (5, 5, 5, 5), (0, 9, 2, 7)
NAN = math.nan


def vector_cases() -> list[Case]:
    search, batch, by_id = f"{VECTORS}/Search", f"{VECTORS}/BatchSearch", f"{VECTORS}/SearchById"
    describe, info = f"{VECTORS}/DescribeIndex", f"{VECTORS}/GetServerInfo"
    stream, items = f"{VECTORS}/StreamSearch", f"{VECTORS}/GetItems"
    req, breq, ireq, sreq = vpb.SearchRequest, vpb.BatchSearchRequest, vpb.SearchByIdRequest, vpb.StreamSearchRequest
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
        Case("search-filter-exclude-id-hashes",
             "the same ids left out by their 64-bit FNV-1a hashes (flux_client.id_hashes): the same answer",
             search, req(index="tracks", vector=vectors(Q1), k=5,
                         filter=tpb.Filter(exclude_id_hashes=id_hashes(["t14", "t11", "t99"]).tolist()))),
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
        Case("stream-search", "three queries on one stream, answered in order under their request ids", stream,
             [sreq(request_id=1, index="tracks", vector=vectors(Q1), k=3),
              sreq(request_id=2, index="tracks", vector=vectors(Q2), k=2,
                   filter=tpb.Filter(deny=[restrict("market", "US")])),
              sreq(request_id=3, index="tracks-hnsw", vector=vectors(Q3), k=2, params={"ef": 32})]),
        Case("stream-search-message-errors",
             "a failed message is answered with its error under its request id, and the stream goes on",
             stream,
             [sreq(request_id=10, index="tracks", vector=vectors(Q4), k=2),
              sreq(request_id=11, index="tracks", vector=vectors((1, 2, 3, 4, 5)), k=2),
              sreq(request_id=12, index="nope", vector=vectors(Q1), k=2),
              sreq(request_id=13, index="tracks", vector=vectors(Q1), k=17),
              sreq(request_id=14, index="tracks", vector=vectors(Q2), k=2)]),
        Case("stream-search-empty", "a stream with no message: no answers, and it ends OK", stream, []),
        Case("get-items", "stored vectors by id, in request order; t99 is not held: found false, no error", items,
             vpb.GetItemsRequest(index="tracks", ids=["t05", "t99", "t01"])),
        Case("get-items-unknown-index", "no index or alias is named nope", items,
             vpb.GetItemsRequest(index="nope", ids=["t05"])),
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
