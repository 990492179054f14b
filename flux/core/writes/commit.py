"""Group commit: concurrent writers share one log append and one fsync.

A writer ``submit``s an encoded record and gets a Ticket. One flusher thread takes every
record queued so far, appends them to the log with one write and one fdatasync, hands them
in order to ``apply``, and only then wakes their writers. So concurrent writers pay for one
sync between them, records are applied in log order, and a write is acknowledged only once
it is durable and searches see it.

With ``group=False`` the flusher takes one record per sync: the baseline that group commit
is measured against (``flux bench writes``).

If an append or an apply fails, memory and log may disagree, so every queued and later write
is refused until a restart recovers the index from the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from flux import metrics
from flux.core.writes.wal import Log
from flux_core.errors import FailedPrecondition, FluxError, Reason, Unavailable

log = logging.getLogger(__name__)


class Ticket:
    """One submitted record: ``wait`` returns what ``apply`` said of it, once it is durable and applied."""

    __slots__ = ("_done", "_error", "_result", "op", "payload", "sequence")

    def __init__(self, sequence: int, payload: bytes, op: Any) -> None:
        self.sequence = sequence
        self.payload = payload
        self.op = op
        self._done = threading.Event()
        self._result: Any = None
        self._error: FluxError | None = None

    def wait(self) -> Any:
        self._done.wait()
        if self._error is not None:  # a copy per waiter, for a traceback of its own; the reason goes along
            error = type(self._error)(self._error.message, field=self._error.field, metadata=self._error.metadata)
            error.reason = self._error.reason
            raise error
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _finish(self, result: Any = None, error: FluxError | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()


class GroupCommit:
    """The flusher of one log. ``apply`` gets each group of tickets in order and returns one result per ticket."""

    def __init__(
        self,
        log: Log,
        apply: Callable[[Sequence[Ticket]], Sequence[Any]],
        *,
        group: bool = True,
        name: str = "",
    ) -> None:
        self.name = name
        self._log = log
        self._apply = apply
        self._group = group
        self._cond = threading.Condition()
        self._queue: deque[Ticket] = deque()
        self._next = log.last + 1
        self._closing = False
        self.failure: str = ""
        self._thread = threading.Thread(target=self._run, name=f"flux-wal-{name}", daemon=True)
        self._thread.start()

    def submit(self, payload: bytes, op: Any) -> Ticket:
        """Queue a record and return at once; the ticket's ``wait`` blocks until it is committed."""
        with self._cond:
            if self.failure:
                raise FailedPrecondition(self.failure, reason=Reason.WRITES_FAILED)
            if self._closing:
                raise Unavailable(
                    f"index {self.name!r} is shutting down; retry against a running server", reason=Reason.SHUTTING_DOWN
                )
            ticket = Ticket(self._next, payload, op)
            self._next += 1
            self._queue.append(ticket)
            self._cond.notify()
        return ticket

    def close(self) -> None:
        """Commit what is queued, then stop the flusher."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._group:
                    batch = list(self._queue)
                    self._queue.clear()
                else:
                    batch = [self._queue.popleft()]
            if self.failure:
                self._refuse(batch)
                continue
            try:
                self._commit(batch)
            except Exception as exc:  # no writer may wait forever on a flusher that died
                log.exception("index %r: the log flusher failed", self.name)
                self._fail([t for t in batch if not t.done], f"the log flusher failed ({exc!r})")

    def _commit(self, batch: list[Ticket]) -> None:
        started = time.perf_counter()
        try:
            self._log.append([(t.sequence, t.payload) for t in batch])
        except OSError as exc:
            self._fail(batch, f"the write-ahead log could not be written or synced ({exc})")
            return
        metrics.WAL_SYNC_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        metrics.WAL_GROUP_RECORDS.labels(self.name).observe(len(batch))
        try:
            results = self._apply(batch)
        except Exception as exc:
            log.exception("index %r: applying logged writes failed", self.name)
            self._fail(batch, f"applying logged writes failed ({exc!r})")
            return
        for ticket, result in zip(batch, results, strict=True):
            ticket._finish(result)

    def _fail(self, batch: list[Ticket], why: str) -> None:
        self.failure = (
            f"index {self.name!r} refuses writes: {why}; restart the server to recover the index from its log"
        )
        log.error("%s", self.failure)
        self._refuse(batch)

    def _refuse(self, batch: list[Ticket]) -> None:
        error = FailedPrecondition(self.failure, reason=Reason.WRITES_FAILED)
        for ticket in batch:
            ticket._finish(error=error)
