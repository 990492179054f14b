"""The server process caps glibc's malloc arenas (``server.malloc_arenas``): counted in a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flux.allocator import limit_arenas
from flux.config import parse

#: Eight threads that each allocate (ctypes leaves the GIL for the call, as a library call does),
#: then glibc's own report of its arenas (malloc_info: one <heap> per arena).
SCRIPT = r"""
import ctypes, re, sys, tempfile, threading
from flux.allocator import limit_arenas
took = limit_arenas(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def churn():
    for _ in range(2000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile("r", suffix=".xml") as report:
    out = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    print(took, len(re.findall(r"<heap nr=", report.read())))
"""


def arenas(limit: int) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(limit)], env=env, capture_output=True, text=True, check=True
    )
    took, heaps = out.stdout.split()
    return took == "True", int(heaps)


def test_the_arena_limit_holds_for_threads_that_allocate_at_once() -> None:
    assert arenas(2) == (True, 2)
    took, heaps = arenas(0)  # glibc's default: an arena per thread, up to 8 per CPU
    assert not took
    assert heaps > 2


def test_an_arena_limit_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas(2) is False


def test_servers_keep_two_arenas_unless_told_otherwise() -> None:
    assert parse({}, source="test").server.malloc_arenas == 2
    assert parse({"server": {"malloc_arenas": 0}}, source="test").server.malloc_arenas == 0
