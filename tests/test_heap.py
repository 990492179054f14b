"""Memory freed while a version loads goes back to the system, not only back to the heap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flux_core.storage.heap import release_free_memory


def _resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_freed_holes_in_the_heap_are_returned() -> None:
    blocks = [np.ones(12_000, np.float64) for _ in range(1000)]  # 96 KB each: from the heap, not mmap
    del blocks[::2]  # 48 MB of holes between live blocks: free() cannot hand them back itself
    before = _resident_mib()
    release_free_memory()
    assert before - _resident_mib() > 30
    assert all(float(b[-1]) == 1.0 for b in blocks)  # what is still held is untouched
