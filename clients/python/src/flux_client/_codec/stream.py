"""StreamSearch: the shared fields encoded once per stream, each query appended as bytes, and each
answer decoded as a Search's would be, or as the typed error a Search would raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import grpc
import numpy as np
import numpy.typing as npt

from flux_api.v1 import vector_service_pb2
from flux_client._codec.fields import as_matrix, checked_k, float_vectors, set_options
from flux_client._codec.search import result
from flux_client._errors import FluxError, Internal, from_status, invalid
from flux_client._types import Filter, SearchResult

#: The full name of StreamSearch, for a multi-callable that sends bytes encoded here.
STREAM_SEARCH = "/flux_api.v1.VectorService/StreamSearch"
Queries = npt.ArrayLike | Iterable[npt.ArrayLike]


def stream_template(
    index: str,
    k: int,
    params: Mapping[str, float] | None = None,
    *,
    filter: Filter | None = None,
    version: int = 0,
    routing_key: str = "",
) -> bytes:
    """What every query of one stream shares, encoded once. Each message is these bytes followed by
    the query's own vector and request_id: protobuf parses concatenated messages as one, merged."""
    request = vector_service_pb2.StreamSearchRequest(index=index, k=checked_k(k, "k"))
    set_options(request, params, filter, version, routing_key)
    return request.SerializeToString()


def stream_queries(template: bytes, queries: Queries, failures: list[Exception]) -> Iterator[bytes]:
    """The messages of a StreamSearch, encoded as gRPC asks for them: query ``n`` (a row of a 2-D
    array, or the n-th vector an iterable yields) with request_id ``n``. A query that cannot be
    encoded (or an iterator that raises) ends the stream there and lands in ``failures``, for the
    caller to raise once the queries before it are answered."""
    try:
        if isinstance(queries, np.ndarray):
            rows: Iterable[npt.ArrayLike] = as_matrix(queries, "queries")  # one conversion for the whole matrix
            if queries.ndim != 2:
                raise invalid(
                    f"queries must be a 2-D matrix with one query per row (or an iterable of vectors), "
                    f"got shape {queries.shape}",
                    "queries",
                )
        else:
            rows = queries  # type: ignore[assignment]  # an iterable of vectors
        for number, row in enumerate(rows):
            yield query_message(template, number, row)
    except Exception as exc:  # the caller's iterator may raise anything
        failures.append(exc)


def query_message(template: bytes, number: int, vector: npt.ArrayLike) -> bytes:
    """Query ``number`` of a stream: ``template`` followed by its vector and ``request_id`` ``number``."""
    array = as_matrix(vector, f"queries[{number}]")
    if array.ndim != 1:
        raise invalid(f"queries[{number}] must be one vector (1-D), got shape {array.shape}", f"queries[{number}]")
    return (
        template
        + vector_service_pb2.StreamSearchRequest(vector=float_vectors(array), request_id=number).SerializeToString()
    )


def stream_result(response: vector_service_pb2.StreamSearchResponse, k: int, number: int) -> SearchResult | FluxError:
    """Query ``number``'s answer as ``result`` gives it, or the typed error a Search with it would raise."""
    if response.request_id != number:  # the contract says answers come in the order of the queries
        return Internal(
            grpc.StatusCode.INTERNAL,
            f"StreamSearch answered request_id {response.request_id} where query {number} was due",
            reason="INTERNAL",
        )
    if response.HasField("error"):
        error = response.error
        return from_status(error.code, error.message, error.SerializeToString())
    return result(response.search, k)
