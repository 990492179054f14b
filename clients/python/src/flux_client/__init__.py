"""A numpy-friendly client for Flux, the gRPC nearest-neighbour service.

    from flux_client import FluxClient

    with FluxClient("127.0.0.1:50051") as flux:
        ids, distances = flux.search("demo", vector, k=10)

``AsyncFluxClient`` offers the same calls as coroutines. Depends on grpcio, protobuf and
numpy only; the version follows the wire contract (1.x speaks ``flux_api.v1``).
"""

from importlib.metadata import PackageNotFoundError, version

from flux_api import CONTRACT_VERSION
from flux_client._aio import AsyncFluxClient
from flux_client._channel import TLS
from flux_client._client import FluxClient
from flux_client._errors import (
    BatchTooLarge,
    DeadlineExceeded,
    DimensionMismatch,
    FailedPrecondition,
    FluxError,
    IndexFailed,
    IndexLoading,
    IndexNotFound,
    Internal,
    InvalidArgument,
    InvalidFilter,
    ItemNotFound,
    KOutOfRange,
    MessageTooLarge,
    NotFinite,
    NotFound,
    Overloaded,
    ParamOutOfRange,
    PermissionDenied,
    ResourceExhausted,
    ResponseTooLarge,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnknownParam,
    VersionNotFound,
    WritesRefused,
)
from flux_client._ids import id_hashes
from flux_client._status import DOMAIN, FieldViolation
from flux_client._types import (
    Attributes,
    BackendInfo,
    Filter,
    IndexInfo,
    SearchResult,
    ServerInfo,
    WriteResult,
)

try:
    __version__ = version("flux-client")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"

#: The wire contract this client speaks.
API_VERSION = "flux_api.v1"

__all__ = [
    "API_VERSION",
    "CONTRACT_VERSION",
    "DOMAIN",
    "TLS",
    "AsyncFluxClient",
    "Attributes",
    "BackendInfo",
    "BatchTooLarge",
    "DeadlineExceeded",
    "DimensionMismatch",
    "FailedPrecondition",
    "FieldViolation",
    "Filter",
    "FluxClient",
    "FluxError",
    "IndexFailed",
    "IndexInfo",
    "IndexLoading",
    "IndexNotFound",
    "Internal",
    "InvalidArgument",
    "InvalidFilter",
    "ItemNotFound",
    "KOutOfRange",
    "MessageTooLarge",
    "NotFinite",
    "NotFound",
    "Overloaded",
    "ParamOutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "ResponseTooLarge",
    "SearchResult",
    "ServerInfo",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownParam",
    "VersionNotFound",
    "WriteResult",
    "WritesRefused",
    "__version__",
    "id_hashes",
]
