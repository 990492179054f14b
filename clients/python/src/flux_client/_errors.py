"""Typed exceptions for gRPC statuses, so callers catch ``IndexNotFound``, not status codes."""

from __future__ import annotations

import grpc


class FluxError(Exception):
    """A call to Flux failed. ``code`` is the gRPC status code, ``message`` the server's words."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(FluxError, ValueError):
    """The request was malformed (dimension, NaN, k, params); the message names the field."""


class NotFound(FluxError, LookupError):
    """An index or id does not exist."""


class IndexNotFound(NotFound):
    """The named index does not exist on the server."""


class Unavailable(FluxError):
    """The server or the index cannot answer right now (loading, restarting); retry later."""


class DeadlineExceeded(FluxError, TimeoutError):
    """The call's deadline passed before the answer arrived."""


class ResourceExhausted(FluxError):
    """A limit was hit: message size, concurrency, memory."""


class Unauthenticated(FluxError):
    """No valid credentials were sent."""


class PermissionDenied(FluxError):
    """The credentials do not allow this call."""


_BY_CODE: dict[grpc.StatusCode, type[FluxError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


#: Trailer in which the server names the cause of an error (google.rpc.ErrorInfo.reason).
REASON_KEY = "flux-error-reason"
_BY_REASON: dict[str, type[FluxError]] = {"INDEX_NOT_FOUND": IndexNotFound}


def from_rpc_error(error: grpc.RpcError) -> FluxError:
    """The typed exception for a failed call."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reasons = {key: value for key, value in (error.trailing_metadata() or ()) if key == REASON_KEY}
    cls = _BY_REASON.get(str(reasons.get(REASON_KEY, "")), _BY_CODE.get(code, FluxError))
    return cls(code, message)
