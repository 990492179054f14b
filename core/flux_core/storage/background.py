"""Work that must not take CPU from serving: paced, or at a lower scheduling priority.

Readying a new version while the current one serves (checksumming its files, warming it up,
checking it) competes with the request threads for the same cores and for the GIL. A
``Pacer`` keeps such work to a share of one CPU by sleeping between short slices of it: a
sleeping thread leaves both the CPU and the GIL to the requests. A higher nice value
(``at_low_priority``) leaves the CPU, but not the GIL: a low-priority thread that holds the
GIL between two slices of native work can be put off by the kernel while every request
thread waits for it. Measured with 4 clients keeping one server CPU busy (``flux bench swap``,
docs/versions.md): swaps at nice +10 took 2.4-2.8 s with p99 1.53-1.88x steady; paced at a
quarter of a CPU, 0.97-1.20 s with p99 1.00-1.41x.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

#: How much nicer than the server's own threads background work runs.
BACKGROUND_NICE = 10


def at_low_priority(work: Callable[[], T]) -> T:
    """Run ``work`` in a thread of its own at nice +10; return its result or raise its error.

    Only for work that releases the GIL (hashing, reading files, native code that lets go
    of it): a low-priority thread holding the GIL would hold up the request threads longer.
    The thread is new each time because an unprivileged thread cannot raise its priority
    back. Elsewhere than on Linux, where nice is per process, ``work`` runs as it is.
    """
    if sys.platform != "linux":
        return work()
    done: Future[T] = Future()

    def run() -> None:
        thread = threading.get_native_id()  # on Linux, a thread's own nice value is set through its id
        with contextlib.suppress(OSError):  # not allowed here: run at the usual priority
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICE, 19))
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to the caller
            done.set_exception(exc)

    threading.Thread(target=run, name="flux-background", daemon=True).start()
    return done.result()


class Pacer:
    """Keeps background work to about ``share`` of one CPU while ``busy()`` says requests are
    being served: after each short slice of the work (a millisecond or so), ``pause`` sleeps in
    proportion to the CPU time the slice used. A request is then held up by one slice at most.
    With ``share`` 1, or nothing being served, the work runs at full speed."""

    def __init__(self, share: float, busy: Callable[[], bool] = lambda: True) -> None:
        self._ratio = (1.0 - share) / share if 0.0 < share < 1.0 else 0.0
        self._busy = busy
        self._mark = time.thread_time()

    def pause(self) -> None:
        used = time.thread_time() - self._mark  # this thread's CPU time since the last pause
        if self._ratio and used > 0 and self._busy():
            time.sleep(used * self._ratio)
        self._mark = time.thread_time()
