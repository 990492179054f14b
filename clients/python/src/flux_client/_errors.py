"""Typed exceptions for gRPC statuses, so callers catch ``IndexNotFound``, not status codes."""

from __future__ import annotations

import grpc

from flux_client._status import details


class FluxError(Exception):
    """A call to Flux failed.

    ``code`` is the gRPC status code and ``message`` the server's words. ``reason`` is the
    server's machine-readable cause (e.g. ``INDEX_NOT_FOUND``) and ``field`` the request
    field at fault (e.g. ``vector.dimension``), when the server names them.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "", field: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field


class InvalidArgument(FluxError, ValueError):
    """The request was malformed (dimension, NaN, k, params); ``field`` names the culprit."""


class NotFound(FluxError, LookupError):
    """An index or id does not exist."""


class IndexNotFound(NotFound):
    """The named index does not exist on the server."""


class ItemNotFound(NotFound, KeyError):
    """The index holds no item with the requested id (SearchById)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return FluxError.__str__(self)


class FailedPrecondition(FluxError):
    """The index exists but failed to load; ``FluxClient.describe`` says why."""


class Unavailable(FluxError):
    """The server or the index could not answer (down, restarting, loading) even after the retries."""


class DeadlineExceeded(FluxError, TimeoutError):
    """The call's deadline passed before the answer arrived (retries included)."""


class ResourceExhausted(FluxError):
    """A limit was hit: message size, concurrency, memory."""


class Unauthenticated(FluxError):
    """No valid credentials were sent."""


class PermissionDenied(FluxError):
    """The credentials do not allow this call."""


class Internal(FluxError):
    """A bug in Flux or a backend; the message carries a request id to report."""


_BY_CODE: dict[grpc.StatusCode, type[FluxError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
}
_BY_REASON: dict[str, type[FluxError]] = {"INDEX_NOT_FOUND": IndexNotFound, "ITEM_NOT_FOUND": ItemNotFound}


def from_rpc_error(error: grpc.RpcError) -> FluxError:
    """The typed exception for a failed call (sync or asyncio)."""
    code: grpc.StatusCode = error.code()
    said = details(error.trailing_metadata())
    cls = _BY_REASON.get(said.reason) or _BY_CODE.get(code, FluxError)
    return cls(code, error.details() or "", reason=said.reason, field=said.field)


def invalid(message: str, field: str) -> InvalidArgument:
    """A request the client refuses to send, reported like the server would report it."""
    return InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, message, field=field)
