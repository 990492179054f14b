"""Builds the gRPC server from a config, and runs it until a signal stops it.

``build_server(config)`` returns an unstarted ``FluxServer`` bound to its port (port 0
picks a free one), so tests and embedders control when it starts and stops.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flux.api.admin_service import AdminServicer
from flux.api.errors import ErrorInterceptor
from flux.api.vector_service import VectorServicer
from flux.config import FluxConfig
from flux.core.aliases import Alias, Arm
from flux.core.catalog import Catalog, IndexState
from flux.core.index import Limits
from flux_api.v1 import admin_service_pb2, vector_service_pb2
from flux_api.v1.admin_service_pb2_grpc import add_AdminServiceServicer_to_server
from flux_api.v1.vector_service_pb2_grpc import add_VectorServiceServicer_to_server

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
#: Health service name of one index: ``flux.index.<name>``. The empty name is the server as a whole.
INDEX_HEALTH_PREFIX = "flux.index."

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FluxServer:
    """A gRPC server, its catalog of indexes and its health, started and stopped together.

    Health: the server as a whole (``""``) and the Flux services report NOT_SERVING
    until every configured index has been tried, then SERVING; each index reports on
    ``flux.index.<name>``, SERVING only while it can answer.
    """

    def __init__(self, config: FluxConfig) -> None:
        self.config = config
        limits = Limits(max_k=config.limits.max_k, max_batch=config.limits.max_batch)
        batch_threads = config.server.search_threads or os.cpu_count() or 1
        self.catalog = Catalog(
            [index.settings() for index in config.indexes],
            aliases=[
                Alias(a.name, [Arm(arm.index, arm.weight, arm.version) for arm in a.arms]) for a in config.aliases
            ],
            limits=limits,
            batch_threads=batch_threads,
            memory_budget=config.server.memory_budget_bytes,
            poll_seconds={index.name: index.poll_seconds for index in config.indexes},
        )
        message_bytes = config.limits.max_message_bytes
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.server.threads, thread_name_prefix="flux-rpc"),
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.max_send_message_length", message_bytes),
            ],
        )
        add_VectorServiceServicer_to_server(VectorServicer(self.catalog), self.grpc_server)
        add_AdminServiceServicer_to_server(AdminServicer(self.catalog), self.grpc_server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, _NOT_SERVING)
        for name in self.catalog.names():
            self.health.set(INDEX_HEALTH_PREFIX + name, _NOT_SERVING)
        self.catalog.add_listener(self._index_changed)
        address = f"{config.server.host}:{config.server.port}"
        self.port = self.grpc_server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        self.address = f"{config.server.host}:{self.port}"
        self._ready = threading.Event()

    def start(self) -> None:
        """Start answering calls; indexes load in the background (queries get UNAVAILABLE until then)."""
        self.grpc_server.start()
        threading.Thread(target=self._load, name="flux-loader", daemon=True).start()
        log.info("listening on %s", self.address)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every configured index has been tried and health says so; False on timeout."""
        return self._ready.wait(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Turn health to NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``."""
        grace = self.config.server.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        self.catalog.close()
        log.info("stopped")

    def _load(self) -> None:
        self.catalog.load_all()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, _SERVING)
        failed = [name for name in self.catalog.names() if self.catalog.state(name) is IndexState.FAILED]
        log.info(
            "ready: %d indexes serving, %d failed %s", len(self.catalog.names()) - len(failed), len(failed), failed
        )
        self._ready.set()
        self.catalog.poll()  # returns when the catalog closes

    def _index_changed(self, name: str, serving: bool) -> None:
        self.health.set(INDEX_HEALTH_PREFIX + name, _SERVING if serving else _NOT_SERVING)


def build_server(config: FluxConfig) -> FluxServer:
    """An unstarted server for ``config``, bound to its port."""
    return FluxServer(config)


def serve(config: FluxConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    server = build_server(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; draining for up to %.1fs", signal.Signals(signum).name, config.server.grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    stop.wait()
    server.stop()
    return 0
