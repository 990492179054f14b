"""A numpy-friendly client for Flux.

    from flux_client import FluxClient

    with FluxClient("127.0.0.1:50051") as flux:
        ids, distances = flux.search("demo", vector, k=10)

Depends on grpcio, protobuf and numpy only.
"""

from flux_client._client import FluxClient, IndexInfo, SearchResult
from flux_client._errors import (
    DeadlineExceeded,
    FluxError,
    IndexNotFound,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DeadlineExceeded",
    "FluxClient",
    "FluxError",
    "IndexInfo",
    "IndexNotFound",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SearchResult",
    "Unauthenticated",
    "Unavailable",
]
