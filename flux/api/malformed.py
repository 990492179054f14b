"""Requests whose bytes are not the message the method takes get INVALID_ARGUMENT.

Left to gRPC, a request that fails to parse ends with INTERNAL ("Exception deserializing
request!"), which says the server is at fault. Here the parse failure becomes a marker
that the handler turns into INVALID_ARGUMENT (reason MALFORMED_REQUEST) naming the message type,
for every kind of method (unary and streaming).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from flux.api.errors import status
from flux.api.wrapping import Layer, answers_by_callback
from flux_core.errors import Code, Reason


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class MalformedRequestInterceptor(Layer):
    wraps_callbacks = True  # the health Watch's request is checked too

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _wrap(handler, method)


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    if handler.request_deserializer is None:
        return handler
    deserialize = handler.request_deserializer

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf raises DecodeError, and others for some inputs
            return _Malformed(exc)

    refusal = status(
        Code.INVALID_ARGUMENT, f"the request is not a valid message for {method}", Reason.MALFORMED_REQUEST
    )

    def refuse(context: grpc.ServicerContext) -> None:
        context.abort_with_status(refusal)

    if handler.request_streaming:
        kind = "stream_stream" if handler.response_streaming else "stream_unary"
        behaviour = getattr(handler, kind)

        def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for request in requests:
                if type(request) is _Malformed:
                    refuse(context)
                yield request

        def streamed(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behaviour(checked(requests, context), context)

        return handler._replace(request_deserializer=parse, **{kind: streamed})

    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    behaviour = getattr(handler, kind)

    def single(request: Any, context: grpc.ServicerContext, *send_response_callback: Any) -> Any:
        if type(request) is _Malformed:
            refuse(context)
        return behaviour(request, context, *send_response_callback)

    if answers_by_callback(handler):  # gRPC then passes the callback, and no thread waits on the call
        single.experimental_non_blocking = True  # type: ignore[attr-defined]
    return handler._replace(request_deserializer=parse, **{kind: single})
