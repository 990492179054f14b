"""Domain errors. Each carries the gRPC status code it maps to, by name.

The core raises these without knowing gRPC; ``flux.api.interceptors`` turns them
into statuses in one place. Messages say what to fix, not only what went wrong.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class Code(IntEnum):
    """The status codes Flux's errors map to, numbered as gRPC's (google.rpc.Code) without importing it."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15


class FluxError(Exception):
    """Base of every error Flux raises on purpose."""

    code: ClassVar[Code] = Code.INTERNAL
    #: A stable, machine-readable cause, sent as google.rpc.ErrorInfo.reason and in the
    #: ``flux-error-reason`` trailer so that clients can tell causes apart without parsing text.
    reason: ClassVar[str] = ""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the request field at fault, when there is one


class InvalidArgument(FluxError):
    """The request is malformed; the caller must change it."""

    code = Code.INVALID_ARGUMENT


class NotFound(FluxError):
    """A named thing (index, id) does not exist."""

    code = Code.NOT_FOUND


class IndexNotFound(NotFound):
    """No index has the requested name."""

    reason = "INDEX_NOT_FOUND"


class ItemNotFound(NotFound):
    """The index has no item with the requested id."""

    reason = "ITEM_NOT_FOUND"


class FailedPrecondition(FluxError):
    """The system is not in a state that allows the operation (a failed index, an immutable backend)."""

    code = Code.FAILED_PRECONDITION


class Unavailable(FluxError):
    """Temporarily unable to serve (loading, shutting down); retrying may succeed."""

    code = Code.UNAVAILABLE


class ResourceExhausted(FluxError):
    """A limit was reached (size, memory, concurrency)."""

    code = Code.RESOURCE_EXHAUSTED


class ResponseTooLarge(ResourceExhausted):
    """The answer is larger than the server may send (``limits.max_message_bytes``); asking again will not help."""

    reason = "RESPONSE_TOO_LARGE"


class DeadlineExceeded(FluxError):
    """The caller's deadline passed while the call ran; nobody waits for the rest of the work."""

    code = Code.DEADLINE_EXCEEDED


class ConfigError(FluxError):
    """A configuration file or value is invalid. The message names the file and the key."""

    code = Code.INVALID_ARGUMENT


class ArtifactError(FluxError):
    """An index artifact is corrupt, truncated, missing or inconsistent. The message names the file."""

    code = Code.FAILED_PRECONDITION


class LogCorrupt(FluxError):
    """A write-ahead log record is damaged where a crash cannot have left it; recovery stops there."""

    code = Code.DATA_LOSS


class BackendError(FluxError):
    """A backend plugin is missing, broken or incompatible. The message names the plugin."""

    code = Code.FAILED_PRECONDITION


def shown(value: str, limit: int = 64) -> str:
    """``value`` quoted for an error message, cut short when long: a message travels back in the
    status trailers, which clients cap at a few KiB, so echoing a huge id would lose the whole error."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value.encode('utf-8', 'surrogatepass'))} bytes)"
