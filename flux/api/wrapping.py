"""The one way Flux's interceptors wrap a method's handler: once per handler object, then reused.

Wrapping a handler allocates closures, so each interceptor remembers what it built. The cache
is keyed on the handler the rest of the chain returned *for this call*, not on the method name
alone: an interceptor outside auth sees a refusal handler for a call without a valid token and
the method's own handler for one with it, and must never answer one caller with what it built
for another. Only the methods the server serves are cached (a refusal for a made-up method
name is built afresh), so no caller can grow the cache.

A non-blocking stream (the health service's Watch) passes through unwrapped: it is not counted by
the stream cap, the metrics or the request log, and holds no thread. Only the check of malformed
requests wraps it, keeping it non-blocking.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Collection

import grpc

Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


class WrappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Calls ``wrap(handler, method)`` for each handler the chain below returns, once per handler."""

    #: Whether ``wrap`` also sees non-blocking streams, and keeps them non-blocking (see below).
    wraps_callbacks = False

    def __init__(self, methods: Collection[str]) -> None:
        self.methods = frozenset(methods)  # full names of the served methods: /package.Service/Method
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:  # not a served method: gRPC answers UNIMPLEMENTED
            return None
        if answers_by_callback(handler) and not self.wraps_callbacks:
            return handler
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        if method in self.methods:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    @abstractmethod
    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with this interceptor's behaviour around it (or ``handler`` itself)."""


def answers_by_callback(handler: grpc.RpcMethodHandler) -> bool:
    """A non-blocking stream (the health service's Watch): its behaviour returns at once and sends
    its answers later from other threads, holding no handler thread while open. Nothing can be
    wrapped around it: wrapping would make it an ordinary stream holding a thread until it ends."""
    behaviour = handler.unary_stream or handler.stream_stream
    return bool(getattr(behaviour, "experimental_non_blocking", False))


def ended_with(context: grpc.ServicerContext, *, failed: bool) -> grpc.StatusCode:
    """The status a call ended with, as its caller sees it, once its handler is done.

    A status the handler set or aborted with, else OK, UNKNOWN for an exception, or what gRPC
    ended the call with: DEADLINE_EXCEEDED once the deadline has passed, else CANCELLED. A stream
    whose deadline passes while its handler waits for the next message sees its messages end
    (not an error), so a stream that ends after its deadline ended with DEADLINE_EXCEEDED.
    """
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if context.is_active():
        return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
    return grpc.StatusCode.CANCELLED
