"""Builds the gRPC server from a config, and runs it until a signal stops it.

``build_server(config)`` returns an unstarted ``FluxServer`` bound to its port (port 0
picks a free one), so tests and embedders control when it starts and stops.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flux import logs
from flux.api import interceptors
from flux.api.admin_service import AdminServicer
from flux.api.health_port import HealthPort
from flux.api.tls import server_credentials
from flux.api.vector_service import VectorServicer
from flux.api.write_service import WriteServicer
from flux.config import FluxConfig
from flux.core.aliases import Alias, Arm
from flux.core.catalog import Catalog, IndexState
from flux.core.index import Limits
from flux.core.writes import Writer
from flux.metrics_endpoint import MetricsEndpoint
from flux.signals import StopSignals
from flux_api.v1 import admin_service_pb2, vector_service_pb2, write_service_pb2
from flux_api.v1.admin_service_pb2_grpc import add_AdminServiceServicer_to_server
from flux_api.v1.vector_service_pb2_grpc import add_VectorServiceServicer_to_server
from flux_api.v1.write_service_pb2_grpc import add_WriteServiceServicer_to_server

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    write_service_pb2.DESCRIPTOR.services_by_name["WriteService"].full_name,
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
            [index.settings(config.server.data_root) for index in config.indexes],
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
            interceptors=interceptors.chain(
                config,
                services=(*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
                indexes=[*self.catalog.names(), *(a.name for a in config.aliases)],
            ),
            # Beyond this many calls, gRPC answers RESOURCE_EXHAUSTED at once instead of queueing.
            maximum_concurrent_rpcs=config.server.max_concurrent_calls or None,
            options=[
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.max_send_message_length", message_bytes),
                # Workers share one port on purpose; a lone server must own its port.
                ("grpc.so_reuseport", int(config.server.workers > 1)),
            ],
        )
        add_VectorServiceServicer_to_server(VectorServicer(self.catalog), self.grpc_server)
        add_AdminServiceServicer_to_server(AdminServicer(self.catalog), self.grpc_server)
        #: The write path of each index that takes writes (docs/writes.md).
        self.writers = {
            index.name: Writer(self.catalog.manager(index.name), settings)
            for index in config.indexes
            if (settings := index.write_settings()) is not None
        }
        add_WriteServiceServicer_to_server(WriteServicer(self.catalog, self.writers), self.grpc_server)
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
        if config.tls is None:
            self.port = self.grpc_server.add_insecure_port(address)
        else:
            self.port = self.grpc_server.add_secure_port(address, server_credentials(config.tls))
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        self.address = f"{config.server.host}:{self.port}"
        server = config.server
        self.health_port = (
            HealthPort(self.health, server.host, server.health_port, reuse_port=server.workers > 1)
            if server.health_port is not None
            else None
        )
        self.metrics = (
            MetricsEndpoint(server.host, server.metrics_port, self.catalog, server.max_concurrent_calls)
            if server.metrics_port is not None
            else None
        )
        self._ready = threading.Event()

    def start(self) -> None:
        """Start answering calls; indexes load in the background (queries get UNAVAILABLE until then)."""
        self.grpc_server.start()
        if self.health_port is not None:
            self.health_port.start()
            log.info("health on %s:%d (plaintext, grpc.health.v1 only)", self.config.server.host, self.health_port.port)
        if self.metrics is not None:
            self.metrics.start()
        threading.Thread(target=self._load, name="flux-loader", daemon=True).start()
        tls = self.config.tls
        security = "plaintext" if tls is None else ("mutual TLS" if tls.client_ca_file else "TLS")
        tokens = len(self.config.auth.tokens)
        log.info("listening on %s (%s, %s)", self.address, security, f"{tokens} tokens" if tokens else "no auth")

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every configured index has been tried and health says so; False on timeout."""
        return self._ready.wait(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Turn health to NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``."""
        grace = self.config.server.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        if self.health_port is not None:
            self.health_port.stop()
        if self.metrics is not None:
            self.metrics.stop()
        for writer in self.writers.values():  # commits what is queued; the logs hold everything acknowledged
            writer.close()
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
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code.

    With ``server.workers`` above 1, runs that many worker processes on one port instead.
    """
    logs.configure(config.logging.format, config.logging.level)
    if config.server.workers > 1:
        return _supervise(config)
    return _serve_one(config)


def _serve_one(config: FluxConfig, ready: Callable[[], object] | None = None) -> int:
    server = build_server(config)
    signals = StopSignals()
    server.start()
    if ready is not None:
        threading.Thread(target=lambda: server.wait_ready() and ready(), name="flux-ready", daemon=True).start()
    received = signals.wait()
    log.info("received %s; draining for up to %.1fs", received.name, config.server.grace_seconds)
    server.stop()
    return 0


class Workers:
    """``server.workers`` processes, each a whole Flux server, listening on one port.

    The kernel spreads incoming connections over the workers (SO_REUSEPORT), so
    throughput grows with processes where one process is held back by Python's GIL.
    Workers are spawned, never forked, so no gRPC state crosses a fork. Each worker
    loads its own indexes: memory-mapped ones (Annoy, exact) share the page cache,
    hnswlib indexes take their memory once per worker.
    """

    def __init__(self, config: FluxConfig) -> None:
        host, port = config.server.host, config.server.port or _free_port(config.server.host)
        self.config = config.model_copy(update={"server": config.server.model_copy(update={"port": port})})
        self.address = f"{host}:{port}"
        context = multiprocessing.get_context("spawn")
        self._ready = [context.Event() for _ in range(config.server.workers)]
        self._processes = [
            context.Process(target=_worker, args=(_nth(self.config, number), ready), name=f"flux-worker-{number}")
            for number, ready in enumerate(self._ready)
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def start(self) -> None:
        for process in self._processes:
            process.start()
        log.info("listening on %s with %d worker processes", self.address, len(self._processes))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker has loaded its indexes; False on timeout or if a worker died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for ready, process in zip(self._ready, self._processes, strict=True):
            while not ready.wait(0.2):
                if not process.is_alive() or (deadline is not None and time.monotonic() > deadline):
                    return False
        return True

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every worker (each drains as a lone server does), then wait for them."""
        grace = self.config.server.grace_seconds if grace is None else grace
        for process in self._processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self._processes:
            process.join(grace + 10)
            if process.is_alive():
                process.kill()
                process.join()
        log.info("stopped %d workers", len(self._processes))

    def wait(self, interrupt: StopSignals | None = None) -> int | None:
        """Block until any worker exits (its exit code; a healthy worker never exits on its own),
        or until ``interrupt`` has a signal to read (None)."""
        sentinels = {p.sentinel: p for p in self._processes}
        signalled = [] if interrupt is None else [interrupt.fileno()]
        done = multiprocessing.connection.wait([*sentinels, *signalled])
        if set(signalled) & set(done):
            return None
        return sentinels[done[0]].exitcode or 0  # type: ignore[index]


def _supervise(config: FluxConfig) -> int:
    workers = Workers(config)
    signals = StopSignals()
    workers.start()
    code = workers.wait(interrupt=signals)
    if code is None:
        log.info("received %s; stopping %d workers", signals.wait().name, config.server.workers)
        workers.stop()
        return 0
    log.error("a worker exited with code %s; stopping the others", code)
    workers.stop()
    return code or 1


def _worker(config: FluxConfig, ready: Any) -> None:
    logs.configure(config.logging.format, config.logging.level, worker=os.getpid())
    raise SystemExit(_serve_one(config, ready.set))


def _nth(config: FluxConfig, number: int) -> FluxConfig:
    """Worker ``number``'s config: its metrics on ``metrics_port + number`` (each worker counts its own calls)."""
    port = config.server.metrics_port
    if not port:
        return config
    return config.model_copy(update={"server": config.server.model_copy(update={"metrics_port": port + number})})


def _free_port(host: str) -> int:
    """A port free right now, for workers that must all bind the same one (port 0 would give each its own)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
