"""Flux's errors' former home, kept so plugins written against Flux 0.1 still import.

The errors live in the lean ``flux-core`` distribution now; import ``flux_core.errors``.
"""

from flux_core.errors import (
    ArtifactError,
    BackendError,
    Code,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    FluxError,
    IndexNotFound,
    InvalidArgument,
    ItemNotFound,
    LogCorrupt,
    NotFound,
    ResourceExhausted,
    ResponseTooLarge,
    Unavailable,
    shown,
)

__all__ = [
    "ArtifactError",
    "BackendError",
    "Code",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FluxError",
    "IndexNotFound",
    "InvalidArgument",
    "ItemNotFound",
    "LogCorrupt",
    "NotFound",
    "ResourceExhausted",
    "ResponseTooLarge",
    "Unavailable",
    "shown",
]
