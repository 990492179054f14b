"""Calls whose caller has already given up are not started, nor carried on.

A call can wait for a handler thread (up to ``server.max_concurrent_calls`` are admitted,
``server.threads`` run at once); when its deadline passes meanwhile, nobody will read the
answer, so it ends with DEADLINE_EXCEEDED before any search runs. Once started, the call
runs under its deadline (``flux.core.deadline``), which batches answered step by step check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc

from flux.core import deadline


class DeadlineInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Checks ``context.time_remaining()`` before a unary-request handler starts."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = _wrap(continuation(details))
            if wrapped is not None:
                self._wrapped[details.method] = wrapped  # only served methods, so the cache stays bounded
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    if handler is None or handler.request_streaming:
        return handler
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    behaviour = getattr(handler, kind)

    def in_time(request: Any, context: grpc.ServicerContext) -> Any:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call could start")
        token = deadline.start(math.inf if remaining is None else remaining)  # no generator: every call comes here
        try:
            return behaviour(request, context)
        finally:
            deadline.end(token)

    return handler._replace(**{kind: in_time})
