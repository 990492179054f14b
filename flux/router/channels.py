"""One channel per shard group, the plain call and the hedged call: how the router reaches a shard's replicas.

A shard group is one gRPC target (``dns:///flux-shard-2.flux.svc:50051`` resolving to every
replica through a headless Service, or a static ``ipv4:a:p,b:p`` list). The channel balances over
the replicas whose health says SERVING, round-robin, and retries a call that got UNAVAILABLE or
CANCELLED (a replica down or shutting down) on the next one, within the call's deadline: gRPC's
service config ``retryPolicy``, not a loop in Python. Hedging, off by default, sends a second
call after a delay and keeps the first answer; gRPC Python (C-core) does not implement the
service config's ``hedgingPolicy``, so the router does it (``hedged``).

A plain call (``answer``) is a blocking one, made on a thread the router keeps. A grpc ``future()``
call is not used for it: its answer is delivered by a thread of the channel that gRPC Python starts
when the channel has no other such call in flight and ends with the call, so at one call at a time
per shard every call paid for starting a thread (docs/scale.md, "Latency").

Both record each shard call as it ends, and the hedges sent, on the shard's ``ShardMeter``
(``flux.router.metrics``); the retries within a call are gRPC's, out of the router's sight.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, NamedTuple

import grpc

from flux.api.tls import read_pem
from flux.router.config import RetryConfig, ShardTLSConfig
from flux.router.metrics import ShardMeter
from flux_api.v1 import vector_service_pb2

#: Codes a call to another replica may cure: the replica is down, restarting, loading or shutting
#: down (a gRPC Python server cancels the calls it had not yet started when it stops).
RETRYABLE = ("UNAVAILABLE", "CANCELLED")
_RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
#: The service the router serves and calls, which a shard replica reports SERVING for once its
#: indexes have loaded (flux.server).
VECTOR_SERVICE = vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"].full_name
RECONNECT_INITIAL_MS = 100
RECONNECT_MAX_MS = 1000


def service_config(retries: RetryConfig) -> str:
    """Round-robin over the target's replicas that report SERVING; retries to another replica when
    ``max_attempts`` > 1.

    ``healthCheckConfig`` is gRPC's client-side health checking: the channel keeps a health Watch
    on each replica and leaves out one that reports NOT_SERVING (still loading its indexes, or
    draining after SIGTERM) as soon as it says so, without waiting for DNS or readiness probes to
    catch up. A replica without the health service is used as before (gRPC's rule).
    """
    method: dict[str, Any] = {"name": [{"service": VECTOR_SERVICE}]}
    if retries.max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": retries.max_attempts,
            "initialBackoff": f"{retries.initial_backoff_seconds}s",
            "maxBackoff": f"{retries.max_backoff_seconds}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": list(RETRYABLE),
        }
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": VECTOR_SERVICE},
            "methodConfig": [method],
        }
    )


class Secure(NamedTuple):
    """How the router's channels reach TLS shards: credentials, and the name their certificates carry."""

    credentials: grpc.ChannelCredentials
    server_name: str


def secure(tls: ShardTLSConfig | None) -> Secure | None:
    """The PEM files of ``router.tls`` read once; a ConfigError naming the key of a missing or non-PEM file."""
    if tls is None:
        return None
    ca = read_pem(tls.ca_file, "router.tls.ca_file", "-----BEGIN CERTIFICATE")
    chain = key = None
    if tls.cert_file is not None and tls.key_file is not None:
        chain = read_pem(tls.cert_file, "router.tls.cert_file", "-----BEGIN CERTIFICATE")
        key = read_pem(tls.key_file, "router.tls.key_file", "PRIVATE KEY")
    return Secure(grpc.ssl_channel_credentials(ca, key, chain), tls.server_name)


def open_channel(target: str, retries: RetryConfig, max_message_bytes: int, tls: Secure | None = None) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(retries)),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials, options=options)


def answer(
    call: Callable[..., Any], request: Any, deadline: float, metadata: Sequence[tuple[str, str]], meter: ShardMeter
) -> Any:
    """A blocking ``call`` of ``request`` by ``deadline`` (``time.monotonic``): the response, or the RpcError
    it ended with, recorded on ``meter``."""
    started = time.perf_counter()
    try:
        outcome = call(request, timeout=max(0.0, deadline - time.monotonic()), metadata=metadata)
    except grpc.RpcError as error:
        outcome = error
    return meter.ended(outcome, started)


def hedged(start: Callable[[], Any], delay: float, meter: ShardMeter) -> futures.Future[Any]:
    """``start()`` now and, if no answer came within ``delay`` seconds, once more: the first answer wins.

    The second call leaves the channel after the first, so round-robin sends it to the next replica.
    A failure that another replica cannot cure (INVALID_ARGUMENT, say) ends it at once; otherwise it
    fails only when every call it made has failed. ``meter`` records the second call when sent, and
    the outcome (and whether the second call gave it) before the future has it.
    """
    result: futures.Future[Any] = futures.Future()
    started = time.perf_counter()
    lock = threading.Lock()
    calls: list[Any] = []
    pending = [2]  # the first call, and the hedge still to come

    def finish(call: Any) -> None:
        with lock:
            pending[0] -= 1
            if result.done():
                return
            error = call.exception() if not call.cancelled() else None
            if error is None and not call.cancelled():
                result.set_result(meter.ended(call.result(), started, by_hedge=call is not calls[0]))
            elif error is not None and (error.code() not in _RETRYABLE_CODES or pending[0] == 0):
                result.set_exception(meter.ended(error, started))
            else:
                return
            timer.cancel()
            others = [c for c in calls if c is not call]
        for other in others:
            other.cancel()

    def launch() -> None:
        call = start()
        with lock:
            calls.append(call)
        call.add_done_callback(finish)

    def hedge() -> None:
        with lock:
            if result.done():
                return
        meter.hedge()
        launch()

    timer = threading.Timer(delay, hedge)
    timer.daemon = True
    launch()
    timer.start()
    return result
