"""The data plane: decode the request into a Query, answer it in the core, encode the Result.

Each handler crosses into the core once (``Catalog.search``), which holds the index version from
the first check to the resolved answer, so a swap in the middle never mixes versions; the encoders
work on the answer alone. Errors are raised as ``flux_core.errors`` and mapped in one interceptor.

``StreamSearch`` takes that same path for each query of a stream, one query at a time: it reads
the next query only once gRPC has taken the answer before it, so a caller that stops reading
stops the stream (HTTP/2 flow control) and the server never holds more than one of its queries.
A query that fails is yielded as ``errors.QueryFailed``, which the error interceptor turns into
that query's answer with the status Search would have given it; the stream goes on.

Besides searches, what a caller with the reader role may know: an index's description
(``DescribeIndex``: what it needs to query it), the server's versions (``GetServerInfo``), and
the stored vectors of items by id (``GetItems``, which a router needs for SearchById over shards).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial

import grpc

import flux
import flux_api
from flux.api import admin_service, convert
from flux.api.errors import QueryFailed
from flux.core.serving.catalog import Catalog
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1 import vector_service_pb2_grpc
from flux_core.backend import defaults
from flux_core.errors import FluxError
from flux_core.storage import registry

log = logging.getLogger(__name__)


class VectorServicer(vector_service_pb2_grpc.VectorServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._backends: list[pb.BackendInfo] | None = None  # found on first use: importing them takes a while

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        return convert.search_response(self._catalog.search(convert.search_query(request)))

    def StreamSearch(  # type: ignore[override]  # a QueryFailed becomes its answer in errors.ErrorInterceptor
        self, requests: Iterator[pb.StreamSearchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamSearchResponse | QueryFailed]:
        search = self._catalog.search
        for request in requests:  # gRPC asks for the next message only when this loop does
            try:
                response = convert.stream_response(request.request_id, search(convert.search_query(request)))
            except Exception as error:  # this query's own failure: it is answered, and the stream goes on
                yield QueryFailed(error, request, partial(convert.stream_error, request.request_id))
                continue
            yield response

    def BatchSearch(self, request: pb.BatchSearchRequest, context: grpc.ServicerContext) -> pb.BatchSearchResponse:
        result = self._catalog.search(convert.batch_query(request))
        return convert.batch_response(result, packed=request.packed)

    def SearchById(self, request: pb.SearchByIdRequest, context: grpc.ServicerContext) -> pb.SearchByIdResponse:
        return convert.by_id_response(self._catalog.search(convert.by_id_query(request)))

    def GetItems(self, request: pb.GetItemsRequest, context: grpc.ServicerContext) -> pb.GetItemsResponse:
        with self._catalog.acquire(request.index, request.version) as resolved:
            index = resolved.index
            vectors, found = index.vectors_of(request.ids)
            return convert.items_response(index.name, index.version, request.ids, vectors, found)

    def DescribeIndex(
        self, request: pb.DescribeIndexRequest, context: grpc.ServicerContext
    ) -> pb.DescribeIndexResponse:
        name, alias = request.index, ""
        chosen = next((a for a in self._catalog.aliases() if a.name == name), None)
        if chosen is not None:
            alias, name = name, chosen.arms[chosen.route(request.routing_key)].index
        info = admin_service.describe(self._catalog.manager(name), convert.STATES[self._catalog.state(name)])
        return pb.DescribeIndexResponse(
            index=pb.IndexDescription(
                name=info.name,
                backend=info.backend,
                dimension=info.dimension,
                metric=info.metric,
                count=info.count,
                version=info.version,
                default_search_params=info.default_search_params,
                capabilities=info.capabilities if info.HasField("capabilities") else None,
                state=info.state,
            ),
            alias=alias,
        )

    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetServerInfoResponse:
        if self._backends is None:
            self._backends = installed_backends()
        return pb.GetServerInfoResponse(
            contract_version=flux_api.CONTRACT_VERSION, server_version=flux.__version__, backends=self._backends
        )


def installed_backends() -> list[pb.BackendInfo]:
    """Every backend the server could serve an index with, by name; one that fails to import is left out."""
    found = []
    for name in registry.names():
        try:
            backend = registry.get(name)
        except FluxError as exc:
            log.warning("backend %r is left out of GetServerInfo: %s", name, exc.message)
            continue
        found.append(
            pb.BackendInfo(
                name=name,
                capabilities=convert.capabilities(backend.capabilities),
                default_search_params=defaults(backend.search_params),
            )
        )
    return found
