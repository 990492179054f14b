"""The server process's memory allocator: how many malloc arenas glibc may keep.

glibc gives each thread that allocates an arena of its own, up to 8 per CPU, and an arena keeps
the memory freed into it. A server's handler threads all allocate (request and answer buffers,
numpy arrays), so each holds some of that on the side. Two runs of `flux bench serving` (pinned,
hnsw, after its unary, stream and batch loads), before and after 2 arenas: 200,000 x 128 held
241 and 227 MiB, 1.27 and 1.23 times the library in a process of its own; 200,000 x 384 442 and
423 MiB. The GIL serialises most of that allocation anyway.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt's parameter for the arena limit (glibc's malloc.h).
_M_ARENA_MAX = -8


def limit_arenas(count: int) -> bool:
    """Let glibc keep at most ``count`` malloc arenas from now on (0: its default). Returns whether it
    took the limit: not where the C library is not glibc, nor when MALLOC_ARENA_MAX (which glibc
    reads at start) already chose one."""
    if count <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_ARENA_MAX, count))
