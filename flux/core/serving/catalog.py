"""The catalog: every configured index (as a version manager) and alias, by name.

One index failing to load never stops the others: its manager records why, and its
queries get FAILED_PRECONDITION with that reason while the rest keep serving. A
poller looks at the index sources now and then, so new versions are picked up
without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

from flux import metrics
from flux.core.query.request import Query, Result
from flux.core.serving.aliases import Alias
from flux.core.serving.budget import MemoryBudget
from flux.core.serving.index import Limits, ServedIndex
from flux.core.serving.index_settings import IndexSettings
from flux.core.serving.manager import IndexManager, Listener
from flux.core.serving.versions import State
from flux_core.errors import IndexNotFound, InvalidArgument

log = logging.getLogger(__name__)


class IndexState(Enum):
    """An index as a whole: serving when it has an active version."""

    LOADING = "loading"
    SERVING = "serving"
    FAILED = "failed"


@dataclass(frozen=True)
class Resolved:
    """What a request's name resolved to."""

    index: ServedIndex
    alias: str = ""


class Catalog:
    def __init__(
        self,
        indexes: list[IndexSettings],
        *,
        aliases: list[Alias] | None = None,
        limits: Limits = Limits(),
        batch_threads: int = 1,
        memory_budget: int = 0,
        poll_seconds: dict[str, float] | None = None,
        swap_cpu_share: float = 1.0,
    ) -> None:
        self.budget = MemoryBudget(memory_budget)
        self._listeners: list[Listener] = []
        self._managers = {
            s.name: IndexManager(
                s,
                limits=limits,
                batch_threads=batch_threads,
                budget=self.budget,
                listener=self._notify,
                swap_cpu_share=swap_cpu_share,
            )
            for s in indexes
        }
        self._aliases = {a.name: a for a in aliases or []}
        self._poll_seconds = {n: p for n, p in (poll_seconds or {}).items() if p > 0}
        self._stop = threading.Event()
        self.loaded = threading.Event()  # set once every index has been tried
        #: Whether NOT_FOUND for an unknown name lists the indexes; the server turns it off when auth is on.
        self.list_names = True

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, name: str, serving: bool) -> None:
        for listener in self._listeners:
            listener(name, serving)

    # -- names ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._managers)

    def aliases(self) -> list[Alias]:
        return [self._aliases[n] for n in sorted(self._aliases)]

    def manager(self, name: str) -> IndexManager:
        try:
            return self._managers[name]
        except KeyError:
            known = f" (indexes: {', '.join(sorted(self._managers)) or 'none'})" if self.list_names else ""
            raise IndexNotFound(f"no index named {name!r}{known}", field="index") from None

    def state(self, name: str) -> IndexState:
        manager = self.manager(name)
        if manager.active is not None:
            return IndexState.SERVING
        states = {s.state for s in manager.slots()}
        if not self.loaded.is_set() or states & {State.LOADING, State.READY}:
            return IndexState.LOADING
        return IndexState.FAILED

    # -- the request path -------------------------------------------------------------------

    @contextmanager
    def acquire(self, name: str, version: int = 0, routing_key: str = "") -> Iterator[Resolved]:
        """The index version a request runs on, through an alias if ``name`` is one (then with no ``version``:
        a version number belongs to one index, and an alias's arms may be different indexes)."""
        alias = self._aliases.get(name)
        if alias is None:
            with self.manager(name).acquire(version) as index:
                yield Resolved(index)
            return
        if version:
            raise InvalidArgument(
                f"version {version} was asked of {name!r}, an alias; an alias's arms name their own index and "
                "version, so leave version at 0 or ask the index by its own name",
                field="version",
            )
        arm_number = alias.route(routing_key)
        arm = alias.arms[arm_number]
        started = time.perf_counter()
        with self.manager(arm.index).acquire(arm.version) as index:
            try:
                yield Resolved(index, alias.name)
            finally:
                alias.record(arm_number, time.perf_counter() - started)

    def search(self, query: Query) -> Result:
        """Answer ``query`` on the version it names (through its alias, if it names one), held
        throughout; its rows are counted per strategy (``flux_query_rows_total``)."""
        if query.index not in self._aliases:  # the usual case, without a context manager's cost per call
            manager = self.manager(query.index)
            loaded = manager.hold(query.version)
            try:
                result = loaded.index.answer(query)
            finally:
                manager.release(loaded)
        else:
            with self.acquire(query.index, query.version, query.routing_key) as resolved:
                result = resolved.index.answer(query)
            result.alias = resolved.alias
        metrics.ROWS.answered(result.index, result.strategies)
        return result

    def get(self, name: str) -> ServedIndex:
        """The active version of ``name``, without holding it (for tools and tests)."""
        with self.acquire(name) as resolved:
            return resolved.index

    # -- lifecycle --------------------------------------------------------------------------

    def load_all(self) -> None:
        """Bring every index to what its policy asks, in turn; failures are recorded, never raised."""
        try:
            for name in self.names():
                self._managers[name].refresh()
        finally:
            self.loaded.set()

    def poll(self) -> None:
        """Refresh each index whose source is polled, every ``poll_seconds``, until ``close``."""
        due = {name: time.monotonic() + seconds for name, seconds in self._poll_seconds.items()}
        while due and not self._stop.is_set():
            name = min(due, key=due.__getitem__)
            if self._stop.wait(max(0.0, due[name] - time.monotonic())):
                return
            self._managers[name].refresh()
            due[name] = time.monotonic() + self._poll_seconds[name]

    def close(self) -> None:
        """Stop polling and release every loaded version."""
        self._stop.set()
        for manager in self._managers.values():
            manager.close()
