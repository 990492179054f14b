"""The server keeps one BLAS thread per matrix product (``server.blas_threads``): read back in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flux.blas import ENVIRONMENT, limit_threads
from flux.config import parse

#: numpy's OpenBLAS (pthreads) read back by threadpoolctl after the limit.
SCRIPT = r"""
import json, sys
import numpy
from flux.blas import limit_threads
took = limit_threads(int(sys.argv[1]))
from threadpoolctl import threadpool_info
print(json.dumps([took, [(i["prefix"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]]))
"""


def blas_threads(limit: int, environment: dict[str, str] | None = None) -> tuple[bool, dict[str, int]]:
    env = {k: v for k, v in os.environ.items() if k not in (ENVIRONMENT, "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(limit)], env={**env, **(environment or {})}, capture_output=True,
        text=True, check=True, timeout=120,
    )  # fmt: skip
    took, libraries = json.loads(out.stdout)
    return took, dict(libraries)


def test_numpys_blas_keeps_one_thread() -> None:
    took, libraries = blas_threads(1)
    assert took
    assert libraries, "numpy's BLAS was not found"
    assert set(libraries.values()) == {1}, libraries


def test_zero_leaves_the_library_default() -> None:
    took, libraries = blas_threads(0)
    assert not took
    assert max(libraries.values()) > 1 or os.cpu_count() == 1, libraries  # a thread per CPU


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    took, libraries = blas_threads(1, {ENVIRONMENT: "2"})
    assert not took
    assert os.cpu_count() == 1 or max(libraries.values()) == 2, libraries
    monkeypatch.setenv(ENVIRONMENT, "3")
    assert limit_threads(1) is False


def test_servers_keep_one_blas_thread_unless_told_otherwise() -> None:
    assert parse({}, source="test").server.blas_threads == 1
    assert parse({"server": {"blas_threads": 0}}, source="test").server.blas_threads == 0
