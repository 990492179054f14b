"""A numpy-friendly client for Flux, the gRPC nearest-neighbour service.

    from flux_client import FluxClient

    with FluxClient("127.0.0.1:50051") as flux:
        ids, distances = flux.search("demo", vector, k=10)

``AsyncFluxClient`` offers the same calls as coroutines. Depends on grpcio, protobuf and
numpy only; the version follows the wire contract (1.x speaks ``flux_api.v1``).
"""

from importlib.metadata import PackageNotFoundError, version

from flux_client._aio import AsyncFluxClient
from flux_client._channel import TLS
from flux_client._client import FluxClient
from flux_client._errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FluxError,
    IndexNotFound,
    Internal,
    InvalidArgument,
    ItemNotFound,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from flux_client._types import Filter, IndexInfo, SearchResult

try:
    __version__ = version("flux-client")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"

#: The wire contract this client speaks.
API_VERSION = "flux_api.v1"

__all__ = [
    "API_VERSION",
    "TLS",
    "AsyncFluxClient",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Filter",
    "FluxClient",
    "FluxError",
    "IndexInfo",
    "IndexNotFound",
    "Internal",
    "InvalidArgument",
    "ItemNotFound",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SearchResult",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]
