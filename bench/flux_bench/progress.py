"""Timestamped progress lines on stderr, so that a benchmark run of many minutes shows where it is."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call it with a message: prints ``[mm:ss] message``, the time since it was made."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self._started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)
