"""Maps exceptions to gRPC statuses, in this one place, for every servicer and interceptor.

Every error Flux answers carries a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer: a ``google.rpc.ErrorInfo`` (domain ``flux.vectors``, a stable reason, metadata such as
the field at fault, the index and the limit exceeded) and, for INVALID_ARGUMENT with a field,
a ``google.rpc.BadRequest``. The reason is repeated in the ``flux-error-reason`` trailer for
clients that do not decode status details. The reasons are listed in ``flux_core.errors.Reason``
and in the contract (``protos/flux_api/v1/vector_service.proto``).

A ``FluxError`` raised without a reason gets one from ``reason_of``, which tells causes apart by
the error's class and the field it names, never by its message: clients branch on reasons, so
rewording a message must not change one, and a cause that class and field cannot tell apart is
given its reason where it is raised. Any other exception is a bug: it is logged with its
traceback under a request id, and the caller sees INTERNAL with that id only, never the traceback.

A stream of queries (``VectorService.StreamSearch``) answers each query on its own: a query that
fails is yielded by the servicer as a ``QueryFailed``, which the interceptor turns into that
query's answer carrying the very ``google.rpc.Status`` a unary call with the query would have
ended with, and the stream goes on.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict, Unpack

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from flux import callcontext
from flux.api.wrapping import Layer
from flux_core.errors import (
    DOMAIN,
    Code,
    FailedPrecondition,
    FluxError,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)


REASON_KEY = "flux-error-reason"
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
#: Metadata values longer than this (an index name a caller made up, say) are left out.
_MAX_METADATA_VALUE = 256
#: Longer messages and field names are cut in the middle: a name a caller made up is echoed into
#: them, and gRPC refuses trailers past 16 KiB (the message travels twice in the status details,
#: and once more percent-encoded), which the caller would see as RESOURCE_EXHAUSTED instead.
_MAX_MESSAGE_BYTES = 1024
_MAX_FIELD_BYTES = 256
#: The fields whose INVALID_FILTER names the exclusion limit (``limit`` in its ErrorInfo).
_EXCLUSIONS = ("exclude_ids", "exclude_id_hashes")

_VECTORS = re.compile(r"^(?:messages\[\d+\]\.)?(?:vector|queries|vectors)$")
_PARAMS = re.compile(r"(?:^|\.)(?:search_)?params$")
_PARAM = re.compile(r"(?:^|\.)(?:search_)?params\.[^.]+$")
_FILTER = re.compile(r"^(?:overrides\[\d+\]\.)?filter(?:\.|$)")
_ATTRIBUTES = re.compile(r"(?:^|\.)attributes\[\d+\]")
_ONE_ID = re.compile(r"(?:^|\.)ids\[\d+\]$")
_IDS = re.compile(r"(?:^|\.)ids$")
_PER_ROW = re.compile(r"^(?:overrides|(?:messages\[\d+\]\.)?attributes)$")
#: INVALID_ARGUMENT raised without a reason, told apart by the field it names (first match wins).
_FIELD_REASONS = (
    (_PARAMS, Reason.UNKNOWN_PARAM),
    (_PARAM, Reason.PARAM_OUT_OF_RANGE),
    (_FILTER, Reason.INVALID_FILTER),
    (_ATTRIBUTES, Reason.INVALID_ATTRIBUTES),
    (_PER_ROW, Reason.COUNT_MISMATCH),
)


def reason_of(error: FluxError) -> str:
    """The stable reason of ``error``: its own, or else the one its class and field point to."""
    if error.reason:
        return error.reason
    field = error.field or ""
    if isinstance(error, InvalidArgument):
        return _invalid_argument(field)
    if isinstance(error, NotFound):
        return {"version": Reason.VERSION_NOT_FOUND, "index": Reason.INDEX_NOT_FOUND}.get(field, Reason.NOT_FOUND)
    if isinstance(error, FailedPrecondition):
        return {"version": Reason.VERSION_ACTIVE, "index": Reason.INDEX_FAILED}.get(field, Reason.FAILED_PRECONDITION)
    if isinstance(error, Unavailable):
        return Reason.INDEX_LOADING if field == "index" else Reason.UNAVAILABLE
    if isinstance(error, ResourceExhausted):
        return Reason.RESOURCE_EXHAUSTED
    return error.code.name


def _invalid_argument(field: str) -> Reason:
    if field.endswith(".dimension"):  # a dimension of 0 is MALFORMED_VECTORS, given where it is raised
        return Reason.DIMENSION_MISMATCH
    if _VECTORS.match(field):
        return Reason.COUNT_MISMATCH  # Search with other than one vector; vectors not one per id
    if field == "k" or field.endswith(".k"):
        return Reason.K_OUT_OF_RANGE
    by_field = next((reason for pattern, reason in _FIELD_REASONS if pattern.search(field)), None)
    if by_field is not None:
        return by_field
    if _ONE_ID.search(field):
        return Reason.INVALID_ID
    if _IDS.search(field):
        return Reason.EMPTY_BATCH
    if field == "version":
        return Reason.VERSION_ON_ALIAS
    return Reason.INVALID_ARGUMENT


class Details(TypedDict, total=False):
    """What an error adds to its code, message and reason: the field at fault, ErrorInfo metadata."""

    field: str | None
    metadata: Mapping[str, str] | None


def rich_status(code: Code, message: str, reason: str, **details: Unpack[Details]) -> status_pb2.Status:
    """The ``google.rpc.Status``: ErrorInfo, and BadRequest for an INVALID_ARGUMENT naming a field."""
    field, metadata = details.get("field"), details.get("metadata")
    message = shortened(message, _MAX_MESSAGE_BYTES)
    field = shortened(field, _MAX_FIELD_BYTES) if field else field
    info = {key: value for key, value in (metadata or {}).items() if value and len(value) <= _MAX_METADATA_VALUE}
    if field:
        info["field"] = field
    parts: list[Message] = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=info)]
    if field and code is Code.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        parts.append(error_details_pb2.BadRequest(field_violations=[violation]))
    packed = []
    for detail in parts:
        packed.append(any_pb2.Any())
        packed[-1].Pack(detail)
    return status_pb2.Status(code=code, message=message, details=packed)


def shortened(text: str, limit: int) -> str:
    """``text``, or its start and end around " ... " when its UTF-8 takes more than ``limit`` bytes."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    half = (limit - 5) // 2
    head = encoded[:half].decode("utf-8", "ignore")
    tail = encoded[len(encoded) - half :].decode("utf-8", "ignore")
    return f"{head} ... {tail}"


def status(code: Code, message: str, reason: str, **details: Unpack[Details]) -> grpc.Status:
    """A status with ErrorInfo (and BadRequest for an INVALID_ARGUMENT naming a field), for ``abort_with_status``."""
    return _trailers(rich_status(code, message, reason, **details), reason)


def _trailers(rich: status_pb2.Status, reason: str) -> grpc.Status:
    return _Status(
        _GRPC_CODES[rich.code],
        rich.message,
        (("grpc-status-details-bin", rich.SerializeToString()), (REASON_KEY, reason)),
    )


def to_status(error: FluxError, metadata: Mapping[str, str] | None = None) -> grpc.Status:
    """The status of a raised ``FluxError``; ``metadata`` is added to the error's own."""
    merged = {**(metadata or {}), **error.metadata}
    return status(error.code, error.message, reason_of(error), field=error.field, metadata=merged)


@dataclass(frozen=True, slots=True)
class QueryFailed:
    """One query of a stream that failed, yielded by the servicer in place of its answer.

    ``ErrorInterceptor`` turns it into ``respond(status)``: the query's answer carrying the
    ``google.rpc.Status`` a unary call with the same request would have ended with. ``error`` is
    what the query raised, ``request`` the query's message (it names the index, for ErrorInfo).
    """

    error: Exception
    request: Any
    respond: Callable[[status_pb2.Status], Any]


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def request_index(request: Any) -> str:
    """The index (or alias) a request names, "" when it names none (or is a stream)."""
    name = getattr(request, "index", None) or getattr(request, "name", None)
    return name if isinstance(name, str) else ""


class ErrorInterceptor(Layer):
    """Wraps every handler that answers once (unary, client stream) so that raised exceptions become statuses,
    and every bidirectional stream so that each failed query (``QueryFailed``) gets the status of its own.

    The wrapped handler of each method is built once and reused (``flux.api.wrapping``), so a
    call allocates nothing here.
    ``limits`` gives the server limit behind a reason (``K_OUT_OF_RANGE``: max_k), sent as the
    ``limit`` metadata of its ErrorInfo.
    """

    def __init__(self, methods: Collection[str], limits: Mapping[str, int] | None = None) -> None:
        super().__init__(methods)
        self._limits = {reason: str(limit) for reason, limit in (limits or {}).items()}

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self._streamed(handler.stream_stream, method))
        # Calls that answer once: unary ones, and client streams (WriteService.UpsertStream).
        kind = next((k for k in ("unary_unary", "stream_unary") if getattr(handler, k, None) is not None), "")
        if not kind:
            return handler
        behaviour = getattr(handler, kind)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behaviour(request, context)
            except FluxError as error:
                answer = self._status(error, request)
            except Exception as error:
                if context.code() is not None:  # aborted on purpose (context.abort), e.g. a malformed stream message
                    raise
                answer = _trailers(self._internal(method, error), Reason.INTERNAL)
            context.abort_with_status(answer)

        return handler._replace(**{kind: guarded})

    def _streamed(self, behaviour: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
        def streamed(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            return self._answers(behaviour(requests, context), context, method)

        return streamed

    def _answers(self, responses: Iterator[Any], context: grpc.ServicerContext, method: str) -> Iterator[Any]:
        """The stream's answers, each failed query's made from its status; what ends the stream, as statuses."""
        try:
            for response in responses:
                if type(response) is QueryFailed:
                    response = response.respond(self._query_status(response, method))
                yield response
            return
        except FluxError as error:  # the stream as a whole was refused
            answer = self._status(error, None)
        except Exception as error:
            # Aborted on purpose (a malformed message), or the call is over (cancelled, deadline): nothing to add.
            if context.code() is not None or isinstance(error, grpc.RpcError) or not context.is_active():
                raise
            answer = _trailers(self._internal(method, error), Reason.INTERNAL)
        finally:
            close = getattr(responses, "close", None)
            if close is not None:  # a stream that ends early ends the servicer's generator, as ``yield from`` would
                close()
        context.abort_with_status(answer)

    def _query_status(self, failed: QueryFailed, method: str) -> status_pb2.Status:
        error = failed.error
        if isinstance(error, FluxError):
            return self._rich(error, failed.request)[0]
        return self._internal(method, error, query=True)

    def _internal(self, method: str, error: BaseException, *, query: bool = False) -> status_pb2.Status:
        """INTERNAL for a bug, logged with its traceback under a request id that the caller is told."""
        request_id = callcontext.request_id.get() or uuid.uuid4().hex[:16]
        what = f"{method} failed unexpectedly" + (" on one query" if query else "")
        log.error("%s (request id %s)", what, request_id, exc_info=error)
        message = f"internal error in Flux (request id {request_id}); the server logged the cause"
        return rich_status(Code.INTERNAL, message, Reason.INTERNAL, metadata={"request_id": request_id})

    def _status(self, error: FluxError, request: Any) -> grpc.Status:
        return _trailers(*self._rich(error, request))

    def _rich(self, error: FluxError, request: Any) -> tuple[status_pb2.Status, str]:
        reason = reason_of(error)
        metadata = {"index": request_index(request)}
        limit = self._limits.get(reason)
        if limit is not None and (reason != Reason.INVALID_FILTER or (error.field or "").endswith(_EXCLUSIONS)):
            metadata["limit"] = limit
        merged = {**metadata, **error.metadata}
        return rich_status(error.code, error.message, reason, field=error.field, metadata=merged), reason
