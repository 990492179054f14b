"""The memory budget every index of a server shares.

Loaded versions take memory in proportion to their artifacts' size; a load reserves that much
first and is refused when the budget has no room, instead of the server running out of memory.
"""

from __future__ import annotations

import threading

from flux_core.errors import Reason, ResourceExhausted


class MemoryBudget:
    """Bytes that loaded versions may take, estimated from their artifacts' size; 0 means no limit."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, what: str) -> None:
        with self._lock:
            if self.limit and self._used + nbytes > self.limit:
                raise ResourceExhausted(
                    f"{what} needs about {nbytes / 2**20:.1f} MiB, but only "
                    f"{(self.limit - self._used) / 2**20:.1f} MiB of the {self.limit / 2**20:.1f} MiB "
                    "memory budget are free; unload a version or raise server.memory_budget_bytes",
                    reason=Reason.MEMORY_BUDGET_EXCEEDED,
                )
            self._used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes

    @property
    def used(self) -> int:
        return self._used
