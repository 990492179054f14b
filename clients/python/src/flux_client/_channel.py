"""What the sync and asyncio clients configure alike: retries, load balancing, TLS and tokens.

Retries are gRPC's own (the service config's ``retryPolicy``), not a loop in Python: gRPC
re-sends only calls that never got an answer, backs off with jitter and stays within the
call's deadline. The reconnect backoff is shortened from gRPC's default (1 s growing to
120 s) so that a replica coming back is found again while a call's retries still run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

#: The calls gRPC may re-send: every search, and the control plane's reads. Calls that change
#: state (AdminService.RollbackVersion, say, or WriteService) are never re-sent behind the caller's back.
RETRIED: tuple[dict[str, str], ...] = (
    {"service": "flux_api.v1.VectorService"},
    *(
        {"service": "flux_api.v1.AdminService", "method": method}
        for method in ("ListIndexes", "GetIndex", "ListVersions", "ListAliases")
    ),
)
#: gRPC caps a call's attempts at 5 whatever the service config says.
MAX_RETRIES = 4
LOAD_BALANCING = ("round_robin", "pick_first")

# Retry backoff: attempt n+1 waits about INITIAL * MULTIPLIER**n seconds (+-20 % jitter),
# so 4 retries span about 0.25 + 0.5 + 1 + 2 = 3.75 s, inside the default 5 s deadline.
RETRY_INITIAL_BACKOFF = 0.25
RETRY_MAX_BACKOFF = 2.0
RETRY_MULTIPLIER = 2
# Reconnect backoff: 0.25 s growing by 1.6 up to 2 s between attempts to reach a lost replica.
RECONNECT_INITIAL_MS = 250
RECONNECT_MAX_MS = 2000
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's default limit
# The calls in RETRIED only read, so re-sending them is always safe. UNAVAILABLE: the server is down,
# restarting or still loading the index. CANCELLED: a gRPC Python server that shuts down
# cancels the calls it had received but not yet handed to a handler (grpc/grpc#41785); a
# call the caller cancels ends there and is never retried.
RETRYABLE = ("UNAVAILABLE", "CANCELLED")


@dataclass(frozen=True)
class TLS:
    """TLS for the channel: server verification, and mutual TLS when a certificate is given.

    ``root_certificates`` are the PEM certificates that may sign the server's (None: the
    system's trust store). ``certificate_chain`` and ``private_key`` (PEM) identify the
    client for mutual TLS. ``server_name`` overrides the name checked against the server's
    certificate, for targets given as IP addresses.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("TLS: give both certificate_chain and private_key for mutual TLS, or neither")

    @classmethod
    def from_files(
        cls,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLS:
        """TLS settings read from PEM files: ``ca`` to verify the server, ``cert`` + ``key`` for mutual TLS."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)


@dataclass(frozen=True)
class ChannelSettings:
    """Everything needed to open a channel, validated once for both client flavours."""

    target: str
    options: list[tuple[str, Any]]
    credentials: grpc.ChannelCredentials | None  # None: plaintext
    metadata: tuple[tuple[str, str], ...]  # sent with every call


def service_config(*, retries: int, load_balancing: str, wait_for_ready: bool) -> str:
    """The channel's service config: balance over resolved addresses, retry failed attempts with backoff."""
    method: dict[str, Any] = {"name": list(RETRIED)}
    if wait_for_ready:
        method["waitForReady"] = True
    if retries > 0:
        method["retryPolicy"] = {
            "maxAttempts": retries + 1,
            "initialBackoff": f"{RETRY_INITIAL_BACKOFF}s",
            "maxBackoff": f"{RETRY_MAX_BACKOFF}s",
            "backoffMultiplier": RETRY_MULTIPLIER,
            "retryableStatusCodes": list(RETRYABLE),
        }
    return json.dumps({"loadBalancingConfig": [{load_balancing: {}}], "methodConfig": [method]})


def settings(
    target: str,
    *,
    timeout: float,
    retries: int,
    wait_for_ready: bool,
    load_balancing: str,
    tls: TLS | bool,
    token: str | None,
    channel_options: Sequence[tuple[str, Any]],
) -> ChannelSettings:
    """Check the client's arguments and turn them into channel options, credentials and metadata."""
    if not target:
        raise ValueError("target must be an address such as '127.0.0.1:50051' or 'dns:///flux.example:50051'")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be between 0 and {MAX_RETRIES} (gRPC caps a call at 5 attempts), got {retries}")
    if load_balancing not in LOAD_BALANCING:
        raise ValueError(f"load_balancing must be one of {', '.join(LOAD_BALANCING)}, got {load_balancing!r}")
    if token is not None and not token:
        raise ValueError("token must be a non-empty string, or None to send none")
    config = service_config(retries=retries, load_balancing=load_balancing, wait_for_ready=wait_for_ready)
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", config),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    secure = TLS() if tls is True else (tls or None)
    if secure is not None and secure.server_name:
        options.append(("grpc.ssl_target_name_override", secure.server_name))
    given = {name for name, _ in channel_options}
    options = [o for o in options if o[0] not in given] + list(channel_options)
    if secure is None:
        # gRPC refuses call credentials on a plaintext channel, so the header goes on each call
        # instead (local development, or a sidecar that adds TLS on the way out).
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return ChannelSettings(target, options, None, metadata)
    credentials = grpc.ssl_channel_credentials(secure.root_certificates, secure.private_key, secure.certificate_chain)
    if token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return ChannelSettings(target, options, credentials, ())


class WithMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``metadata`` to every call on a channel: the token of a plaintext channel, which gRPC
    will not carry as call credentials, reaches every stub built on the channel this way."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
