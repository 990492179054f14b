"""Build steps that report no progress while they run (faiss's k-means, Annoy's trees): at tens of
millions of items they take minutes, so a build someone follows logs when each starts and ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def silent_step(log: logging.Logger, name: str, detail: str, *, watched: bool) -> Iterator[None]:
    """Log ``name: detail`` before the step and how long it took after it, when ``watched``."""
    if not watched:
        yield
        return
    log.info("%s: %s", name, detail)
    started = time.perf_counter()
    yield
    log.info("%s took %.1f s", name, time.perf_counter() - started)
