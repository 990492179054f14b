"""The data plane: decode the request into a Query, answer it in the core, encode the Result.

Each handler crosses into the core once (``Catalog.search``), which holds the index version from
the first check to the resolved answer, so a swap in the middle never mixes versions; the encoders
work on the answer alone. Errors are raised as ``flux_core.errors`` and mapped in one interceptor.
"""

from __future__ import annotations

import grpc

from flux.api import convert
from flux.core.serving.catalog import Catalog
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1 import vector_service_pb2_grpc


class VectorServicer(vector_service_pb2_grpc.VectorServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        return convert.search_response(self._catalog.search(convert.search_query(request)))

    def BatchSearch(self, request: pb.BatchSearchRequest, context: grpc.ServicerContext) -> pb.BatchSearchResponse:
        result = self._catalog.search(convert.batch_query(request))
        return convert.batch_response(result, packed=request.packed)

    def SearchById(self, request: pb.SearchByIdRequest, context: grpc.ServicerContext) -> pb.SearchByIdResponse:
        return convert.by_id_response(self._catalog.search(convert.by_id_query(request)))
