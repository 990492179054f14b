"""Calls whose caller has already given up are not started, nor carried on.

A call can wait for a handler thread (up to ``server.max_concurrent_calls`` are admitted,
``server.threads`` run at once); when its deadline passes meanwhile, nobody will read the
answer, so it ends with DEADLINE_EXCEEDED before any search runs. Once started, the call
runs under its deadline (``flux.core.query.deadline``), which batches answered step by step check.
"""

from __future__ import annotations

import math
from typing import Any

import grpc

from flux.api.errors import status
from flux.api.wrapping import WrappingInterceptor
from flux.core.query import deadline
from flux_core.errors import Code, Reason

_LATE = status(Code.DEADLINE_EXCEEDED, "the deadline passed before the call could start", Reason.DEADLINE_EXCEEDED)


class DeadlineInterceptor(WrappingInterceptor):
    """Checks ``context.time_remaining()`` before a unary-request handler starts."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _wrap(handler)


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.request_streaming:
        return handler
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    behaviour = getattr(handler, kind)

    def in_time(request: Any, context: grpc.ServicerContext) -> Any:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort_with_status(_LATE)
        token = deadline.start(math.inf if remaining is None else remaining)  # no generator: every call comes here
        try:
            return behaviour(request, context)
        finally:
            deadline.end(token)

    return handler._replace(**{kind: in_time})
