"""Maps exceptions to gRPC statuses, in this one place, for every servicer.

A ``FluxError`` becomes its declared code with its message and, when it names a
field, a ``google.rpc.BadRequest`` detail. Anything else is a bug: it is logged with
its traceback under a request id, and the caller sees INTERNAL with that id only,
never the traceback.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from flux import callcontext
from flux.api.wrapping import WrappingInterceptor
from flux_core.errors import Code, FluxError

log = logging.getLogger(__name__)


REASON_KEY = "flux-error-reason"


def to_status(error: FluxError) -> grpc.Status:
    details: list[Message] = []
    if error.reason:
        details.append(error_details_pb2.ErrorInfo(reason=error.reason, domain="flux"))
    if error.field and error.code is Code.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    packed = []
    for detail in details:
        packed.append(any_pb2.Any())
        packed[-1].Pack(detail)
    status = rpc_status.to_status(status_pb2.Status(code=error.code, message=error.message, details=packed))
    if error.reason:
        return _Status(status.code, status.details, (*status.trailing_metadata, (REASON_KEY, error.reason)))
    return status


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class ErrorInterceptor(WrappingInterceptor):
    """Wraps every handler that answers once (unary, client stream) so that raised exceptions become statuses.

    gRPC asks the interceptor for the handler on every call; the wrapped handler of each
    method is built once and remembered (``WrappingInterceptor``), so a call allocates nothing here.
    """

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        # Calls that answer once: unary ones, and client streams (WriteService.UpsertStream).
        kind = next((k for k in ("unary_unary", "stream_unary") if getattr(handler, k, None) is not None), "")
        if not kind:
            return handler
        behaviour = getattr(handler, kind)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behaviour(request, context)
            except FluxError as error:
                status = to_status(error)
            except Exception:
                if context.code() is not None:  # aborted on purpose (context.abort), e.g. a malformed stream message
                    raise
                request_id = callcontext.request_id.get() or uuid.uuid4().hex[:16]
                log.exception("%s failed unexpectedly (request id %s)", method, request_id)
                message = f"internal error in Flux (request id {request_id}); the server logged the cause"
                status = rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))
            context.abort_with_status(status)

        return handler._replace(**{kind: guarded})
