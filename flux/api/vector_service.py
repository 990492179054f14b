"""The data plane: decode, acquire the index version, search, encode. No error handling here.

A request holds its version (``catalog.acquire``) from the first check to the encoded answer,
so a swap in the middle never mixes versions."""

from __future__ import annotations

import grpc

from flux.api import convert
from flux.core.catalog import Catalog
from flux.errors import InvalidArgument
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1 import vector_service_pb2_grpc


class VectorServicer(vector_service_pb2_grpc.VectorServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        with self._catalog.acquire(request.index, request.version, request.routing_key) as resolved:
            index = resolved.index
            index.check_dimension(request.vector.dimension, "vector")
            vector = convert.decode_vectors(request.vector, "vector")
            if len(vector) != 1:
                raise InvalidArgument(
                    f"vector must hold exactly one vector, got {len(vector)}; use BatchSearch for several",
                    field="vector",
                )
            index.check_k(request.k)
            params = index.params(request.params)
            query_filter = convert.decode_filter(request.filter, "filter") if request.HasField("filter") else None
            if query_filter is None:
                labels, distances = index.nearest(vector, request.k, params)
                neighbors = convert.neighbors_rows(index, labels, distances)[0]
            else:
                found = index.search_filtered(vector, [request.k], [params], [query_filter])
                neighbors = convert.answers(index, found)[0]
            return pb.SearchResponse(index=index.name, version=index.version, neighbors=neighbors, alias=resolved.alias)

    def BatchSearch(self, request: pb.BatchSearchRequest, context: grpc.ServicerContext) -> pb.BatchSearchResponse:
        with self._catalog.acquire(request.index, request.version, request.routing_key) as resolved:
            index = resolved.index
            index.check_dimension(request.queries.dimension, "queries")
            queries = convert.decode_vectors(request.queries, "queries")
            if len(queries) > index.limits.max_batch:
                raise InvalidArgument(
                    f"queries holds {len(queries)} vectors; the limit is {index.limits.max_batch} per call, "
                    "split the batch",
                    field="queries",
                )
            index.check_k(request.k)
            params = index.params(request.params)
            batch_filter = convert.decode_filter(request.filter, "filter") if request.HasField("filter") else None
            if not request.overrides and batch_filter is None:
                labels, distances = index.nearest(queries, request.k, params, threads=index.batch_threads)
                response = pb.BatchSearchResponse(index=index.name, version=index.version, alias=resolved.alias)
                if request.packed:
                    convert.pack_rows(response.packed, index, labels, distances)
                else:
                    convert.add_rows(response.results, index, labels, distances)
                return response
            if not request.overrides:
                rows = len(queries)
                found = index.search_filtered(
                    queries, [request.k] * rows, [params] * rows, [batch_filter] * rows, threads=index.batch_threads
                )
                results = convert.answers(index, found)
            else:
                if len(request.overrides) != len(queries):
                    raise InvalidArgument(
                        f"overrides has {len(request.overrides)} entries for {len(queries)} queries; "
                        "send none or one per query",
                        field="overrides",
                    )
                ks, row_params, filters = [], [], []
                for row, override in enumerate(request.overrides):
                    k = override.k or request.k
                    index.check_k(k, f"overrides[{row}].k")
                    ks.append(k)
                    merged = {**params, **override.params}
                    row_params.append(index.params(merged, f"overrides[{row}].params") if override.params else params)
                    own = override.HasField("filter")
                    filters.append(
                        convert.decode_filter(override.filter, f"overrides[{row}].filter") if own else batch_filter
                    )
                if any(filters):
                    found = index.search_filtered(queries, ks, row_params, filters, threads=index.batch_threads)
                    results = convert.answers(index, found)
                else:
                    hits = index.search_batch(queries, ks, row_params)
                    results = [convert.neighbors(h, k) for h, k in zip(hits, ks, strict=True)]
            response = pb.BatchSearchResponse(index=index.name, version=index.version, alias=resolved.alias)
            if request.packed:
                convert.pack(response.packed, results)
            else:
                response.results.extend(results)
            return response

    def SearchById(self, request: pb.SearchByIdRequest, context: grpc.ServicerContext) -> pb.SearchByIdResponse:
        with self._catalog.acquire(request.index, request.version, request.routing_key) as resolved:
            index = resolved.index
            index.check_k(request.k)
            params = index.params(request.params)
            query_filter = convert.decode_filter(request.filter, "filter") if request.HasField("filter") else None
            if query_filter is None:
                neighbors = convert.neighbors(index.search_by_id(request.id, request.k, params), request.k)
            else:
                found = index.search_by_id_filtered(request.id, request.k, params, query_filter)
                neighbors = convert.answers(index, [found])[0]
            return pb.SearchByIdResponse(
                index=index.name, version=index.version, neighbors=neighbors, alias=resolved.alias
            )
