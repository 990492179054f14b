"""The router's VectorService: decodes nothing itself, hands each call to the ``Router``, answers its result.

A shard's refusal reaches the caller as the shard gave it (code, message, ErrorInfo and reason);
the router's own refusals are ``flux_core.errors`` that the error interceptor maps, as on a server.
An answer that names missing shards is counted here (``flux_router_partial_answers_total``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import status_pb2

import flux
import flux_api
from flux.api import errors
from flux.router.fanout import Forwarded, Metadata, Router
from flux.router.metrics import partial_answer
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1 import vector_service_pb2_grpc
from flux_core.errors import FluxError

_T = TypeVar("_T")
#: Caller metadata the shards see too: the token, so shards with auth on accept the router's calls.
FORWARDED_METADATA = ("authorization",)
#: gRPC Python reports a call without deadline as this much time left, or more.
_NO_DEADLINE = 1e9


class RouterServicer(vector_service_pb2_grpc.VectorServiceServicer):
    def __init__(self, router: Router) -> None:
        self._router = router

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        return _answer(self._router.search, request, context)

    def StreamSearch(
        self, requests: Iterator[pb.StreamSearchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamSearchResponse]:
        """Each query as Search would answer it, in order; a query that fails is answered with its status."""
        for request in requests:
            query = pb.SearchRequest.FromString(request.SerializeToString())  # fields 1-7 are SearchRequest's
            response = pb.StreamSearchResponse(request_id=request.request_id)
            try:
                response.search.CopyFrom(_answer(self._router.search, query, context, abort=False))
            except Forwarded as shard:
                _error_of(response.error, shard.status.code, shard.status.details, shard.status.trailing_metadata)
            except FluxError as error:
                rich = errors.rich_status(error.code, error.message, errors.reason_of(error), field=error.field)
                response.error.code, response.error.message = rich.code, rich.message
                response.error.details.extend(rich.details)
            yield response

    def BatchSearch(self, request: pb.BatchSearchRequest, context: grpc.ServicerContext) -> pb.BatchSearchResponse:
        return _answer(self._router.batch_search, request, context)

    def SearchById(self, request: pb.SearchByIdRequest, context: grpc.ServicerContext) -> pb.SearchByIdResponse:
        return _answer(self._router.search_by_id, request, context)

    def GetItems(self, request: pb.GetItemsRequest, context: grpc.ServicerContext) -> pb.GetItemsResponse:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "GetItems is not served by a router: ask the shard servers, whose GetItems answers found=false "
            "for the ids they do not hold",
        )
        raise AssertionError("unreachable")  # abort raises

    def DescribeIndex(
        self, request: pb.DescribeIndexRequest, context: grpc.ServicerContext
    ) -> pb.DescribeIndexResponse:
        return _answer(self._router.describe, request, context)

    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetServerInfoResponse:
        # A router serves with no backend of its own: the shards' GetServerInfo lists theirs.
        return pb.GetServerInfoResponse(contract_version=flux_api.CONTRACT_VERSION, server_version=flux.__version__)


def _answer(
    method: Callable[[Any, float | None, Metadata], _T], request: Any, context: grpc.ServicerContext, abort: bool = True
) -> _T:
    left = context.time_remaining()
    timeout = None if left is None or left >= _NO_DEADLINE else left
    metadata = [(m.key, m.value) for m in context.invocation_metadata() if m.key in FORWARDED_METADATA]
    try:
        result = method(request, timeout, metadata)
    except Forwarded as shard:
        if not abort:
            raise
        context.abort_with_status(shard.status)
        raise AssertionError("unreachable") from None  # abort_with_status raises
    partial_answer(request.index, getattr(result, "missing_shards", ()))  # each stream message counts too
    return result


def _error_of(into: pb.ErrorStatus, code: grpc.StatusCode, message: str, trailers: Sequence[tuple[str, Any]]) -> None:
    """A shard's refusal of one query as a stream answer: its google.rpc.Status from the trailers when sent."""
    details = next((value for key, value in trailers if key == "grpc-status-details-bin"), None)
    if isinstance(details, bytes):
        rich = status_pb2.Status.FromString(details)
        into.code, into.message = rich.code, rich.message
        into.details.extend(rich.details)
        return
    into.code, into.message = code.value[0], message
