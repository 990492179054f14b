"""Background work runs in a thread of its own at a lower priority, and hands back its result or
error; or, readying a version while another serves, paced to a share of one CPU."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from flux.core.serving.gate import GateConfig
from flux.core.serving.index_settings import IndexSettings
from flux.core.serving.manager import IndexManager
from flux_core.storage.background import BACKGROUND_NICE, Pacer, at_low_priority
from tests.support import build_artifact, dataset


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


def _burn(cpu_seconds: float) -> None:
    """A slice of work: this thread's CPU time, not the clock's."""
    until = time.thread_time() + cpu_seconds
    while time.thread_time() < until:
        pass


def test_a_pacer_sleeps_three_times_the_cpu_a_slice_used_at_a_quarter_share() -> None:
    pacer = Pacer(0.25)
    _burn(0.02)
    started = time.monotonic()
    pacer.pause()
    assert time.monotonic() - started >= 0.06  # 0.02 s of CPU at a quarter: 0.06 s asleep


def test_a_pacer_lets_work_run_on_when_nothing_is_served_or_the_share_is_whole() -> None:
    for pacer in (Pacer(0.25, busy=lambda: False), Pacer(1.0)):
        _burn(0.05)
        started = time.monotonic()
        pacer.pause()
        # No sleep: far less than the 0.15 s a quarter share would have slept.
        assert time.monotonic() - started < 0.1


def test_a_paced_swap_is_checked_like_any_other(tmp_path: Path) -> None:
    """A version readied while another serves goes through the paced path: its checksums and gate
    still refuse a corrupt file, and a good one serves."""
    base, _ = dataset(300, 8, 1, seed=4)
    source = tmp_path / "items"
    build_artifact(source / "1", base, backend="hnsw", metric="l2")
    settings = IndexSettings("items", source, gate=GateConfig(warmup_queries=16, canary_queries=32, min_recall=0.9))
    manager = IndexManager(settings, swap_cpu_share=0.25)
    try:
        manager.refresh()
        assert _active(manager) == 1
        with manager.acquire():  # a request in flight: the next load is paced
            build_artifact(source / "2", base + 0.001, backend="hnsw", metric="l2", version=2)
            manager.refresh()
        assert _active(manager) == 2
        corrupt = build_artifact(source / "3", base, backend="hnsw", metric="l2", version=3)
        with (corrupt / "index.hnsw").open("r+b") as fh:
            fh.seek(1000)
            fh.write(b"\x00" * 64)
        manager.refresh()
        assert _active(manager) == 2
        assert "checksum mismatch" in manager.slot(3).error
    finally:
        manager.close()


def _active(manager: IndexManager) -> int:
    active = manager.active
    return active.version if active is not None else 0
