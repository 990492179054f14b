"""Requests from numpy, answers to numpy: the client-side work of every call, and nothing else.

Vectors travel as little-endian float32 bytes, so encoding is one ``tobytes`` and the
server views them without touching each element. ``flux bench client`` times these
functions against the round trip.

One module a message family: ``search`` (Search, BatchSearch, SearchById), ``stream``
(StreamSearch), ``writes`` (Upsert, UpsertStream, Delete, Snapshot) and ``info`` (index and server
descriptions), on ``fields``, what their messages share. The client modules call them as
``_codec.<name>``.
"""

from flux_client._codec.fields import as_matrix
from flux_client._codec.info import index_description, index_info, server_info
from flux_client._codec.search import batch_request, batch_result, by_id_request, result, search_request
from flux_client._codec.stream import (
    STREAM_SEARCH,
    Queries,
    query_message,
    stream_queries,
    stream_result,
    stream_template,
)
from flux_client._codec.writes import (
    Batch,
    delete_request,
    stream_message,
    stream_messages,
    upsert_request,
    write_result,
)

__all__ = [
    "STREAM_SEARCH",
    "Batch",
    "Queries",
    "as_matrix",
    "batch_request",
    "batch_result",
    "by_id_request",
    "delete_request",
    "index_description",
    "index_info",
    "query_message",
    "result",
    "search_request",
    "server_info",
    "stream_message",
    "stream_messages",
    "stream_queries",
    "stream_result",
    "stream_template",
    "upsert_request",
    "write_result",
]
