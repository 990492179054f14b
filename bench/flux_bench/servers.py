"""The servers a benchmark loads, each in its own process: Flux itself and two baselines.

The echo server is the floor of any Python gRPC service: it registers the same method
names as Flux, parses nothing and answers every call with canned bytes as large as
Flux's answer. Whatever Flux adds on top of it is Flux's own cost plus the search. For a
bidirectional stream (StreamSearch) it answers every message with such bytes, one at a time.

The bare server is the least a Python search server does: it parses the request, runs
the backend's search on the same artifact and encodes the answer, with no validation,
version holds, metrics or interceptors. Flux's p50 over the bare server's is the cost of
its serving layer alone.

Each may be pinned to a CPU set (``cpus``); its workers and threads inherit it, and
``cpu_seconds()`` reads the CPU time of its whole process tree from /proc.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from concurrent import futures
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from flux_bench.procs import Child, children_of, cpu_seconds, cpu_set, process_tree, pss_bytes, rss_bytes

_MESSAGE_BYTES = 64 * 1024 * 1024
_OPTIONS = [("grpc.max_receive_message_length", _MESSAGE_BYTES), ("grpc.max_send_message_length", _MESSAGE_BYTES)]
SEARCH_METHOD = "/flux_api.v1.VectorService/Search"
#: How the echo server runs calls: a thread pool, grpc.aio, or one process per core on one port.
ECHO_MODELS = ("sync", "aio", "processes")


class ServerProcess:
    """A server in a child process; ``address`` once it answers, ``rss()`` and ``cpu_seconds()``
    of it and its workers."""

    def __init__(self, child: Child) -> None:
        self._child = child
        self.address: str = child.recv(timeout=1800)

    def rss(self) -> int:
        """Summed over the server's processes (a page shared by workers counts once per worker)."""
        return sum(rss_bytes(pid) for pid in [self._child.pid, *children_of(self._child.pid)])

    def pss(self) -> int:
        """Summed over the server's processes, a page shared by n of them counted 1/n in each:
        what the server takes, with its workers."""
        return sum(pss_bytes(pid) for pid in self.pids())

    def pids(self) -> list[int]:
        """The server's process and every worker under it."""
        return process_tree(self._child.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process tree so far; a difference of two readings
        is what the server spent in between."""
        return cpu_seconds(self.pids())

    def cpu_sets(self) -> dict[int, list[int]]:
        """The CPUs each of its processes (any thread of it) may run on."""
        return {pid: cpu_set(pid) for pid in self.pids()}

    def close(self) -> None:
        self._child.close()


def flux_server(raw_config: Mapping[str, Any], *, cpus: Collection[int] | None = None) -> ServerProcess:
    """Flux serving ``raw_config`` (host 127.0.0.1, port 0 are forced); returns once every index serves.
    With ``cpus``, the server and its workers run on those CPUs only."""
    return ServerProcess(Child(_flux_main, dict(raw_config), name="flux-bench-server", cpus=cpus))


def echo_server(
    responses: Mapping[str, bytes],
    *,
    model: str = "sync",
    threads: int = 16,
    processes: int = 0,
    cpus: Collection[int] | None = None,
    streams: Mapping[str, bytes] | None = None,
) -> ServerProcess:
    """The baseline: ``responses`` maps a method (``/pkg.Service/Method``) to the bytes it answers,
    ``streams`` a bidirectional streaming method to the bytes it answers each message with.

    The ``processes`` model runs ``processes`` workers (default: one per CPU) on one port.
    """
    if model not in ECHO_MODELS:
        raise ValueError(f"echo model must be one of {', '.join(ECHO_MODELS)}, got {model!r}")
    count = processes or os.cpu_count() or 1
    canned = {method: (answer, False) for method, answer in responses.items()}
    canned.update({method: (answer, True) for method, answer in (streams or {}).items()})
    child = Child(_echo_main, canned, model, threads, count, name=f"flux-bench-echo-{model}", cpus=cpus)
    return ServerProcess(child)


def bare_server(
    path: Path,
    *,
    threads: int = 4,
    search_threads: int = 1,
    processes: int = 0,
    cpus: Collection[int] | None = None,
) -> ServerProcess:
    """The bare search server on the artifact at ``path``: in this child (``processes`` 0), or in
    that many forked workers on one port, each loading its own copy as Flux's workers do.
    Batches search with ``search_threads`` threads, as Flux's ``server.search_threads``."""
    child = Child(_bare_main, str(path), threads, search_threads, processes, name="flux-bench-bare", cpus=cpus)
    return ServerProcess(child)


def _flux_main(conn: Connection, raw: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    from flux import allocator, blas
    from flux import config as flux_config
    from flux.core.serving.catalog import IndexState
    from flux.process import Workers
    from flux.server import build_server

    raw = {**raw, "server": {**raw.get("server", {}), "host": "127.0.0.1", "port": 0}}
    config = flux_config.parse(raw, source="benchmark config")
    allocator.limit_arenas(config.server.malloc_arenas)  # as `flux serve` does
    blas.limit_threads(config.server.blas_threads)
    if config.server.workers > 1:
        os.environ["FLUX_LOG_LEVEL"] = "WARNING"  # workers configure their own logging from it
        workers = Workers(config)
        workers.start()
        if workers.wait_ready():
            conn.send(workers.address)
            with contextlib.suppress(EOFError):
                conn.recv()
        else:
            conn.send(RuntimeError("a Flux worker process died while loading"))
        workers.stop(grace=0)
        return
    server = build_server(config)
    server.start()
    server.wait_ready()
    catalog = server.catalog
    failed = [f"{n}: not serving" for n in catalog.names() if catalog.state(n) is not IndexState.SERVING]
    if failed:
        conn.send(RuntimeError("; ".join(failed)))
    else:
        conn.send(server.address)
        with contextlib.suppress(EOFError):
            conn.recv()
    server.stop(grace=0)


#: Runs a server on an address until the process ends: ``serve(address, reuse_port, started)``.
Serve = Callable[[str, bool, Any], None]


#: What the echo answers: for each method, the bytes, and whether the method is a bidirectional stream.
Canned = dict[str, tuple[bytes, bool]]


def _echo_main(conn: Connection, responses: Canned, model: str, threads: int, processes: int) -> None:
    def serve(address: str, reuse_port: bool, started: Any) -> None:
        _echo_serve(responses, "sync" if reuse_port else model, threads, address, reuse_port, started)

    _serve_until_closed(conn, serve, processes if model == "processes" else 0)


def _bare_main(conn: Connection, path: str, threads: int, search_threads: int, processes: int) -> None:
    def serve(address: str, reuse_port: bool, started: Any) -> None:
        _bare_serve(Path(path), threads, search_threads, address, reuse_port, started)

    _serve_until_closed(conn, serve, processes)


def _serve_until_closed(conn: Connection, serve: Serve, processes: int) -> None:
    """Serve in this process (``processes`` 0) or in forked workers sharing one port; send the
    parent the address once it answers, and stop when the parent says so."""
    address = f"127.0.0.1:{_free_port()}"
    workers = [_fork_worker(serve, address) for _ in range(processes)]
    if not workers:
        started = threading.Event()
        threading.Thread(target=serve, args=(address, False, started), daemon=True).start()
        started.wait(600)
    conn.send(address)
    with contextlib.suppress(EOFError):
        conn.recv()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _fork_worker(serve: Serve, address: str) -> int:
    """Fork a worker serving on ``address`` with SO_REUSEPORT; return once it listens.

    The fork happens before this process touches gRPC, as gRPC requires.
    """
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(ready_read)
        try:
            serve(address, True, _PipeEvent(ready_write))
        finally:
            os._exit(0)
    os.close(ready_write)
    with os.fdopen(ready_read, "rb") as ready:
        ready.read(1)
    return pid


class _PipeEvent:
    """Tells the parent that a forked worker listens, by writing one byte to a pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def set(self) -> None:
        os.write(self._fd, b"1")
        os.close(self._fd)


def _echo_handlers(responses: Canned, asynchronous: bool) -> Any:
    import grpc

    by_service: dict[str, dict[str, Any]] = {}
    for method, (answer, streams) in responses.items():
        service, name = method.strip("/").split("/")

        def reply(request: bytes, context: Any, answer: bytes = answer) -> bytes:
            return answer

        async def reply_async(request: bytes, context: Any, answer: bytes = answer) -> bytes:
            return answer

        def replies(requests: Iterator[bytes], context: Any, answer: bytes = answer) -> Iterator[bytes]:
            for _ in requests:
                yield answer

        async def replies_async(requests: AsyncIterator[bytes], context: Any, answer: bytes = answer) -> Any:
            async for _ in requests:
                yield answer

        if streams:
            handler = grpc.stream_stream_rpc_method_handler(replies_async if asynchronous else replies)
        else:
            handler = grpc.unary_unary_rpc_method_handler(reply_async if asynchronous else reply)
        by_service.setdefault(service, {})[name] = handler
    return [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]


def _echo_serve(
    responses: Canned,
    model: str,
    threads: int,
    address: str,
    reuse_port: bool,
    started: Any = None,
) -> None:
    import grpc

    options = [*_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port else 0)]
    if model == "aio":
        import asyncio

        async def main() -> None:
            server = grpc.aio.server(options=options)
            server.add_generic_rpc_handlers(_echo_handlers(responses, True))
            server.add_insecure_port(address)
            await server.start()
            if started is not None:
                started.set()
            await server.wait_for_termination()

        asyncio.run(main())
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    server.add_generic_rpc_handlers(_echo_handlers(responses, False))
    server.add_insecure_port(address)
    server.start()
    if started is not None:
        started.set()
    server.wait_for_termination()


def _bare_serve(path: Path, threads: int, search_threads: int, address: str, reuse_port: bool, started: Any) -> None:
    import grpc
    import numpy as np

    from flux_api.v1 import types_pb2
    from flux_api.v1 import vector_service_pb2 as pb
    from flux_core.backend import defaults
    from flux_core.storage import artifact

    loaded = artifact.load(path)
    backend, ids, version = loaded.backend, loaded.ids, loaded.manifest.version
    base = defaults(type(backend).search_params)

    def search(request: Any, context: Any) -> Any:
        query = np.frombuffer(request.vector.data, "<f4").reshape(1, -1)
        labels, distances = backend.search(query, request.k, {**base, **request.params})
        found = labels[0] >= 0
        neighbors = types_pb2.Neighbors(ids=ids[labels[0][found]].tolist(), distances=distances[0][found].tolist())
        return pb.SearchResponse(index=request.index, version=version, neighbors=neighbors)

    def batch_search(request: Any, context: Any) -> Any:  # answers packed, every row full (no padding)
        queries = np.frombuffer(request.queries.data, "<f4").reshape(-1, request.queries.dimension)
        params = {**base, **request.params}
        labels, distances = backend.search(queries, request.k, params, threads=search_threads)
        response = pb.BatchSearchResponse(index=request.index, version=version)
        response.packed.ids.extend(ids[labels.ravel()].tolist())
        response.packed.distances.extend(distances.ravel().tolist())
        response.packed.counts.extend([labels.shape[1]] * len(labels))
        return response

    handlers = {
        "Search": grpc.unary_unary_rpc_method_handler(
            search, pb.SearchRequest.FromString, pb.SearchResponse.SerializeToString
        ),
        "BatchSearch": grpc.unary_unary_rpc_method_handler(
            batch_search, pb.BatchSearchRequest.FromString, pb.BatchSearchResponse.SerializeToString
        ),
    }
    service = SEARCH_METHOD.strip("/").split("/")[0]
    options = [*_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port else 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, handlers)])
    server.add_insecure_port(address)
    server.start()
    started.set()
    server.wait_for_termination()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
