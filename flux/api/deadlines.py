"""Calls whose caller has already given up are not started, nor carried on.

A call can wait for a handler thread (up to ``server.max_concurrent_calls`` are admitted,
``server.threads`` run at once); when its deadline passes meanwhile, nobody will read the
answer, so it ends with DEADLINE_EXCEEDED before any search runs. Once started, the call
runs under its deadline (``flux.core.query.deadline``), which batches answered step by step check.
A bidirectional stream (StreamSearch) is checked the same way when it starts, and its queries
run under the deadline of the whole stream; gRPC itself ends the stream when it passes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import grpc

from flux.api.errors import status
from flux.api.wrapping import Layer
from flux.core.query import deadline
from flux_core.errors import Code, Reason

_LATE = status(Code.DEADLINE_EXCEEDED, "the deadline passed before the call could start", Reason.DEADLINE_EXCEEDED)


class DeadlineInterceptor(Layer):
    """Checks ``context.time_remaining()`` before a unary-request handler starts."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _wrap(handler)


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.request_streaming:
        return _wrap_stream(handler) if handler.response_streaming else handler
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


def _wrap_stream(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    behaviour = handler.stream_stream

    def in_time(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort_with_status(_LATE)
        return _under_deadline(behaviour(requests, context), math.inf if remaining is None else remaining)

    return handler._replace(stream_stream=in_time)


def _under_deadline(responses: Iterator[Any], seconds: float) -> Iterator[Any]:
    """``responses``, each produced under the stream's deadline (set where gRPC runs the stream: its thread)."""
    token = deadline.start(seconds)
    try:
        yield from responses
    finally:
        with contextlib.suppress(ValueError):  # finalised outside the call's context (a generator dropped late)
            deadline.end(token)
