"""Builds the gRPC server from a config: its services, health, ports and catalog of indexes.

``build_server(config)`` returns an unstarted ``FluxServer`` bound to its port (port 0
picks a free one), so tests and embedders control when it starts and stops. A port that
cannot be bound raises ``CannotBind`` naming the address (``flux.binding``). Running it as
a process until a signal stops it is ``flux.process``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import ParamSpec, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flux.api import interceptors
from flux.api.admin_service import AdminServicer
from flux.api.auth import IndexHealthServicer, Role, Token
from flux.api.health_port import HealthPort
from flux.api.tls import server_credentials
from flux.api.vector_service import VectorServicer
from flux.api.write_service import WriteServicer
from flux.binding import CannotBind, check_bindable, reason
from flux.config import FluxConfig
from flux.core.serving.aliases import Alias, Arm
from flux.core.serving.catalog import Catalog, IndexState
from flux.core.serving.index import Limits
from flux.core.writes.writer import Writer
from flux.metrics_endpoint import MetricsEndpoint
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

#: After the grace period, how long releasing the indexes and logs may take before the process
#: exits anyway: SIGTERM to exit stays within ``grace_seconds`` plus this, and a little start-up slack.
CLOSE_SECONDS = 0.1

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Handlers(futures.ThreadPoolExecutor):
    """The call handler threads, counting the calls they run, so that shutdown knows whether it
    leaves one behind (a search past the grace period cannot be interrupted; its thread is abandoned)."""

    def __init__(self, threads: int) -> None:
        super().__init__(max_workers=threads, thread_name_prefix="flux-rpc")
        self._busy = 0
        self._lock = threading.Lock()  # taken bare on every call: cheaper than entering the Condition
        self._idle = threading.Condition(self._lock)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> futures.Future[_T]:
        with self._lock:
            self._busy += 1
        try:
            return super().submit(self._counted, fn, *args, **kwargs)
        except BaseException:
            self._done()
            raise

    def _counted(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every call has returned, waiting up to ``timeout`` seconds for it."""
        with self._lock:
            return self._idle.wait_for(lambda: self._busy == 0, max(0.0, timeout))


class FluxServer:
    """A gRPC server, its catalog of indexes and its health, started and stopped together.

    Health: the server as a whole (``""``) and the Flux services report NOT_SERVING
    until every configured index has been tried, then SERVING; each index reports on
    ``flux.index.<name>``, SERVING only while it can answer.
    """

    def __init__(self, config: FluxConfig) -> None:
        self.config = config
        server = config.server
        shared = server.workers > 1
        # Before anything is opened (write-ahead logs, say): a busy port is one line and an exit code.
        check_bindable(server.host, server.port, "server.port", reuse_port=shared)
        if server.health_port is not None:
            check_bindable(server.host, server.health_port, "server.health_port", reuse_port=shared)
        if server.metrics_port is not None:
            check_bindable(server.host, server.metrics_port, "server.metrics_port")
        limits = Limits(
            max_k=config.limits.max_k, max_batch=config.limits.max_batch, max_id_bytes=config.limits.max_id_bytes
        )
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
            swap_cpu_share=config.server.swap_cpu_share,
        )
        # With tokens, NOT_FOUND does not list the indexes: a reader token need not learn the others' names.
        self.catalog.list_names = not config.auth.tokens
        message_bytes = config.limits.max_message_bytes
        self._handlers = _Handlers(config.server.threads)
        self.grpc_server = grpc.server(
            self._handlers,
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
        tokens = [Token(t.name, Role[t.role.upper()], t.sha256) for t in config.auth.tokens]
        self.health = IndexHealthServicer([] if config.auth.open_index_health else tokens, INDEX_HEALTH_PREFIX)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, _NOT_SERVING)
        for name in self.catalog.names():
            self.health.set(INDEX_HEALTH_PREFIX + name, _NOT_SERVING)
        self.catalog.add_listener(self._index_changed)
        address = f"{server.host}:{server.port}"
        try:
            if config.tls is None:
                self.port = self.grpc_server.add_insecure_port(address)
            else:
                self.port = self.grpc_server.add_secure_port(address, server_credentials(config.tls))
        except RuntimeError:  # taken since the check
            raise CannotBind(f"cannot listen on {address} (server.port): gRPC could not bind it") from None
        self.address = f"{server.host}:{self.port}"
        self.health_port = None
        if server.health_port is not None:
            try:
                self.health_port = HealthPort(self.health, server.host, server.health_port, reuse_port=shared)
            except RuntimeError:
                raise CannotBind(
                    f"cannot listen on {server.host}:{server.health_port} (server.health_port): gRPC could not bind it"
                ) from None
        self.metrics = None
        if server.metrics_port is not None:
            try:
                self.metrics = MetricsEndpoint(
                    server.host, server.metrics_port, self.catalog, server.max_concurrent_calls
                )
            except OSError as exc:
                raise CannotBind(
                    f"cannot listen on {server.host}:{server.metrics_port} (server.metrics_port): {reason(exc)}"
                ) from None
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

    def stop(self, grace: float | None = None) -> bool:
        """Turn health to NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``,
        cancel the rest, release the indexes. Returns whether every call had returned: a handler
        still computing when the grace period ends cannot be interrupted, and is left to finish
        (``flux serve`` then exits without waiting for it)."""
        grace = self.config.server.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait(grace + CLOSE_SECONDS)  # set once gRPC has ended (or cancelled) every call
        drained = self._handlers.wait_idle(deadline - time.monotonic())
        if not drained:
            log.warning("the grace period (%.1fs) ended with calls still running; they are cancelled", grace)
        if self.health_port is not None:
            self.health_port.stop()
        self.health.close()
        if self.metrics is not None:
            self.metrics.stop()
        for writer in self.writers.values():  # commits what is queued; the logs hold everything acknowledged
            writer.close()
        self.catalog.close()
        log.info("stopped")
        return drained

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
