"""Background work runs in a thread of its own at a lower priority, and hands back its result or error."""

from __future__ import annotations

import os
import threading

import pytest

from flux_core.storage.background import BACKGROUND_NICE, at_low_priority


def _where() -> tuple[int, int]:
    native = threading.get_native_id()
    return native, os.getpriority(os.PRIO_PROCESS, native)


def test_work_runs_in_another_thread_at_a_higher_nice_value_and_the_caller_keeps_its_own() -> None:
    caller, caller_nice = _where()
    worker, worker_nice = at_low_priority(_where)
    assert worker != caller
    assert worker_nice == min(caller_nice + BACKGROUND_NICE, 19)
    assert _where() == (caller, caller_nice)


def test_the_error_of_the_work_reaches_the_caller() -> None:
    def fail() -> None:
        raise ValueError("index.hnsw: checksum mismatch")

    with pytest.raises(ValueError, match="checksum mismatch"):
        at_low_priority(fail)
