"""The router's request path: one request fanned out to every shard of a logical index, the answers merged.

Every shard gets the caller's request (index renamed to the shards' name; filter, exclusions and
params as sent) at once, with a deadline taken from the caller's: the time left minus the share
``deadline_margin`` keeps back to merge and answer. A BatchSearch travels as one batch per shard.
Each shard's call is a blocking one on a thread the router keeps (the last one on the caller's own
thread), not a grpc future, which starts a thread per call at one call at a time
(``flux.router.channels``); a hedged call is made of futures, as it cancels the slower one.

Shards that do not answer (UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED once the channel's retries
to other replicas are spent) are missing: the index's ``on_missing_shards`` policy either fails
the call with UNAVAILABLE naming them, or answers from the others and names them in the answer's
``missing_shards``. Any other refusal by a shard (INVALID_ARGUMENT, NOT_FOUND, ...) is the caller's
answer as the shard gave it, details and reason included.

Versions: an answer never mixes versions. A request naming a version sends it to every shard; one
that names none is first answered by each shard's active version, and when the shards disagree
(a new version rolling out), the shards ahead are asked again for the oldest of those versions,
which they still hold loaded while the rollout lasts. So a new sharded version becomes active
through the router only once every shard has it active (docs/scale.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf.message import Message

from flux.api.errors import REASON_KEY
from flux.core.query.model import MAX_EXCLUDE_IDS
from flux.router.channels import answer, hedged, open_channel, secure
from flux.router.config import RoutedIndex, RouterConfig
from flux.router.merge import Row, fill, fill_packed, merge, row_of, rows_of_packed
from flux.router.metrics import ShardMeter
from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.errors import (
    FailedPrecondition,
    IndexNotFound,
    InvalidArgument,
    ItemNotFound,
    Reason,
    Unavailable,
    shown,
)
from flux_core.storage.sharded import shard_of

#: A shard that ended a call with one of these did not answer: the index's policy decides.
MISSING = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
#: How long past the shards' own deadline the router waits for gRPC to report them (it always does).
_SLACK_SECONDS = 1.0
#: At most this many threads making shard calls (they start as needed).
_MAX_CALL_THREADS = 1024

_M = TypeVar("_M", bound=Message)


class ShardStatus(NamedTuple):
    """A shard's refusal, handed to the caller as it came: code, message and trailers (details, reason)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class Forwarded(Exception):
    """A shard refused the request; the servicer answers the caller with the shard's status."""

    def __init__(self, status: ShardStatus) -> None:
        super().__init__(status.details)
        self.status = status


@dataclass
class Group:
    """The replicas of one shard behind one target."""

    number: int
    name: str
    target: str
    channel: grpc.Channel
    stub: VectorServiceStub
    meter: ShardMeter


@dataclass
class Served:
    """A logical index and its shard groups."""

    config: RoutedIndex
    groups: list[Group]


@dataclass
class Gathered:
    """What the shards answered: a response per shard that answered, None for the missing ones."""

    answers: list[Any]
    missing: list[str]
    version: int


class Router:
    """Fans requests out to shard groups and merges their answers; thread-safe (channels are)."""

    def __init__(self, config: RouterConfig, *, max_message_bytes: int, threads: int = 16) -> None:
        """``threads``: the calls the router answers at once (the server's handler threads); each may need
        a thread per shard but one to call them."""
        self.config = config
        tls = secure(config.tls)  # first: a config error leaves nothing open
        widest = max(index.shard_count for index in config.indexes)
        self._calls = futures.ThreadPoolExecutor(
            max_workers=max(1, min(threads * (widest - 1), _MAX_CALL_THREADS)), thread_name_prefix="flux-router-call"
        )
        self._indexes: dict[str, Served] = {}
        for index in config.indexes:
            groups = []
            for number, (name, target) in enumerate(zip(index.shard_names(), index.shards, strict=True)):
                channel = open_channel(target, config.retries, max_message_bytes, tls)
                stub, meter = VectorServiceStub(channel), ShardMeter(index.name, name)
                groups.append(Group(number, name, target, channel, stub, meter))
            self._indexes[index.name] = Served(index, groups)

    def names(self) -> list[str]:
        return list(self._indexes)

    def close(self) -> None:
        for served in self._indexes.values():
            for group in served.groups:
                group.channel.close()
        self._calls.shutdown(wait=False, cancel_futures=True)

    # -- the three searches ---------------------------------------------------------------

    def search(self, request: pb.SearchRequest, timeout: float | None, metadata: Metadata) -> pb.SearchResponse:
        served = self._served(request.index)
        _check_crowding(served, request.filter if request.HasField("filter") else None, "filter")
        sent = _renamed(request, served)
        got = self._gather(served, "Search", sent, timeout, metadata)
        row = merge([None if a is None else row_of(a.neighbors) for a in got.answers], request.k)
        response = pb.SearchResponse(index=request.index, version=got.version, missing_shards=got.missing)
        fill(response.neighbors, row)
        return response

    def batch_search(
        self, request: pb.BatchSearchRequest, timeout: float | None, metadata: Metadata
    ) -> pb.BatchSearchResponse:
        served = self._served(request.index)
        _check_crowding(served, request.filter if request.HasField("filter") else None, "filter")
        for i, override in enumerate(request.overrides):
            _check_crowding(served, override.filter if override.HasField("filter") else None, f"overrides[{i}].filter")
        sent = _renamed(request, served)
        sent.packed = True  # cheaper for the shards and for the merge; the caller gets the form it asked for
        got = self._gather(served, "BatchSearch", sent, timeout, metadata)
        per_shard = [None if a is None else rows_of_packed(a.packed) for a in got.answers]
        rows_count = next(len(rows) for rows in per_shard if rows is not None)
        ks = [o.k or request.k for o in request.overrides] or [request.k] * rows_count
        merged = [merge([None if rows is None else rows[i] for rows in per_shard], ks[i]) for i in range(rows_count)]
        response = pb.BatchSearchResponse(index=request.index, version=got.version, missing_shards=got.missing)
        if request.packed:
            fill_packed(response.packed, merged)
        else:
            for row in merged:
                fill(response.results.add(), row)
        return response

    def search_by_id(
        self, request: pb.SearchByIdRequest, timeout: float | None, metadata: Metadata
    ) -> pb.SearchByIdResponse:
        """The item's vector from the shard that holds it (GetItems), then a Search of every shard with it, the
        item excluded through the filter (as one server excludes it when a filter is set), merged."""
        served = self._served(request.index)
        _check_crowding(served, request.filter if request.HasField("filter") else None, "filter")
        deadline = time.monotonic() + self._budget(timeout)
        vector, version = self._item_vector(served, request.id, request.version, deadline, metadata)
        query = pb.SearchRequest(
            index=served.config.on_shards,
            vector=vector,
            k=request.k,
            params=request.params,
            version=request.version,
            routing_key=request.routing_key,
        )
        query.filter.CopyFrom(request.filter)
        # The item is left out by excluding its id, unless the caller's exclusions are full: then each
        # shard is asked for one more and the item dropped from the merge (exact without a crowding
        # cap; with one, the item would hold a place of its tag: refused, naming the limit).
        drop_item = False
        held = len(request.filter.exclude_ids) + len(request.filter.exclude_id_hashes)
        if request.id not in request.filter.exclude_ids:
            if held < MAX_EXCLUDE_IDS:
                query.filter.exclude_ids.append(request.id)
            elif request.filter.max_per_crowding_tag:
                raise InvalidArgument(
                    f"filter.exclude_ids and exclude_id_hashes hold {MAX_EXCLUDE_IDS:,} ids, and a router leaves the "
                    "item out of a SearchById with a crowding cap by excluding its id too: send at most "
                    f"{MAX_EXCLUDE_IDS - 1:,}, or the item's own id among them",
                    field="filter.exclude_ids",
                    reason=Reason.INVALID_FILTER,
                )
            else:
                drop_item, query.k = True, request.k + 1
        try:
            got = self._gather(served, "Search", query, timeout, metadata, deadline=deadline)
            if got.version != version:  # the shards answered from another version than the item's: ask it there
                vector, version = self._item_vector(served, request.id, got.version, deadline, metadata)
                query.vector.CopyFrom(vector)
                query.version = got.version
                got = self._gather(served, "Search", query, timeout, metadata, deadline=deadline)
        except Forwarded as refused:
            if drop_item and dict(refused.status.trailing_metadata).get(REASON_KEY) == Reason.K_OUT_OF_RANGE:
                raise InvalidArgument(
                    f"k is {request.k} and filter.exclude_ids and exclude_id_hashes hold {MAX_EXCLUDE_IDS:,} ids, "
                    "not the item's own: "
                    f"a router then leaves the item out by asking each shard for k + 1 = {query.k}, and the shards "
                    f"refused that ({refused.status.details}); ask for a smaller k, or send at most "
                    f"{MAX_EXCLUDE_IDS - 1:,} ids, or the item's own id among them",
                    field="k",
                    reason=Reason.K_OUT_OF_RANGE,
                ) from None
            raise
        row = merge([None if a is None else row_of(a.neighbors) for a in got.answers], query.k)
        if drop_item:
            row = _without(row, request.id, request.k)
        response = pb.SearchByIdResponse(index=request.index, version=got.version, missing_shards=got.missing)
        fill(response.neighbors, row)
        return response

    def _item_vector(
        self, served: Served, item_id: str, version: int, deadline: float, metadata: Metadata
    ) -> tuple[types_pb2.FloatVectors, int]:
        """The stored vector of ``item_id`` and the version it came from: asked of the shard that owns the id
        (an index sharded by id), or of every shard (sharded by crowding tag, which the id does not tell)."""
        config = served.config
        if config.sharded_by == "id":
            owners = [shard_of(item_id, config.shard_count)]
        else:
            owners = [g.number for g in served.groups]
        asked = pb.GetItemsRequest(index=config.on_shards, ids=[item_id], version=version)
        answers = self._call_all(served, "GetItems", {n: asked for n in owners}, deadline, metadata)
        missing = self._settle(served, answers)
        for number in owners:
            if number in missing:
                continue
            answer = answers[number]
            if answer.items and answer.items[0].found:
                return answer.items[0].vector, answer.version
        if missing:
            raise _unavailable(served, missing)
        raise ItemNotFound(
            f"index {config.name!r} has no item with id {shown(item_id)}",
            field="id",
            metadata={"index": config.name},
        )

    def describe(
        self, request: pb.DescribeIndexRequest, timeout: float | None, metadata: Metadata
    ) -> pb.DescribeIndexResponse:
        """The logical index as one: every shard's description, counts summed, the version every shard serves."""
        served = self._served(request.index)
        sent = pb.DescribeIndexRequest(index=served.config.on_shards)
        deadline = time.monotonic() + self._budget(timeout)
        answers = self._call_all(served, "DescribeIndex", {g.number: sent for g in served.groups}, deadline, metadata)
        missing = self._settle(served, answers)
        if missing:
            raise _unavailable(served, missing)
        shards = [a.index for a in answers.values()]
        first = shards[0]
        description = pb.IndexDescription()
        description.CopyFrom(first)
        description.name = request.index
        description.count = sum(s.count for s in shards)
        description.version = min(s.version for s in shards)
        description.state = max(s.state for s in shards)  # LOADING < SERVING < FAILED: the worst shard's
        return pb.DescribeIndexResponse(index=description)

    # -- fan-out, policy and version pinning ---------------------------------------------------

    def _served(self, name: str) -> Served:
        served = self._indexes.get(name)
        if served is None:
            raise IndexNotFound(
                f"no index named {name!r}; this router serves {', '.join(sorted(self._indexes))}",
                field="index",
                metadata={"index": name},
            )
        return served

    def _gather(
        self,
        served: Served,
        method: str,
        request: _M,
        timeout: float | None,
        metadata: Metadata,
        *,
        deadline: float | None = None,
    ) -> Gathered:
        """Every shard's answer to ``request`` from one version, and the shards that did not answer; by
        ``deadline`` (``time.monotonic``) when given, else by the caller's ``timeout`` less the margin."""
        if deadline is None:
            deadline = time.monotonic() + self._budget(timeout)
        groups = served.groups
        answers = self._call_all(served, method, {g.number: request for g in groups}, deadline, metadata)
        versions = {n: a.version for n, a in answers.items() if not isinstance(a, grpc.RpcError)}
        pinned = getattr(request, "version", 0)
        if not pinned and len(set(versions.values())) > 1:
            pinned = min(versions.values())
            again = {}
            for number, version in versions.items():
                if version != pinned:
                    older = type(request)()
                    older.CopyFrom(request)
                    older.version = pinned  # type: ignore[attr-defined]
                    again[number] = older
            asked = self._call_all(served, method, again, deadline, metadata)
            for number, answer in asked.items():
                if isinstance(answer, grpc.RpcError) and answer.code() is grpc.StatusCode.NOT_FOUND:
                    raise Unavailable(
                        f"index {served.config.name!r}: the shards serve versions "
                        f"{sorted(set(versions.values()))} and {groups[number].name} no longer holds version "
                        f"{pinned}; an answer never mixes versions, retry once the rollout is over",
                        reason=Reason.UNAVAILABLE,
                        metadata={"index": served.config.name},
                    )
            answers.update(asked)
        missing = self._settle(served, answers)
        if (missing and served.config.on_missing_shards == "fail") or len(missing) == len(groups):
            raise _unavailable(served, missing)
        ordered = [None if n in missing else answers[n] for n in range(len(groups))]
        version = pinned or next(a.version for a in ordered if a is not None)
        return Gathered(ordered, [groups[n].name for n in missing], version)

    def _budget(self, timeout: float | None) -> float:
        """How long the shards may take: the caller's time left (or the default) minus the margin."""
        left = self.config.default_timeout_seconds if timeout is None else max(0.0, timeout)
        return left * (1.0 - self.config.deadline_margin)

    def _call_all(
        self,
        served: Served,
        method: str,
        requests: Mapping[int, Message],
        deadline: float,
        metadata: Metadata,
    ) -> dict[int, Any]:
        """Call ``method`` on the given shards at once, each by ``deadline`` (``time.monotonic``): each
        shard's answer, or the RpcError it ended with."""
        timeout = max(0.0, deadline - time.monotonic())
        hedging = self.config.hedging
        calls: dict[int, Any] = {n: getattr(served.groups[n].stub, method) for n in requests}  # multicallables
        meters = {n: served.groups[n].meter for n in requests}  # each call recorded as it ends (flux.router.metrics)
        pending: dict[int, futures.Future[Any]] = {}
        answers: dict[int, Any] = {}
        if hedging.enabled:
            for number, request in requests.items():

                def start(call: Callable[..., Any] = calls[number].future, request: Message = request) -> Any:
                    return call(request, timeout=max(0.0, deadline - time.monotonic()), metadata=metadata)

                pending[number] = hedged(start, hedging.delay_seconds, meters[number])
        elif requests:
            *others, last = requests
            for n in others:
                pending[n] = self._calls.submit(answer, calls[n], requests[n], deadline, metadata, meters[n])
            answers[last] = answer(calls[last], requests[last], deadline, metadata, meters[last])
        if pending:
            futures.wait(pending.values(), timeout=timeout + _SLACK_SECONDS)
        for number, future in pending.items():
            if not future.done():  # gRPC ends every call by its deadline; never seen, but never wait forever
                future.cancel()
                answers[number] = _Late()
                continue
            error = future.exception()
            answers[number] = error if error is not None else future.result()
        return answers

    def _settle(self, served: Served, answers: Mapping[int, Any]) -> list[int]:
        """The shards that did not answer; raises ``Forwarded`` for the first shard that refused the request."""
        missing = []
        for number in sorted(answers):
            answer = answers[number]
            if not isinstance(answer, grpc.RpcError):
                continue
            if answer.code() in MISSING:
                missing.append(number)
                continue
            trailers = tuple((m.key, m.value) for m in (answer.trailing_metadata() or ()))
            raise Forwarded(ShardStatus(answer.code(), answer.details() or "", trailers))
        return missing


Metadata = Sequence[tuple[str, str]]


class _Late(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


def _unavailable(served: Served, missing: Sequence[int]) -> Unavailable:
    names = [served.groups[n].name for n in missing]
    targets = ", ".join(f"{served.groups[n].name} ({served.groups[n].target})" for n in missing)
    return Unavailable(
        f"index {served.config.name!r}: {len(missing)} of {len(served.groups)} shards did not answer "
        f"in time: {targets}",
        reason=Reason.UNAVAILABLE,
        metadata={"index": served.config.name, "missing_shards": ",".join(names)},
    )


def _renamed(request: _M, served: Served) -> _M:
    sent = type(request)()
    sent.CopyFrom(request)
    sent.index = served.config.on_shards  # type: ignore[attr-defined]
    return sent


def _without(row: Row, item_id: str, k: int) -> Row:
    """The first k of ``row`` other than ``item_id``; short only if it has fewer than k and the row was."""
    kept = [(item, distance) for item, distance in zip(row.ids, row.distances, strict=True) if item != item_id][:k]
    return Row([i for i, _ in kept], [d for _, d in kept], row.strategy, row.fewer_than_k and len(kept) < k)


def _check_crowding(served: Served, spec: types_pb2.Filter | None, field: str) -> None:
    """A crowding cap is exact over shards only when a tag's items share a shard: refuse it otherwise."""
    if spec is None or not spec.max_per_crowding_tag or served.config.sharded_by == "crowding_tag":
        return
    raise FailedPrecondition(
        f"index {served.config.name!r} is sharded by id, so the items of a crowding tag are spread over its "
        f"shards and no shard can cap them; shard it by its crowding tag for {field}.max_per_crowding_tag",
        field=f"{field}.max_per_crowding_tag",
        metadata={"index": served.config.name},
    )


__all__ = ["Forwarded", "Metadata", "Router", "Row", "ShardStatus"]
