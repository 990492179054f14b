"""Child processes for benchmarks: started with ``spawn``, driven over a pipe, measured through /proc.

Every side of a benchmark (library, server, each load client) runs in its own process,
so that one process's memory is its own and a Python client never shares a GIL with
the server it loads. ``spawn`` keeps gRPC out of any forked parent (gRPC is not fork-safe).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_CONTEXT = multiprocessing.get_context("spawn")


class Child:
    """A process running ``main(conn, *args)``; the parent talks to it through ``send``/``recv``.

    Not a daemon, so that a server child may start worker processes of its own; a child
    whose parent dies sees its pipe close and exits.
    """

    def __init__(self, main: Callable[..., None], *args: Any, name: str) -> None:
        self.conn, child_end = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=main, args=(child_end, *args), name=name)
        self.process.start()
        child_end.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def recv(self, timeout: float = 3600.0) -> Any:
        """The child's next message; a child that died or stalled raises instead of hanging."""
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.process.name} sent nothing within {timeout:.0f}s")
        message = self.conn.recv()
        if isinstance(message, BaseException):
            raise RuntimeError(f"{self.process.name} failed: {message!r}") from message
        return message

    def call(self, message: Any, timeout: float = 3600.0) -> Any:
        self.send(message)
        return self.recv(timeout)

    def close(self) -> None:
        """Ask the child to exit (``None``), then make sure it has."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def serve_forever(conn: Connection, handle: Callable[[Any], Any]) -> None:
    """The child side: answer each message with ``handle(message)`` until ``None`` arrives.

    An exception is sent back to the parent rather than killing the child silently.
    """
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            reply = handle(message)
        except Exception as exc:
            conn.send(exc)
        else:
            conn.send(reply)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (Linux /proc), including pages of mapped files it touched."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status has no VmRSS line")


def children_of(pid: int) -> list[int]:
    """Child process ids (Linux /proc) of a server that runs workers, leaving out
    multiprocessing's resource tracker, which is no part of the server."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return [child for child in children if b"resource_tracker" not in _cmdline(child)]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def spawn_flux_serve(config: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``flux serve --config CONFIG`` and return it with its address once it reports ready.

    The server's log is read until its "ready" line, then drained in the background so
    that a chatty server never blocks on a full pipe.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "flux", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    address = ""
    for line in process.stderr:
        if match := re.search(r"listening on (\S+)", line):
            address = match.group(1)
        if " ready: " in line:
            break
    if not address:
        process.kill()
        raise RuntimeError(f"flux serve --config {config} did not start")
    threading.Thread(target=process.stderr.read, daemon=True).start()
    return process, address
