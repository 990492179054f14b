"""The server's interceptors, outermost first, chosen from the config, run as one (``flux.api.wrapping``).

1. tracing (``tracing.enabled``): a span per call, joined to the caller's trace;
2. observability: request id, metrics, request log (sees refusals by the ones below), and
   RESOURCE_EXHAUSTED for an answer larger than gRPC may send;
3. auth (when tokens are configured): refuses by role before the method is looked up;
   then the stream cap (``server.max_streams``): RESOURCE_EXHAUSTED for a stream beyond it;
4. deadlines: a call whose caller gave up is not started;
5. malformed requests: INVALID_ARGUMENT for bytes that do not parse;
6. errors: ``flux_core.errors`` to statuses with an ErrorInfo reason, INTERNAL with a request id for anything else.

Every refusal, whichever interceptor answers it, carries an ErrorInfo reason (``flux.api.errors.status``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import grpc
from google.protobuf import descriptor_pool

from flux.api.auth import AuthInterceptor, Role, Token
from flux.api.deadlines import DeadlineInterceptor
from flux.api.errors import ErrorInterceptor
from flux.api.malformed import MalformedRequestInterceptor
from flux.api.observability import ObservabilityInterceptor
from flux.api.streams import StreamLimitInterceptor
from flux.api.wrapping import Gate, Interceptors, Layer
from flux.config import FluxConfig
from flux.core.query.filters import MAX_EXCLUDE_IDS
from flux_core.errors import Reason


def method_shapes(services: Iterable[str]) -> dict[str, tuple[bool, bool]]:
    """Every method of ``services`` by full name (``/pkg.Service/Method``): (request streams, response streams)."""
    pool = descriptor_pool.Default()
    return {
        f"/{service}/{method.name}": (method.client_streaming, method.server_streaming)
        for service in services
        for method in pool.FindServiceByName(service).methods
    }


def chain(config: FluxConfig, *, services: Iterable[str], indexes: Collection[str]) -> list[grpc.ServerInterceptor]:
    """The interceptors of a server serving ``services`` (full names) with ``indexes`` (names and aliases)."""
    shapes = method_shapes(services)
    interceptors: list[Layer | Gate] = []
    if config.tracing.enabled:
        from flux.api.tracing import TracingInterceptor

        interceptors.append(TracingInterceptor(config.tracing, shapes, indexes))
    interceptors.append(
        ObservabilityInterceptor(
            shapes,
            indexes,
            log_requests=config.logging.requests,
            max_response_bytes=config.limits.max_message_bytes,  # gRPC's max send length (flux.server)
        )
    )
    if config.auth.tokens:
        tokens = [Token(t.name, Role[t.role.upper()], t.sha256) for t in config.auth.tokens]
        interceptors.append(AuthInterceptor(tokens, shapes))
    if config.server.stream_limit:
        interceptors.append(StreamLimitInterceptor(shapes, config.server.stream_limit))
    interceptors += [
        DeadlineInterceptor(shapes),
        MalformedRequestInterceptor(shapes),
        ErrorInterceptor(shapes, limits(config)),
    ]
    return [Interceptors(interceptors, shapes)]


def limits(config: FluxConfig) -> dict[str, int]:
    """The server limit behind each reason that names one, for the ``limit`` metadata of its ErrorInfo."""
    return {
        Reason.K_OUT_OF_RANGE: config.limits.max_k,
        Reason.BATCH_TOO_LARGE: config.limits.max_batch,
        Reason.ID_TOO_LONG: config.limits.max_id_bytes,
        Reason.INVALID_FILTER: MAX_EXCLUDE_IDS,  # only for filter.exclude_ids
        Reason.RESPONSE_TOO_LARGE: config.limits.max_message_bytes,
    }
