"""The server's signals: SIGTERM and SIGINT as a socket the main thread can wait on, and
SIGUSR1 to print every thread's stack (``kill -USR1 <pid>`` shows where a stuck server is stuck;
a fatal signal such as SIGSEGV from a native library prints them too).

Python runs signal handlers in the main thread only, and only when that thread next runs
Python code. The kernel may deliver a process's signal to any of its threads, gRPC's C
threads included; a main thread asleep on a lock would then never wake for it, and the
server would ignore the signal. The wakeup fd is written by the C-level handler in
whichever thread receives the signal, so a read of it always returns.
"""

from __future__ import annotations

import faulthandler
import signal
import socket
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Catches SIGTERM and SIGINT from construction on; ``wait()`` blocks until one arrives.
    SIGUSR1 prints every thread's stack to stderr and the process goes on.

    Has a ``fileno()``, so it can also be waited on beside other file descriptors
    (``multiprocessing.connection.wait``). Only one may exist per process.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # the C handler must never block
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, _noted)
        faulthandler.enable(all_threads=True)  # a crash in a native library (or SIGABRT) prints the stacks too
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def fileno(self) -> int:
        return self._reader.fileno()

    def wait(self) -> signal.Signals:
        """Block until SIGTERM or SIGINT; the one that came."""
        while True:
            signum = self._reader.recv(1)[0]
            if signum in STOP_SIGNALS:
                return signal.Signals(signum)


def forget_after_fork() -> None:
    """In a forked child: SIGTERM and SIGINT act as they do by default again, until the child
    makes a ``StopSignals`` of its own; they no longer wake its parent's."""
    signal.set_wakeup_fd(-1)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def _noted(signum: int, frame: FrameType | None) -> None:
    """The byte on the wakeup socket is the news; the Python-level handler has nothing left to do."""
