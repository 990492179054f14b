"""Domain errors. Each carries the gRPC status code it maps to, by name, and a stable reason.

The core raises these without knowing gRPC; ``flux.api.errors`` turns them into statuses in
one place, with a ``google.rpc.ErrorInfo`` whose reason is one of ``Reason``. Messages say
what to fix, not only what went wrong.

A reason comes from, in this order: the ``reason=`` given where the error is raised, the
class's own ``reason`` (``IndexNotFound``: INDEX_NOT_FOUND), or, for errors raised without
one, ``flux.api.errors.reason_of``, which tells causes apart by class and field. It never reads
the message, so a cause that class and field cannot tell apart needs its ``reason=``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import ClassVar


class Code(IntEnum):
    """The status codes Flux's errors map to, numbered as gRPC's (google.rpc.Code) without importing it."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Reason(StrEnum):
    """The stable, machine-readable causes of errors: ``google.rpc.ErrorInfo.reason`` in the domain
    ``DOMAIN``. The contract lists them (``protos/flux_api/v1/vector_service.proto``); clients branch
    on them, so a reason is never renamed or reused for another cause. A reason equal to a status
    code's name means "no more specific cause"."""

    # INVALID_ARGUMENT
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    MALFORMED_VECTORS = "MALFORMED_VECTORS"
    EMPTY_BATCH = "EMPTY_BATCH"
    DIMENSION_MISMATCH = "DIMENSION_MISMATCH"
    NOT_FINITE = "NOT_FINITE"
    NORM_TOO_LARGE = "NORM_TOO_LARGE"
    COUNT_MISMATCH = "COUNT_MISMATCH"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    K_OUT_OF_RANGE = "K_OUT_OF_RANGE"
    UNKNOWN_PARAM = "UNKNOWN_PARAM"
    PARAM_OUT_OF_RANGE = "PARAM_OUT_OF_RANGE"
    INVALID_FILTER = "INVALID_FILTER"
    INVALID_ATTRIBUTES = "INVALID_ATTRIBUTES"
    INVALID_ID = "INVALID_ID"
    DUPLICATE_ID = "DUPLICATE_ID"
    ID_TOO_LONG = "ID_TOO_LONG"
    VERSION_ON_ALIAS = "VERSION_ON_ALIAS"
    STREAM_INDEX_MISMATCH = "STREAM_INDEX_MISMATCH"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    # NOT_FOUND
    INDEX_NOT_FOUND = "INDEX_NOT_FOUND"
    ITEM_NOT_FOUND = "ITEM_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    # FAILED_PRECONDITION
    INDEX_FAILED = "INDEX_FAILED"
    VERSION_FAILED = "VERSION_FAILED"
    VERSION_ACTIVE = "VERSION_ACTIVE"
    NO_ROLLBACK_TARGET = "NO_ROLLBACK_TARGET"
    INDEX_IMMUTABLE = "INDEX_IMMUTABLE"
    WRITES_DISABLED = "WRITES_DISABLED"
    INDEX_READ_ONLY = "INDEX_READ_ONLY"
    WRITES_FAILED = "WRITES_FAILED"
    ARTIFACT_INVALID = "ARTIFACT_INVALID"
    BACKEND_ERROR = "BACKEND_ERROR"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    # UNAVAILABLE
    INDEX_LOADING = "INDEX_LOADING"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    UNAVAILABLE = "UNAVAILABLE"
    # RESOURCE_EXHAUSTED
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    MEMORY_BUDGET_EXCEEDED = "MEMORY_BUDGET_EXCEEDED"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    OVERLOADED = "OVERLOADED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    # the other codes, one reason each
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"
    LOG_CORRUPT = "LOG_CORRUPT"


#: ``google.rpc.ErrorInfo.domain`` of every Flux error: the namespace of the reasons above.
DOMAIN = "flux.vectors"


class FluxError(Exception):
    """Base of every error Flux raises on purpose.

    ``field`` names the request field at fault, when there is one. ``reason`` (a ``Reason``) and
    ``metadata`` (``ErrorInfo.metadata``: ``limit``, say) may be given where the error is raised;
    without a reason, the class's applies (empty: ``flux.api.errors.reason_of`` decides).
    """

    code: ClassVar[Code] = Code.INTERNAL
    #: A stable, machine-readable cause, sent as google.rpc.ErrorInfo.reason and in the
    #: ``flux-error-reason`` trailer so that clients can tell causes apart without parsing text.
    reason: str = ""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the request field at fault, when there is one
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(FluxError):
    """The request is malformed; the caller must change it."""

    code = Code.INVALID_ARGUMENT


class NotFound(FluxError):
    """A named thing (index, id) does not exist."""

    code = Code.NOT_FOUND


class IndexNotFound(NotFound):
    """No index has the requested name."""

    reason = Reason.INDEX_NOT_FOUND


class ItemNotFound(NotFound):
    """The index has no item with the requested id."""

    reason = Reason.ITEM_NOT_FOUND


class VersionNotFound(NotFound):
    """The index has no such version, or it is not loaded."""

    reason = Reason.VERSION_NOT_FOUND


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

    reason = Reason.RESPONSE_TOO_LARGE


class DeadlineExceeded(FluxError):
    """The caller's deadline passed while the call ran; nobody waits for the rest of the work."""

    code = Code.DEADLINE_EXCEEDED
    reason = Reason.DEADLINE_EXCEEDED


class ConfigError(FluxError):
    """A configuration file or value is invalid. The message names the file and the key."""

    code = Code.INVALID_ARGUMENT


class ArtifactError(FluxError):
    """An index artifact is corrupt, truncated, missing or inconsistent. The message names the file."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.ARTIFACT_INVALID


class LogCorrupt(FluxError):
    """A write-ahead log record is damaged where a crash cannot have left it; recovery stops there."""

    code = Code.DATA_LOSS
    reason = Reason.LOG_CORRUPT


class BackendError(FluxError):
    """A backend plugin is missing, broken or incompatible. The message names the plugin."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.BACKEND_ERROR


def shown(value: str, limit: int = 64) -> str:
    """``value`` quoted for an error message, cut short when long: a message travels back in the
    status trailers, which clients cap at a few KiB, so echoing a huge id would lose the whole error."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value.encode('utf-8', 'surrogatepass'))} bytes)"
