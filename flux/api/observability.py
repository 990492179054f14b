"""Every call's request id, metrics and (optionally) log record, in the outermost interceptor.

Being outermost, it also sees the calls the auth interceptor refuses. Calls that gRPC
itself refuses because ``server.max_concurrent_calls`` are running never reach it: they
are answered RESOURCE_EXHAUSTED before any handler runs (see docs/operations.md).

The request id comes from the caller's ``x-request-id`` metadata when it looks like one,
else is made up here; it goes back to the caller in the trailing metadata under the same
key, into the log record, and into the message of an INTERNAL error.

Label values are bounded: a method that is not served is labelled ``unknown`` and an index
or alias that is not configured ``""``, so no caller can grow the number of time series.

It also serializes the answers, so that it knows their size: gRPC refuses to send an answer
above ``limits.max_message_bytes`` only after the handler has returned, out of every
interceptor's sight, so the call would be counted OK while the caller got RESOURCE_EXHAUSTED.
Here such an answer is refused before it is sent, with a message naming the limit and what
to ask for instead, and counted and logged with the status the caller sees.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import grpc

from flux import callcontext, metrics
from flux.api.errors import to_status
from flux.api.wrapping import Layer, ended_with
from flux_core.errors import ResponseTooLarge

log = logging.getLogger("flux.requests")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class ObservabilityInterceptor(Layer):
    """Times each call and counts it by method, index and status code; logs it when ``log_requests``."""

    def __init__(
        self, methods: Collection[str], indexes: Collection[str], *, log_requests: bool, max_response_bytes: int = 0
    ) -> None:
        super().__init__(methods)
        self._indexes = frozenset(indexes)
        self._log_requests = log_requests
        self._max_response_bytes = max_response_bytes  # gRPC's max send message length; 0: not checked here

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        label = method.lstrip("/") if method in self.methods else "unknown"  # a made-up name adds no series
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                streams = kind.endswith("_stream")
                # The answers leave here serialized, so gRPC must not serialize them again.
                observed = self._observed(behaviour, label, streams, handler.response_serializer)
                return handler._replace(response_serializer=None, **{kind: observed})
        return handler

    def _observed(
        self, behaviour: Callable[..., Any], method: str, streams: bool, serialize: Callable[[Any], bytes] | None
    ) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            request_id = _request_id(context)
            callcontext.request_id.set(request_id)
            index = getattr(request, "index", None) or getattr(request, "name", "")
            index = index if index in self._indexes else ""
            metrics.CALLS.started()
            try:
                result = behaviour(request, context)
                if not streams:
                    result = self._sendable(result, serialize, context)
            except BaseException:
                self._finish(context, method, index, request_id, started, failed=True)
                raise
            if streams:
                return self._stream(result, serialize, context, method, index, request_id, started)
            self._finish(context, method, index, request_id, started, failed=False)
            return result

        return observed

    def _stream(
        self,
        responses: Iterator[Any],
        serialize: Callable[[Any], bytes] | None,
        context: grpc.ServicerContext,
        method: str,
        index: str,
        rid: str,
        started: float,
    ) -> Iterator[Any]:
        failed = True
        try:
            for response in responses:
                yield self._sendable(response, serialize, context)
            failed = False
        finally:
            self._finish(context, method, index, rid, started, failed=failed)
            close = getattr(responses, "close", None)
            if close is not None:  # as ``yield from`` would: a stream ended early ends the handler's generator
                close()

    def _sendable(self, response: Any, serialize: Callable[[Any], bytes] | None, context: grpc.ServicerContext) -> Any:
        """The answer serialized, or the call aborted with RESOURCE_EXHAUSTED when gRPC would refuse to send it."""
        if response is None:  # gRPC reports that itself (INTERNAL)
            return None
        data = serialize(response) if serialize is not None else response
        limit = self._max_response_bytes
        if limit and len(data) > limit:
            context.abort_with_status(
                to_status(
                    ResponseTooLarge(
                        f"the answer is {len(data):,} bytes, more than the server may send "
                        f"(limits.max_message_bytes: {limit:,} bytes); ask for less per call: "
                        "a smaller k or fewer queries per batch"
                    ),
                    {"limit": str(limit)},
                )
            )
        return data

    def _finish(
        self, context: grpc.ServicerContext, method: str, index: str, request_id: str, started: float, *, failed: bool
    ) -> None:
        seconds = time.perf_counter() - started
        code = ended_with(context, failed=failed).name
        metrics.CALLS.finished(method, index, code, seconds)
        context.set_trailing_metadata((*(context.trailing_metadata() or ()), (callcontext.REQUEST_ID_KEY, request_id)))
        if self._log_requests:
            log.info(
                "%s %s %s %.2fms id=%s",
                method,
                index or "-",
                code,
                seconds * 1000,
                request_id,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "index": index,
                    "code": code,
                    "latency_ms": round(seconds * 1000, 3),
                    "principal": callcontext.principal.get(),
                    "peer": context.peer(),
                },
            )


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == callcontext.REQUEST_ID_KEY and isinstance(value, str) and _VALID_ID.match(value):
            return value
    return os.urandom(8).hex()
