"""Flux's interceptors as one gRPC interceptor, each served method's handler wrapped once, then reused.

Each behaviour around the handlers (metrics, the stream cap, deadlines, errors, ...) is a
``Layer``; ``Interceptors`` wraps a method's handler in every layer the first time the method is
called and hands gRPC that same handler afterwards: a call costs one dictionary lookup here, not
one interceptor (and its allocations) per layer. A ``Gate`` (auth) decides per call, from the
method name and metadata, whether the call goes on; a call it refuses is answered by the refusal
handler it returns, wrapped in the layers outside the gate only (so that they count and log it).

The cache is keyed on the handler gRPC found *for this call*, not on the method name alone, and
only served methods are cached (a made-up method name is wrapped afresh), so no caller can grow it.

A non-blocking stream (the health service's Watch) passes through unwrapped: it is not counted by
the stream cap, the metrics or the request log, and holds no thread. Only the check of malformed
requests wraps it, keeping it non-blocking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence

import grpc

Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


class Layer(ABC):
    """One behaviour around the handlers: ``wrap(handler, method)`` returns ``handler`` with it."""

    #: Whether ``wrap`` also sees non-blocking streams, and keeps them non-blocking (see below).
    wraps_callbacks = False

    def __init__(self, methods: Collection[str]) -> None:
        self.methods = frozenset(methods)  # full names of the served methods: /package.Service/Method

    @abstractmethod
    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with this layer's behaviour around it (or ``handler`` itself)."""


class Gate(ABC):
    """Decides per call, before the method is looked up, whether it goes on."""

    @abstractmethod
    def refusal(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The handler that refuses this call, or None to let it through."""


class Interceptors(grpc.ServerInterceptor):  # type: ignore[misc]
    """``layers`` (and gates), outermost first, as the server's one interceptor."""

    def __init__(self, layers: Sequence[Layer | Gate], methods: Collection[str]) -> None:
        self._layers = tuple(layers)
        self._gates = [(at, layer) for at, layer in enumerate(self._layers) if isinstance(layer, Gate)]
        self._methods = frozenset(methods)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        for at, gate in self._gates:
            refusal = gate.refusal(details)
            if refusal is not None:
                return _wrapped(refusal, method, self._layers[:at])
        handler = continuation(details)
        if handler is None:  # not a served method: gRPC answers UNIMPLEMENTED
            return None
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrapped(handler, method, self._layers)
        if method in self._methods:
            self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrapped(handler: grpc.RpcMethodHandler, method: str, layers: Sequence[Layer | Gate]) -> grpc.RpcMethodHandler:
    callback = answers_by_callback(handler)
    for layer in reversed(layers):
        if isinstance(layer, Layer) and (layer.wraps_callbacks or not callback):
            handler = layer.wrap(handler, method)
    return handler


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
