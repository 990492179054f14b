"""Domain errors. Each carries the gRPC status code it maps to, by name.

The core raises these without knowing gRPC; ``flux.api.interceptors`` turns them
into statuses in one place. Messages say what to fix, not only what went wrong.
"""

from __future__ import annotations

from typing import ClassVar


class FluxError(Exception):
    """Base of every error Flux raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    #: A stable, machine-readable cause, sent as google.rpc.ErrorInfo.reason and in the
    #: ``flux-error-reason`` trailer so that clients can tell causes apart without parsing text.
    reason: ClassVar[str] = ""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the request field at fault, when there is one


class InvalidArgument(FluxError):
    """The request is malformed; the caller must change it."""

    code = "INVALID_ARGUMENT"


class NotFound(FluxError):
    """A named thing (index, id) does not exist."""

    code = "NOT_FOUND"


class IndexNotFound(NotFound):
    """No index has the requested name."""

    reason = "INDEX_NOT_FOUND"


class ItemNotFound(NotFound):
    """The index has no item with the requested id."""

    reason = "ITEM_NOT_FOUND"


class FailedPrecondition(FluxError):
    """The system is not in a state that allows the operation (a failed index, an immutable backend)."""

    code = "FAILED_PRECONDITION"


class Unavailable(FluxError):
    """Temporarily unable to serve (loading, shutting down); retrying may succeed."""

    code = "UNAVAILABLE"


class ResourceExhausted(FluxError):
    """A limit was reached (size, memory, concurrency)."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(FluxError):
    """The caller's deadline passed while the call ran; nobody waits for the rest of the work."""

    code = "DEADLINE_EXCEEDED"


class ConfigError(FluxError):
    """A configuration file or value is invalid. The message names the file and the key."""

    code = "INVALID_ARGUMENT"


class ArtifactError(FluxError):
    """An index artifact is corrupt, truncated, missing or inconsistent. The message names the file."""

    code = "FAILED_PRECONDITION"


class LogCorrupt(FluxError):
    """A write-ahead log record is damaged where a crash cannot have left it; recovery stops there."""

    code = "DATA_LOSS"


class BackendError(FluxError):
    """A backend plugin is missing, broken or incompatible. The message names the plugin."""

    code = "FAILED_PRECONDITION"
