"""The deadline of the call being served, checked between the steps of long work.

The gRPC layer sets it from the caller's deadline for the length of a call; a batch whose
queries are answered one by one (filtered queries, rows with their own k or params) checks
it before each step, so a call whose caller has given up stops taking CPU from the others.
A single search in the library is one step and is not interrupted. Outside a call there is
no deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from flux_core.errors import DeadlineExceeded

_DEADLINE: ContextVar[float] = ContextVar("flux_deadline", default=math.inf)


def start(seconds: float) -> Token[float]:
    """Put the current call under a deadline ``seconds`` from now (``inf``: none); ``end`` with the token."""
    return _DEADLINE.set(time.monotonic() + seconds)


def end(token: Token[float]) -> None:
    _DEADLINE.reset(token)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Run the body under a deadline ``seconds`` from now (``inf``: none)."""
    token = start(seconds)
    try:
        yield
    finally:
        end(token)


def check() -> None:
    """Raise DeadlineExceeded once the current call's deadline has passed."""
    if time.monotonic() > _DEADLINE.get():
        raise DeadlineExceeded("the deadline passed while the call ran; the rest of its work was dropped")
