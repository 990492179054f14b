"""Work that must not take CPU from serving runs at a lower scheduling priority.

Loading a new version while the current one serves (checksumming its files, above all)
competes with the request threads for the same cores. The kernel favours the request
threads once the loading work runs at a higher nice value.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
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
