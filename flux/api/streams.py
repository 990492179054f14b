"""A cap on open streams, so that streams cannot take every handler thread from unary calls.

gRPC Python runs each call on one of ``server.threads`` handler threads, and a stream
(StreamSearch, UpsertStream) for as long as it stays open; a health Watch holds none (it is
non-blocking, ``flux.api.wrapping``), so it is not counted. Without a cap, one
caller holding as many idle streams open as there are threads would leave every other call
waiting for a thread until its deadline. ``server.max_streams`` streams may be open at once
(half the threads by default); the next one is refused at once with RESOURCE_EXHAUSTED
(reason OVERLOADED, the limit in its metadata), and the caller may retry with backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from typing import Any

import grpc

from flux.api.errors import status
from flux.api.wrapping import Layer
from flux_core.errors import Code, Reason


class StreamLimitInterceptor(Layer):
    """Admits at most ``limit`` streaming calls at once; unary calls pass as they are."""

    def __init__(self, methods: Collection[str], limit: int) -> None:
        super().__init__(methods)
        self._open = threading.BoundedSemaphore(limit)
        self._refusal = status(
            Code.RESOURCE_EXHAUSTED,
            f"{limit} streams are open on this server already (server.max_streams); close idle streams, "
            "retry with backoff, or raise the limit",
            Reason.OVERLOADED,
            metadata={"limit": str(limit)},
        )

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not (handler.request_streaming or handler.response_streaming):
            return handler
        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        behaviour = getattr(handler, kind)
        streams_out = handler.response_streaming

        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            if not self._open.acquire(blocking=False):
                context.abort_with_status(self._refusal)
            try:
                answer = behaviour(request, context)
            except BaseException:
                self._open.release()
                raise
            if streams_out:  # the call lasts until its last answer: release then
                return self._released(answer)
            self._open.release()
            return answer

        return handler._replace(**{kind: limited})

    def _released(self, answers: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from answers
        finally:
            self._open.release()
