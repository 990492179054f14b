"""The router as a gRPC server: VectorService over shard groups, health and reflection, nothing else.

It has the interface of ``flux.server.FluxServer`` that ``flux.process`` uses (``start``,
``wait_ready``, ``stop``, ``address``), and the same interceptors (auth, deadlines, error mapping,
metrics and request logs). It loads no index, so it is ready as soon as it listens. Its port serves
TLS as a server's does, from the config's ``tls`` section; TLS to the shards is ``router.tls``.
With ``server.metrics_port``, it serves ``/metrics`` as a server does (``flux.metrics_endpoint``):
its calls, and its shard calls, hedges and partial answers (``flux.router.metrics``).
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flux.api import interceptors
from flux.api.health_service import HealthService
from flux.api.tls import server_credentials
from flux.binding import CannotBind, check_bindable, reason
from flux.config import FluxConfig
from flux.core.serving.catalog import Catalog
from flux.metrics_endpoint import MetricsEndpoint
from flux.router.channels import VECTOR_SERVICE
from flux.router.fanout import Router
from flux.router.service import RouterServicer
from flux_api.v1.vector_service_pb2_grpc import add_VectorServiceServicer_to_server

log = logging.getLogger(__name__)


class RouterServer:
    """A started-on-demand router for ``config`` (whose ``router`` section is set), bound to its port."""

    def __init__(self, config: FluxConfig) -> None:
        if config.router is None:
            raise ValueError("RouterServer needs a config with a router section")
        self.config = config
        server = config.server
        check_bindable(server.host, server.port, "server.port")
        if server.metrics_port is not None:
            check_bindable(server.host, server.metrics_port, "server.metrics_port")
        credentials = None if config.tls is None else server_credentials(config.tls)
        self.router = Router(config.router, max_message_bytes=config.limits.max_message_bytes, threads=server.threads)
        services = (VECTOR_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        self._handlers = futures.ThreadPoolExecutor(max_workers=server.threads, thread_name_prefix="flux-router")
        message_bytes = config.limits.max_message_bytes
        self.grpc_server = grpc.server(
            self._handlers,
            interceptors=interceptors.chain(config, services=services, indexes=self.router.names()),
            maximum_concurrent_rpcs=server.max_concurrent_calls or None,
            options=[
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.max_send_message_length", message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_VectorServiceServicer_to_server(RouterServicer(self.router), self.grpc_server)
        self.health = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(services, self.grpc_server)
        address = f"{server.host}:{server.port}"
        try:
            if credentials is None:
                self.port = self.grpc_server.add_insecure_port(address)
            else:
                self.port = self.grpc_server.add_secure_port(address, credentials)
        except RuntimeError:
            raise CannotBind(f"cannot listen on {address} (server.port): gRPC could not bind it") from None
        self.address = f"{server.host}:{self.port}"
        self.metrics = None
        if server.metrics_port is not None:
            try:  # no index of its own: an empty catalog, so the flux_index_* families have no series
                self.metrics = MetricsEndpoint(
                    server.host, server.metrics_port, Catalog([]), server.max_concurrent_calls
                )
            except OSError as exc:  # taken since the check
                self.router.close()
                raise CannotBind(
                    f"cannot listen on {server.host}:{server.metrics_port} (server.metrics_port): {reason(exc)}"
                ) from None

    def start(self) -> None:
        self.grpc_server.start()
        if self.metrics is not None:
            self.metrics.start()
        for name in ("", VECTOR_SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("routing on %s: %s", self.address, ", ".join(self.router.names()))

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True  # no index to load: ready once listening

    def stop(self, grace: float | None = None) -> bool:
        grace = self.config.server.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait(grace + 1.0)
        self.health.close()
        self.router.close()
        if self.metrics is not None:
            self.metrics.stop()
        self._handlers.shutdown(wait=False)
        log.info("stopped")
        return True


def build_router(config: FluxConfig) -> RouterServer:
    """An unstarted router for ``config``, bound to its port."""
    return RouterServer(config)
