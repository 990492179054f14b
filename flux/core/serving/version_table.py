"""The versions of one index as requests and the control plane see them: which exist, which are loaded, which answers.

Every request ``acquire``s the version it will use for its whole life; a swap only changes which
version the next request gets. A version taken out of service is closed when its last request
releases it. ``IndexManager`` (flux.core.serving.manager) builds on this table: it is what changes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flux.core.serving import gate
from flux.core.serving.budget import MemoryBudget
from flux.core.serving.index import ServedIndex
from flux.core.serving.index_settings import IndexSettings
from flux.core.serving.versions import State
from flux_core.errors import FailedPrecondition, FluxError, NotFound, Reason, Unavailable
from flux_core.storage import artifact


@dataclass
class LoadedVersion:
    """One loaded instance of a version, and the requests using it."""

    index: ServedIndex
    nbytes: int
    in_flight: int = 0
    retired: bool = False


@dataclass
class VersionSlot:
    version: int
    path: Path
    state: State = State.AVAILABLE
    error: str = ""
    report: gate.GateReport | None = None
    artifact_bytes: int = 0
    load_seconds: float = 0.0
    loaded: LoadedVersion | None = field(default=None, repr=False)
    #: FAILED only for want of manifest.json: tried again once the manifest appears.
    unfinished: bool = False

    @property
    def in_flight(self) -> int:
        return self.loaded.in_flight if self.loaded else 0


class VersionTable:
    """The versions of one index: which exist, which are loaded, which one answers."""

    def __init__(self, settings: IndexSettings, budget: MemoryBudget) -> None:
        self.settings = settings
        self.name = settings.name
        self._budget = budget
        self._slots: dict[int, VersionSlot] = {}
        self._active: VersionSlot | None = None
        self._scanned = False  # until the source is first read, "no version" means "not yet"
        #: Why the source holds no version when that is known better than "none found" (a writable
        #: index whose empty first version could not be created says why here).
        self.source_problem = ""
        self._lock = threading.Lock()  # guards slots, active and in-flight counts: held briefly
        self.requests = 0  # requests that have held a version, ever (counted under the lock)

    # -- the request path -------------------------------------------------------------

    @contextmanager
    def acquire(self, version: int = 0) -> Iterator[ServedIndex]:
        """The version a request runs on, held until the request ends."""
        loaded = self.hold(version)
        try:
            yield loaded.index
        finally:
            self.release(loaded)

    def hold(self, version: int = 0) -> LoadedVersion:
        """``acquire`` without the context manager, for the search path: every ``hold`` must be
        followed by one ``release``, in a ``finally``."""
        with self._lock:
            slot = self._active if version == 0 else self._slots.get(version)
            loaded = slot.loaded if slot is not None and slot.state in (State.ACTIVE, State.READY) else None
            if loaded is None:
                raise self._why_not_serving(version)
            loaded.in_flight += 1
            self.requests += 1
        return loaded

    def release(self, loaded: LoadedVersion) -> None:
        """The request that held ``loaded`` is done; the last one out closes a retired version."""
        with self._lock:
            loaded.in_flight -= 1
            close = loaded.retired and loaded.in_flight == 0
        if close:
            self._close(loaded)

    def _why_not_serving(self, version: int) -> FluxError:
        if version:
            return NotFound(
                f"index {self.name!r} has no loaded version {version} (loaded: {self._loaded_versions() or 'none'})",
                field="version",
            )
        states = {s.state for s in self._slots.values()}
        if not self._scanned or states & {State.AVAILABLE, State.LOADING, State.READY}:  # READY: not yet active
            return Unavailable(
                f"index {self.name!r} is still loading; retry shortly", field="index", reason=Reason.INDEX_LOADING
            )
        failed = [s for s in self._slots.values() if s.state is State.FAILED]
        if failed:
            newest = max(failed, key=lambda s: s.version)
            # Any reader sees this: paths start at the source folder's name, never at / (the log has them in full).
            source = self.settings.source
            reason = newest.error.replace(f"{source}/", f"{source.name}/")
            return FailedPrecondition(
                f"index {self.name!r} failed to load version {newest.version}: {reason}", field="index"
            )
        source = self.settings.source
        if self.source_problem:
            return FailedPrecondition(
                f"index {self.name!r} has no version to serve: {self.source_problem}", field="index"
            )
        why = (
            "it does not exist"
            if not source.exists()
            else f"{source.name}/{artifact.MANIFEST} is missing, and it holds no numbered version folder (1/, 2/, ...)"
        )
        return FailedPrecondition(
            f"index {self.name!r} has no version to serve: {source.name} is neither an artifact "
            f"(with {artifact.MANIFEST}) nor a directory of numbered versions: {why}",
            field="index",
        )

    def problem(self) -> str:
        """Why no version is active, or "" when one is."""
        with self._lock:
            return "" if self._active is not None else self._why_not_serving(0).message

    def _loaded_versions(self) -> str:
        return ", ".join(str(v) for v, s in sorted(self._slots.items()) if s.loaded is not None)

    def _close(self, loaded: LoadedVersion) -> None:
        loaded.index.backend.close()
        self._budget.release(loaded.nbytes)

    # -- what the control plane reads --------------------------------------------------

    @property
    def active(self) -> VersionSlot | None:
        return self._active

    def slots(self) -> list[VersionSlot]:
        with self._lock:
            return sorted(self._slots.values(), key=lambda s: -s.version)

    def slot(self, version: int) -> VersionSlot:
        with self._lock:
            found = self._slots.get(version)
        if found is None:
            raise NotFound(f"index {self.name!r} has no version {version}", field="version")
        return found

    def _states(self) -> dict[int, State]:
        with self._lock:
            return {v: s.state for v, s in self._slots.items()}
