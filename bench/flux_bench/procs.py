"""Child processes for benchmarks: started with ``spawn``, driven over a pipe, measured through /proc.

Every side of a benchmark (library, server, each load client) runs in its own process,
so that one process's memory is its own and a Python client never shares a GIL with
the server it loads. ``spawn`` keeps gRPC out of any forked parent (gRPC is not fork-safe).
A child may be pinned to a CPU set before it runs anything, so that a server and the
clients loading it never take CPU time from each other; the processes and threads it
starts inherit the set.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_CONTEXT = multiprocessing.get_context("spawn")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Child:
    """A process running ``main(conn, *args)``; the parent talks to it through ``send``/``recv``.

    Not a daemon, so that a server child may start worker processes of its own; a child
    whose parent dies sees its pipe close and exits. With ``cpus``, the child pins itself to
    that set before ``main`` runs, so every thread and process it starts stays on it.
    """

    def __init__(self, main: Callable[..., None], *args: Any, name: str, cpus: Collection[int] | None = None) -> None:
        self.conn, child_end = _CONTEXT.Pipe()
        if cpus is None:
            target, target_args = main, (child_end, *args)
        else:
            target, target_args = _pinned, (child_end, sorted(cpus), main, *args)
        self.process = _CONTEXT.Process(target=target, args=target_args, name=name)
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


def _pinned(conn: Connection, cpus: list[int], main: Callable[..., None], *args: Any) -> None:
    """Pin every thread this process has so far, then run ``main``: whatever it starts later
    inherits the set."""
    pin_threads(cpus)
    main(conn, *args)


def pin_threads(cpus: Collection[int]) -> None:
    """Pin every thread this process has (imports may have started some, e.g. a BLAS pool) to
    ``cpus``; threads started later inherit the set of the thread that starts them."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)


@contextlib.contextmanager
def on_cpus(cpus: Collection[int] | None) -> Iterator[None]:
    """Run this process (every thread of it) on ``cpus`` for the block, then where it ran before;
    None leaves it where it is."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    pin_threads(cpus)
    try:
        yield
    finally:
        pin_threads(before)


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
            conn.send(sendable(exc))
        else:
            conn.send(reply)


def sendable(error: Exception) -> Exception:
    """``error`` as a child can send it to its parent: gRPC's errors hold locks, which do not pickle,
    so those go as a RuntimeError carrying their text."""
    try:
        pickle.dumps(error)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (Linux /proc), including pages of mapped files it touched."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status has no VmRSS line")


def pss_bytes(pid: int | str = "self") -> int:
    """Proportional memory of a process (Linux /proc): a page shared by n processes counts 1/n
    here, so the sum over processes that share pages (forked workers) is what they take together."""
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/smaps_rollup has no Pss line")


def children_of(pid: int) -> list[int]:
    """Child process ids (Linux /proc) of a server that runs workers, leaving out
    multiprocessing's resource tracker, which is no part of the server. Children started
    by any of its threads count, as the kernel lists them per thread."""
    children: list[int] = []
    for task in _tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                children.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return [child for child in dict.fromkeys(children) if b"resource_tracker" not in _cmdline(child)]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (workers, and workers' workers), resource trackers left out."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children_of(current))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes so far, every thread included (utime and stime
    of /proc/PID/stat, in clock ticks). A process that has exited counts nothing."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()  # the command name may hold spaces
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5); fields[0] is field 3
    return ticks / _CLOCK_TICKS


def cpu_set(pid: int) -> list[int]:
    """The CPUs any thread of ``pid`` may run on: if one thread escaped a pinning, it shows here."""
    cpus: set[int] = set()
    for task in _tasks(pid):
        with contextlib.suppress(OSError):
            cpus |= os.sched_getaffinity(task)
    return sorted(cpus)


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset and cgroups write it: ``0``, ``0-3``, ``0-1,3``."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or (dash and int(last) < int(first)):
            raise ValueError(f"{text!r} is not a CPU list such as 0, 0-3 or 0-1,3")
        cpus.update(range(int(first), int(last if dash else first) + 1))
    if not cpus:
        raise ValueError(f"{text!r} names no CPU")
    return frozenset(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    """The short form of a CPU set, ranges joined: {0, 1, 3} is ``0-1,3``."""
    ordered, parts = sorted(set(cpus)), []
    while ordered:
        first = last = ordered.pop(0)
        while ordered and ordered[0] == last + 1:
            last = ordered.pop(0)
        parts.append(str(first) if first == last else f"{first}-{last}")
    return ",".join(parts)


def _tasks(pid: int) -> list[int]:
    try:
        return [int(task) for task in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def spawn_flux_serve(
    config: Path, cpus: Collection[int] | None = None, echo: str = ""
) -> tuple[subprocess.Popen[str], str]:
    """Start ``flux serve --config CONFIG`` and return it with its address once it reports ready.

    ``cpus``: the CPUs the server (every thread it will start) may run on; None leaves it unpinned.
    ``echo``: a regular expression; the server's log lines that match it are printed to stderr.
    The server's log is read until its "ready" line, then drained in the background so
    that a chatty server never blocks on a full pipe.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "flux", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
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
    threading.Thread(target=_drain, args=(process.stderr, echo), daemon=True).start()
    return process, address


def _drain(log: Iterable[str], echo: str) -> None:
    for line in log:
        if echo and re.search(echo, line):
            print(f"  server: {line.rstrip()}", file=sys.stderr, flush=True)
