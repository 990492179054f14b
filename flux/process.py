"""Runs Flux as a process until SIGTERM or SIGINT: one server, or ``server.workers`` worker processes on one port.

``flux serve`` calls ``serve``. After the signal the server drains for ``server.grace_seconds``;
the process is gone soon after that whatever is still running. With several workers, this
process supervises them: a worker that exits stops the others.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from flux import allocator, blas, logs
from flux.binding import EXIT_CANNOT_BIND, CannotBind, check_bindable
from flux.config import FluxConfig
from flux.core.serving import preload
from flux.router.server import build_router
from flux.server import CLOSE_SECONDS, build_server
from flux.signals import StopSignals, forget_after_fork

log = logging.getLogger(__name__)


def serve(config: FluxConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code.

    With ``server.workers`` above 1, runs that many worker processes on one port instead.
    """
    logs.configure(config.logging.format, config.logging.level)
    allocator.limit_arenas(config.server.malloc_arenas)  # before any handler thread allocates; workers fork
    blas.limit_threads(config.server.blas_threads)
    if config.server.workers > 1:
        return _supervise(config)
    return _serve_one(config)


def _serve_one(config: FluxConfig, ready: Callable[[], object] | None = None) -> int:
    server = build_router(config) if config.router is not None else build_server(config)
    signals = StopSignals()
    server.start()
    if ready is not None:
        threading.Thread(target=lambda: server.wait_ready() and ready(), name="flux-ready", daemon=True).start()
    received = signals.wait()
    grace = config.server.grace_seconds
    log.info("received %s; draining for up to %.1fs", received.name, grace)
    # The process must be gone soon after the grace period, whatever is still running: a handler
    # deep in a search, or closing that waits on one. Python would join those threads at exit.
    deadline = time.monotonic() + grace + CLOSE_SECONDS
    drained: list[bool] = []
    stopping = threading.Thread(target=lambda: drained.append(server.stop()), name="flux-stop", daemon=True)
    stopping.start()
    stopping.join(max(0.0, deadline - time.monotonic()))
    if drained != [True]:
        log.warning("exiting without waiting for the work still running after the grace period")
        _exit_now(0)
    return 0


def _exit_now(code: int) -> None:
    """Exit at once, leaving running threads behind; the log and the standard streams are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


class Workers:
    """``server.workers`` processes, each a whole Flux server, listening on one port.

    The kernel spreads incoming connections over the workers (SO_REUSEPORT), so
    throughput grows with processes where one process is held back by Python's GIL.
    ``start`` loads the indexes' first versions here, then forks the workers, so that they
    share that memory copy-on-write (``flux.core.serving.preload``): two workers on an
    hnswlib index take about the memory of one. gRPC supports a fork made before any server
    or channel exists, and this process never makes one: each worker builds its own server.
    """

    def __init__(self, config: FluxConfig) -> None:
        server = config.server
        # The workers share these ports with SO_REUSEPORT, so each would also join a port some other
        # process holds that way: check here, before any worker starts, that nothing holds them.
        for key, value in (("server.port", server.port), ("server.health_port", server.health_port)):
            if value:
                check_bindable(server.host, value, key)
        if server.metrics_port:
            for number in range(server.workers):
                check_bindable(server.host, server.metrics_port + number, "server.metrics_port")
        host, port = config.server.host, config.server.port or _free_port(config.server.host)
        self.config = config.model_copy(update={"server": config.server.model_copy(update={"port": port})})
        self.address = f"{host}:{port}"
        context = multiprocessing.get_context("fork")
        self._ready = [context.Event() for _ in range(config.server.workers)]
        self._processes = [
            context.Process(target=_worker, args=(_nth(self.config, number), ready), name=f"flux-worker-{number}")
            for number, ready in enumerate(self._ready)
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def start(self) -> None:
        data_root = self.config.server.data_root
        preload.load([index.settings(data_root) for index in self.config.indexes])
        # The collector would write to every object it looks at, copying each page that holds one
        # into the worker that looked; frozen, it leaves what exists now alone.
        gc.freeze()
        try:
            for process in self._processes:
                process.start()
        finally:
            preload.forget()  # the workers keep their shared copies
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
    forget_after_fork()
    logs.configure(config.logging.format, config.logging.level, worker=os.getpid())

    def loaded() -> None:
        preload.forget()  # what this worker's managers did not take (a version replaced since, say)
        ready.set()

    try:
        code = _serve_one(config, loaded)
    except CannotBind as exc:  # taken since the supervisor checked
        log.error("%s", exc.message)
        code = EXIT_CANNOT_BIND
    raise SystemExit(code)


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
