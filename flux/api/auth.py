"""Bearer-token authentication with three roles, one per service.

A call to VectorService needs the reader role, to WriteService the writer role, to
AdminService the admin role; each role includes the ones below it (admin > writer >
reader). Health and reflection stay open, so that probes and tools work without a token,
except the health of one index (``flux.index.<name>``): it tells which indexes exist, so it
needs a token of any role unless ``auth.open_index_health`` is set (``IndexHealthServicer``).
Any other service needs admin: what is not listed is denied, never let through.

Tokens are configured as SHA-256 hex digests, never in the clear. The digest of the
token a caller presents is compared with every configured digest in constant time. The
decision is made from the method's name alone, before gRPC looks the method up, so a
caller without the role learns nothing about which methods exist.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from flux import callcontext
from flux.api.errors import status
from flux.api.health_service import HealthService
from flux.api.wrapping import Gate
from flux_core.errors import Code, Reason


class Role(IntEnum):
    """Ordered: a role may do everything the lower ones may."""

    READER = 1
    WRITER = 2
    ADMIN = 3


#: The role each service needs; None: open to anyone.
SERVICE_ROLES: Mapping[str, Role | None] = {
    "flux_api.v1.VectorService": Role.READER,
    "flux_api.v1.WriteService": Role.WRITER,
    "flux_api.v1.AdminService": Role.ADMIN,
    "grpc.health.v1.Health": None,
    "grpc.reflection.v1alpha.ServerReflection": None,
    "grpc.reflection.v1.ServerReflection": None,
}
_SCHEME = "bearer "


def hash_token(token: str) -> str:
    """The SHA-256 hex digest a config lists for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Token:
    """A configured token: a name for logs and errors, its role, and its digest (never the token)."""

    name: str
    role: Role
    sha256: str


class Tokens:
    """The configured tokens, matched against the ``authorization`` metadata of a call."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), t) for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def match(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Token | None:
        """The token a call presents (``authorization: Bearer <token>``), if it is one of these."""
        presented = next((value for key, value in metadata or () if key == "authorization"), None)
        if not isinstance(presented, str) or presented[: len(_SCHEME)].lower() != _SCHEME:
            return None
        digest = hashlib.sha256(presented[len(_SCHEME) :].strip().encode("utf-8")).digest()
        found = None
        for expected, token in self._tokens:  # every digest is compared, so timing tells nothing
            if hmac.compare_digest(digest, expected):
                found = token
        return found


def required_role(method: str) -> Role | None:
    """The role a full method name (``/package.Service/Method``) needs; admin for unknown services."""
    service = method[1:].partition("/")[0]
    return SERVICE_ROLES.get(service, Role.ADMIN)


class AuthInterceptor(Gate):
    """Refuses a call with UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (role too low).

    ``shapes`` gives the (request streaming, response streaming) shape of known methods, so
    that a refusal answers a streaming call as a stream; unknown methods are refused as unary.
    """

    def __init__(self, tokens: Iterable[Token], shapes: Mapping[str, tuple[bool, bool]]) -> None:
        self._tokens = Tokens(tokens)
        self._shapes = dict(shapes)
        self._roles = {method: required_role(method) for method in shapes}

    def refusal(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        needed = self._roles[method] if method in self._roles else required_role(method)
        if needed is None:
            return None
        token = self._tokens.match(details.invocation_metadata)
        if token is None:
            return self._refusal(
                method,
                status(
                    Code.UNAUTHENTICATED,
                    f"{method} needs a token with the {needed.name.lower()} role: "
                    "send the metadata 'authorization: Bearer <token>'",
                    Reason.UNAUTHENTICATED,
                    metadata={"required_role": needed.name.lower()},
                ),
            )
        callcontext.principal.set(token.name)
        if token.role < needed:
            return self._refusal(
                method,
                status(
                    Code.PERMISSION_DENIED,
                    f"token {token.name!r} has the {token.role.name.lower()} role; "
                    f"{method} needs the {needed.name.lower()} role",
                    Reason.PERMISSION_DENIED,
                    metadata={"role": token.role.name.lower(), "required_role": needed.name.lower()},
                ),
            )
        return None

    def _refusal(self, method: str, refusal: grpc.Status) -> grpc.RpcMethodHandler:
        def refuse(request: Any, context: grpc.ServicerContext, *_: Any) -> Any:
            context.abort_with_status(refusal)

        requests, responses = self._shapes.get(method, (False, False))
        if requests and responses:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if requests:
            return grpc.stream_unary_rpc_method_handler(refuse)
        if responses:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


class IndexHealthServicer(HealthService):
    """The standard health service, except that a service name starting with ``prefix`` needs one of
    ``tokens`` (any role): whether ``flux.index.x`` answers SERVING, NOT_SERVING or NOT_FOUND tells
    a caller which indexes exist. With no tokens, everything stays open.

    The token is checked here, not by ``AuthInterceptor``, because the decision depends on the
    request, not only on the method; the health port shares this servicer, so it holds there too.
    """

    def __init__(self, tokens: Iterable[Token], prefix: str) -> None:
        super().__init__()
        self._tokens = Tokens(tokens)
        self._prefix = prefix

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self._admit(request.service, context)
        answer = super().Check(request, context)
        if context.code() is grpc.StatusCode.NOT_FOUND:  # the standard servicer sets the code, with no message
            context.abort_with_status(self._unknown(request.service))
        return answer

    def _unknown(self, service: str) -> grpc.Status:
        """NOT_FOUND for a service name health knows nothing of, saying which names it knows."""
        name = repr(service if len(service) <= 128 else service[:128] + "...")
        if service.startswith(self._prefix):
            return status(
                Code.NOT_FOUND,
                f"health knows no service {name}: no index of that name is configured "
                f"(each configured index has the health service {self._prefix}<name>)",
                Reason.INDEX_NOT_FOUND,
            )
        return status(
            Code.NOT_FOUND,
            f"health knows no service {name}: ask for '' (the server), a Flux service "
            f"(flux_api.v1.VectorService, ...) or one index ({self._prefix}<name>)",
            Reason.NOT_FOUND,
        )

    def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext, send_response_callback: Any = None
    ) -> Any:
        self._admit(request.service, context)
        return super().Watch(request, context, send_response_callback)

    def _admit(self, service: str, context: grpc.ServicerContext) -> None:
        if (
            self._tokens
            and service.startswith(self._prefix)
            and self._tokens.match(context.invocation_metadata()) is None
        ):
            context.abort_with_status(
                status(
                    Code.UNAUTHENTICATED,
                    f"the health of one index ({self._prefix}<name>) needs a token of any role: "
                    "send the metadata 'authorization: Bearer <token>'",
                    Reason.UNAUTHENTICATED,
                )
            )
