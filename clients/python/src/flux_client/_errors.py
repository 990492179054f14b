"""Typed exceptions for failed calls, so callers catch ``DimensionMismatch`` or ``IndexNotFound``, not codes.

Every exception is a ``FluxError``. Its class comes from the server's ``ErrorInfo`` reason when
the client knows that reason, else from the status code; ``reason`` always holds the reason, so
a reason this client does not know yet is still told apart. Statuses that gRPC itself answers
(a message too large, a server at its concurrency limit, a deadline that passed in transit, no
server reachable) carry no ErrorInfo; the client names them as the contract says
(``MESSAGE_TOO_LARGE``, ``OVERLOADED``, ``DEADLINE_EXCEEDED``, ``UNAVAILABLE``) and leaves
``domain`` empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from flux_client._status import Details, FieldViolation, details, status_details


class FluxError(Exception):
    """A call to Flux failed.

    ``code`` is the gRPC status code and ``message`` the server's words. ``reason`` is the stable,
    machine-readable cause (e.g. ``INDEX_NOT_FOUND``, ``K_OUT_OF_RANGE``; the list is in the
    contract, ``flux_api.v1.VectorService``), ``domain`` is ``"flux.vectors"`` when the server named
    the reason itself, and ``metadata`` its details (``field``, ``index``, ``limit``, ``request_id``,
    ...). ``field_violations`` are the request fields at fault (``google.rpc.BadRequest``) and
    ``field`` the first of them (e.g. ``vector.dimension``).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        field: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.field = field or (self.field_violations[0].field if self.field_violations else "")

    @property
    def limit(self) -> int | None:
        """The server limit the request exceeded (``max_k`` for ``K_OUT_OF_RANGE``, say), when it names one."""
        value = self.metadata.get("limit", "")
        return int(value) if value.isdigit() else None


# -- INVALID_ARGUMENT ---------------------------------------------------------------------------


class InvalidArgument(FluxError, ValueError):
    """The request was malformed (dimension, NaN, k, params, filter, ids); ``field`` names the culprit."""


class DimensionMismatch(InvalidArgument):
    """The vectors' dimension differs from the index's (``DIMENSION_MISMATCH``)."""


class NotFinite(InvalidArgument):
    """A vector holds NaN or Inf (``NOT_FINITE``)."""


class KOutOfRange(InvalidArgument):
    """k is 0 or above the server's max_k, which ``limit`` holds (``K_OUT_OF_RANGE``)."""


class UnknownParam(InvalidArgument):
    """A search param the index's backend does not know (``UNKNOWN_PARAM``)."""


class ParamOutOfRange(InvalidArgument):
    """A search param outside its range (``PARAM_OUT_OF_RANGE``)."""


class BatchTooLarge(InvalidArgument):
    """More queries or ids in one call than the server's max_batch, which ``limit`` holds (``BATCH_TOO_LARGE``)."""


class InvalidFilter(InvalidArgument):
    """A malformed filter, or too many excluded ids (``INVALID_FILTER``)."""


# -- NOT_FOUND ----------------------------------------------------------------------------------


class NotFound(FluxError, LookupError):
    """An index, id or version does not exist."""


class IndexNotFound(NotFound):
    """The named index (or alias) does not exist on the server (``INDEX_NOT_FOUND``)."""


class ItemNotFound(NotFound, KeyError):
    """The index holds no item with the requested id (SearchById; ``ITEM_NOT_FOUND``)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return FluxError.__str__(self)


class VersionNotFound(NotFound):
    """The index has no such version, or it is not loaded (``VERSION_NOT_FOUND``)."""


# -- FAILED_PRECONDITION ------------------------------------------------------------------------


class FailedPrecondition(FluxError):
    """The index exists but cannot do this: it failed to load, or it takes no writes."""


class IndexFailed(FailedPrecondition):
    """The index has no version it can serve (``INDEX_FAILED``); ``FluxClient.describe`` says why."""


class WritesRefused(FailedPrecondition):
    """The index takes no writes: immutable backend, writes disabled, read-only here, or a failed log
    (``INDEX_IMMUTABLE``, ``WRITES_DISABLED``, ``INDEX_READ_ONLY``, ``WRITES_FAILED``)."""


# -- UNAVAILABLE --------------------------------------------------------------------------------


class Unavailable(FluxError):
    """The server or the index could not answer (down, restarting, loading) even after the retries."""


class IndexLoading(Unavailable):
    """The index has not finished loading (``INDEX_LOADING``); retry later."""


# -- RESOURCE_EXHAUSTED -------------------------------------------------------------------------


class ResourceExhausted(FluxError):
    """A limit was hit: message size, concurrency, memory."""


class MessageTooLarge(ResourceExhausted):
    """The request was larger than the server (or this client) accepts (``MESSAGE_TOO_LARGE``)."""


class ResponseTooLarge(ResourceExhausted):
    """The answer would be larger than the server may send (``RESPONSE_TOO_LARGE``): ask for less."""


class Overloaded(ResourceExhausted):
    """The server was running as many calls as it may (``OVERLOADED``); retry with backoff."""


# -- the other codes ----------------------------------------------------------------------------


class DeadlineExceeded(FluxError, TimeoutError):
    """The call's deadline passed before the answer arrived (retries included)."""


class Unauthenticated(FluxError):
    """No valid credentials were sent."""


class PermissionDenied(FluxError):
    """The credentials do not allow this call; ``metadata`` names the ``role`` and the ``required_role``."""


class Unimplemented(FluxError, NotImplementedError):
    """The server does not know the call: it speaks an older contract (see ``FluxClient.server_info``)."""


class Internal(FluxError):
    """A bug in Flux or a backend; the message (and ``metadata["request_id"]``) carries a request id to report."""


_BY_CODE: dict[grpc.StatusCode, type[FluxError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
}
_BY_REASON: dict[str, type[FluxError]] = {
    "DIMENSION_MISMATCH": DimensionMismatch,
    "NOT_FINITE": NotFinite,
    "K_OUT_OF_RANGE": KOutOfRange,
    "UNKNOWN_PARAM": UnknownParam,
    "PARAM_OUT_OF_RANGE": ParamOutOfRange,
    "BATCH_TOO_LARGE": BatchTooLarge,
    "INVALID_FILTER": InvalidFilter,
    "INDEX_NOT_FOUND": IndexNotFound,
    "ITEM_NOT_FOUND": ItemNotFound,
    "VERSION_NOT_FOUND": VersionNotFound,
    "INDEX_FAILED": IndexFailed,
    "INDEX_IMMUTABLE": WritesRefused,
    "WRITES_DISABLED": WritesRefused,
    "INDEX_READ_ONLY": WritesRefused,
    "WRITES_FAILED": WritesRefused,
    "INDEX_LOADING": IndexLoading,
    "MESSAGE_TOO_LARGE": MessageTooLarge,
    "RESPONSE_TOO_LARGE": ResponseTooLarge,
    "OVERLOADED": Overloaded,
}


def from_rpc_error(error: grpc.RpcError) -> FluxError:
    """The typed exception for a failed call (sync or asyncio)."""
    code: grpc.StatusCode = error.code()
    message = error.details() or ""
    return _typed(code, message, details(error.trailing_metadata()))


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_status(code: int, message: str, status: bytes) -> FluxError:
    """The typed exception for one failed query of a stream: its ``error``, a google.rpc.Status
    (``code``, ``message`` and the Status's bytes), typed as a unary call's failure with it would be."""
    return _typed(_CODES.get(code, grpc.StatusCode.UNKNOWN), message, status_details(status))


def _typed(code: grpc.StatusCode, message: str, said: Details) -> FluxError:
    reason = said.reason or _reason_of_grpc_status(code, message)
    cls = _BY_REASON.get(reason)
    if cls is None or _BY_CODE.get(code) not in cls.__mro__:  # a reason must agree with the code
        cls = _BY_CODE.get(code, FluxError)
    return cls(
        code,
        message,
        reason=reason,
        domain=said.domain,
        metadata=said.metadata,
        field_violations=said.violations,
        field=said.metadata.get("field", ""),
    )


def _reason_of_grpc_status(code: grpc.StatusCode, message: str) -> str:
    """The reason of a status without ErrorInfo: one gRPC answered itself, before or after Flux's code."""
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "Concurrent RPC limit exceeded" in message:  # the server's max_concurrent_calls
            return "OVERLOADED"
        if "message larger than max" in message:  # "Received ..." / "Sent ...", on either side
            return "MESSAGE_TOO_LARGE"
    name: str = code.name
    return name


def invalid(message: str, field: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    """A request the client refuses to send, reported like the server would report it (no ``domain``)."""
    cls = _BY_REASON.get(reason, InvalidArgument)
    assert issubclass(cls, InvalidArgument)
    return cls(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason=reason,
        field=field,
        field_violations=(FieldViolation(field, message),),
    )
