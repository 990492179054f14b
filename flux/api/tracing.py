"""OpenTelemetry spans per call (``tracing.enabled``; needs the ``tracing`` extra).

Each unary-response call gets a SERVER span named after its method, a child of the caller's
span when the call carries W3C trace context (``traceparent`` metadata). Attributes follow
the RPC conventions (rpc.system, rpc.service, rpc.method, rpc.grpc.status_code) plus
flux.index and flux.request_id, so a trace leads to the call's log record. A bidirectional
stream of Flux's (StreamSearch) gets one span for the whole stream, from its start to its
end, with the number of answers it sent (flux.stream.messages); a span per query would cost
more than the query. Other streaming calls (health Watch, reflection) are not traced.

When the process has no tracer provider yet, one is set up that exports spans over OTLP
to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default ``localhost:4317``); one set up beforehand
(``opentelemetry-instrument``, or a test) is used as it is.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

import grpc

from flux import callcontext
from flux.api.wrapping import Layer, ended_with
from flux.config import TracingConfig
from flux_core.errors import ConfigError

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - the tracing extra is part of the dev install
    trace = None  # type: ignore[assignment]


def _set_up_provider(service_name: str) -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # the process already has one
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


class TracingInterceptor(Layer):
    def __init__(
        self, settings: TracingConfig, shapes: Mapping[str, tuple[bool, bool]], indexes: Collection[str]
    ) -> None:
        if trace is None:
            raise ConfigError("tracing.enabled: needs the tracing extra: pip install 'flux-server[tracing]'")
        super().__init__(shapes)
        _set_up_provider(settings.service_name)
        self._tracer = trace.get_tracer("flux")
        self._indexes = frozenset(indexes)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.stream_stream is not None and method in self.methods and method.startswith("/flux_api."):
            return self._wrap_stream(handler, method)
        if handler.response_streaming:
            return handler
        kind = "stream_unary" if handler.request_streaming else "unary_unary"
        behaviour = getattr(handler, kind)
        service, _, name = method.lstrip("/").partition("/")
        tracer, indexes = self._tracer, self._indexes

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            index = getattr(request, "index", None) or getattr(request, "name", "")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            if index in indexes:
                attributes["flux.index"] = index
            with tracer.start_as_current_span(
                method.lstrip("/"), context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
            ) as span:
                try:
                    return behaviour(request, context)
                finally:
                    code = context.code() or grpc.StatusCode.OK
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    span.set_attribute("flux.request_id", callcontext.request_id.get())
                    if code is not grpc.StatusCode.OK:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        return handler._replace(**{kind: traced})

    def _wrap_stream(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        behaviour = handler.stream_stream
        service, _, name = method.lstrip("/").partition("/")
        tracer = self._tracer

        def traced(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            span = tracer.start_span(
                method.lstrip("/"), context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
            )
            try:
                responses = behaviour(requests, context)
            except BaseException:
                _end(span, context, 0, failed=True)
                raise
            return _spanned(responses, span, context)

        return handler._replace(stream_stream=traced)


def _spanned(responses: Iterator[Any], span: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    """``responses`` as they are sent; the span ends with the stream, however it ends."""
    sent, failed = 0, True
    try:
        for response in responses:
            sent += 1
            yield response
        failed = False
    finally:
        _end(span, context, sent, failed=failed)
        close = getattr(responses, "close", None)
        if close is not None:
            close()


def _end(span: Any, context: grpc.ServicerContext, sent: int, *, failed: bool) -> None:
    code = ended_with(context, failed=failed)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    span.set_attribute("flux.request_id", callcontext.request_id.get())
    span.set_attribute("flux.stream.messages", sent)
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
