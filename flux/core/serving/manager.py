"""Carries out version steps for one index: load, gate, swap, release. Requests never wait on a load.

The manager follows the policy (``flux.core.serving.versions``) over what the source holds, and
carries out the control plane's operations (load, activate, pin, roll back, unload, publish).
What requests and the control plane read, the versions and the one that answers, is the table it
builds on (``flux.core.serving.version_table``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from flux import metrics
from flux.core.serving import gate, preload, versions
from flux.core.serving.budget import MemoryBudget
from flux.core.serving.index import Limits, ServedIndex
from flux.core.serving.index_settings import IndexSettings
from flux.core.serving.version_table import LoadedVersion, VersionSlot, VersionTable
from flux.core.serving.versions import State
from flux_core.errors import FailedPrecondition, FluxError, NotFound, Reason, ResourceExhausted, Unavailable
from flux_core.storage import artifact
from flux_core.storage.background import Pacer
from flux_core.storage.heap import release_free_memory

log = logging.getLogger(__name__)

#: Steps one refresh may take; each re-plans from what the last one did, so a settled index takes none.
_MAX_STEPS = 64
#: A numbered folder without manifest.json is reported (FAILED) once nothing in it has changed for
#: this long: a publisher that copies rather than renames is still writing it until then.
UNFINISHED_SECONDS = 2.0


#: Called with (index name, serving?) whenever an index gains or loses its active version.
Listener = Callable[[str, bool], None]


class VersionHooks:
    """What a writable index adds to the version steps (``flux.core.writes.writer.Writer``); by default, nothing."""

    def loaded(self, index: ServedIndex) -> None:
        """A version has loaded and passed its gate: bring it up to date; raise FluxError to refuse it."""

    def activating(self, index: ServedIndex) -> AbstractContextManager[object]:
        """Held around the swap that makes ``index`` the active version."""
        return nullcontext()


class IndexManager(VersionTable):
    """Changes the table of one index's versions: the policy's steps, and the control plane's operations."""

    def __init__(
        self,
        settings: IndexSettings,
        *,
        limits: Limits = Limits(),
        batch_threads: int = 1,
        budget: MemoryBudget | None = None,
        listener: Listener | None = None,
        swap_cpu_share: float = 1.0,
    ) -> None:
        super().__init__(settings, budget or MemoryBudget())
        self._limits = limits
        self._batch_threads = batch_threads
        self._swap_cpu_share = swap_cpu_share
        self._listener = listener
        self._strays: set[str] = set()  # entries of the source that are no version, already logged
        self.pinned: int | None = None
        self._ops = threading.RLock()  # serialises loads, swaps and unloads: held for long work
        self._closed = False
        self._behind = False  # a background refresh was asked for and has not started yet
        self._refresher: threading.Thread | None = None
        self.hooks = VersionHooks()  # a Writer replaces them when the index takes writes

    # -- background reconciliation ---------------------------------------------------

    def refresh(self) -> None:
        """Look at the source again and take the policy's next steps. Never raises."""
        self._settle(loads=True)

    def refresh_in_background(self) -> None:
        """Take the policy's next steps in a thread of the index's own; returns at once."""
        with self._lock:
            self._behind = True
            if self._closed or self._refresher is not None:
                return  # the running one refreshes again before it ends
            self._refresher = threading.Thread(target=self._catch_up, name=f"flux-versions-{self.name}", daemon=True)
            self._refresher.start()

    def _catch_up(self) -> None:
        while True:
            with self._lock:
                if not self._behind or self._closed:
                    self._refresher = None
                    return
                self._behind = False
            self.refresh()

    def _settle(self, *, loads: bool) -> bool:
        """Take the policy's steps one at a time, planning again after each (a load that fails
        changes what comes next); without ``loads``, only swaps and unloads. True when loads
        were left to do. Never raises."""
        with self._ops:
            try:
                self.refresh_source()
                for _ in range(_MAX_STEPS):
                    if self._closed:
                        return False
                    steps = versions.plan(self._available(), self._states(), self.settings.policy, self.pinned)
                    now = [step for step in steps if loads or step.action != "load"]
                    if not now:
                        return bool(steps)
                    self._do(now[0])
                log.warning("index %r: versions not settled after %d steps", self.name, _MAX_STEPS)
            except FluxError as exc:  # recorded on the version already (a memory refusal, say)
                log.warning("index %r: %s", self.name, exc.message)
            except Exception:  # the poller must outlive any one failure
                log.exception("index %r: refreshing versions failed", self.name)
            return False

    def refresh_source(self) -> None:
        """Record versions that appeared in the source, without acting on them.

        A numbered folder without manifest.json is recorded FAILED, with the missing file as
        its reason, once it has not changed for ``UNFINISHED_SECONDS`` (at once on the first
        look); it is tried again when the manifest appears.
        """
        source = self.settings.source
        found = versions.scan(source)
        unfinished = {v: p for v, p in versions.folders(source).items() if v not in found}
        strays = [p for p in versions.strays(source) if p.name not in self._strays]
        with self._lock:
            for version, path in found.items():
                slot = self._slots.get(version)
                if slot is None:
                    self._slots[version] = VersionSlot(version, path)
                    log.info("index %r: found version %d at %s", self.name, version, path)
                elif slot.unfinished and slot.state is State.FAILED:
                    slot.state, slot.error, slot.unfinished = State.AVAILABLE, "", False
                    log.info("index %r: version %d has its %s now", self.name, version, artifact.MANIFEST)
            for version, path in unfinished.items():
                if version not in self._slots and (not self._scanned or _quiet_for(path) >= UNFINISHED_SECONDS):
                    reason = (
                        f"{path.name}/{artifact.MANIFEST}: missing; a version folder holds a whole artifact "
                        "as `flux build` writes it (build it elsewhere, then rename it into place)"
                    )
                    self._slots[version] = VersionSlot(version, path, State.FAILED, reason, unfinished=True)
                    metrics.VERSION_TRANSITIONS.labels(self.name, State.FAILED.value, "artifact").inc()
                    log.error("index %r: version %d refused: %s", self.name, version, reason)
            self._scanned = True
            self._strays.update(p.name for p in strays)
        for path in strays:
            log.warning("index %r: %s is not a version folder (a whole number, such as 42); ignored", self.name, path)

    def _available(self) -> set[int]:
        return set(versions.scan(self.settings.source))

    def _do(self, step: versions.Step) -> None:
        slot = self._slots[step.version]
        if step.action == "load":
            self._load(slot)
        elif step.action == "activate":
            self._activate(slot)
        else:
            self._unload(slot)

    # -- operations (also called by the control plane) ----------------------------------

    def load(self, version: int) -> VersionSlot:
        """Load (and gate) a version without activating it; a failed version is tried again."""
        with self._ops:
            self.refresh_source()
            slot = self.slot(version)
            if slot.state in (State.AVAILABLE, State.FAILED):
                self._load(slot)
            self._raise_if_failed(slot)
            return slot

    def activate(self, version: int) -> VersionSlot:
        """Load if needed, then make ``version`` the one that answers queries."""
        with self._ops:
            slot = self.load(version)
            if slot.state is State.READY:
                self._activate(slot)
            return slot

    def pin(self, version: int | None) -> VersionSlot | None:
        """Hold ``version`` active whatever the policy says; None gives control back to the policy.

        Returns once the pinned version answers (unpinned: once the policy's version answers,
        when it is loaded); the loads the policy asks for besides run in the background.
        """
        with self._ops:
            if version is None:
                self.pinned = None
                log.info("index %r: unpinned; the %s policy decides", self.name, self.settings.policy.describe())
                slot = None
            else:
                slot = self.activate(version)
                self.pinned = version
                log.info("index %r: pinned version %d", self.name, version)
            if self._settle(loads=False):
                self.refresh_in_background()
            return slot

    def rollback(self) -> tuple[int, VersionSlot]:
        """Pin the newest version older than the active one that has not failed."""
        with self._ops:
            self.refresh_source()
            current = self._active.version if self._active else None
            if current is None:
                raise FailedPrecondition(
                    f"index {self.name!r} has no active version to roll back from", reason=Reason.NO_ROLLBACK_TARGET
                )
            older = [s for s in self.slots() if s.version < current and s.state is not State.FAILED]
            if not older:
                raise FailedPrecondition(
                    f"index {self.name!r} has no version older than {current} to roll back to",
                    reason=Reason.NO_ROLLBACK_TARGET,
                )
            target = older[0]
            slot = self.pin(target.version)
            assert slot is not None
            metrics.VERSION_TRANSITIONS.labels(self.name, "rollback", "").inc()
            log.warning("index %r: rolled back from version %d to %d", self.name, current, target.version)
            return current, slot

    def unload(self, version: int) -> VersionSlot:
        with self._ops:
            slot = self.slot(version)
            if slot is self._active:
                raise FailedPrecondition(
                    f"version {version} of index {self.name!r} is active; activate another version first",
                    field="version",
                )
            if slot.loaded is None:
                raise NotFound(f"version {version} of index {self.name!r} is not loaded", field="version")
            self._unload(slot)
            return slot

    def publish(self, write: Callable[[Path, int], artifact.Manifest]) -> VersionSlot:
        """Save the active in-memory index as the next version and serve it as that version, without a reload.

        For writable indexes, whose active index changes in memory (``flux.core.writes.writer``):
        ``write(path, version)`` saves it there (a snapshot). The new version's slot takes over
        the loaded index and its requests in flight; the old version stays on disk, unloaded.
        Holding the operations lock keeps the poller from loading the new directory as a second copy.
        """
        with self._ops:
            current = self._active
            if current is None or current.loaded is None:
                raise Unavailable(f"index {self.name!r} has no active version to publish", field="index")
            self.refresh_source()
            version = max(self._slots) + 1
            path = self.settings.source / str(version)
            manifest = write(path, version)
            with self._lock:
                slot = VersionSlot(version, path, State.ACTIVE, artifact_bytes=artifact.size_bytes(manifest))
                slot.loaded, current.loaded, current.state = current.loaded, None, State.AVAILABLE
                self._slots[version] = slot
                self._active = slot
                if self.pinned == current.version:
                    self.pinned = version  # a pin holds the in-memory index, whatever its number
            self._transition(slot, "published")
            metrics.INDEX_VERSION.labels(self.name).set(version)
            log.info("index %r: published version %d from memory (was version %d)", self.name, version, current.version)
            return slot

    def close(self) -> None:
        """Release every loaded version (server shutdown); a refresh under way stops after its current step."""
        with self._lock:
            self._closed = True
        with self._ops:
            for slot in self.slots():
                if slot.loaded is not None:
                    self._unload(slot)

    # -- the steps themselves ---------------------------------------------------------------

    def _load(self, slot: VersionSlot) -> None:
        try:
            self._load_checked(slot)
        finally:
            release_free_memory()  # what the load's parsing and reading left behind in the heap

    def _serving(self) -> Callable[[], bool]:
        """Whether the index answered a request since the last time it was asked, or is answering one
        (a moment without a request in flight says little about a busy server)."""
        seen = self.requests

        def busy() -> bool:
            nonlocal seen
            answered, seen = self.requests != seen, self.requests
            return answered or any(slot.in_flight for slot in list(self._slots.values()))

        return busy

    def _load_checked(self, slot: VersionSlot) -> None:
        started = time.perf_counter()
        with self._lock:
            slot.state, slot.error, slot.report = State.LOADING, "", None
        self._transition(slot, "")
        reserved = 0
        try:
            manifest = self.settings.check_version(slot.path, slot.version)
            slot.artifact_bytes = artifact.size_bytes(manifest)
            self._budget.reserve(slot.artifact_bytes, f"version {slot.version} of index {self.name!r}")
            reserved = slot.artifact_bytes
            # A version readied while another serves is paced, so that the requests keep their CPU and GIL.
            paced = self._active is not None and self._swap_cpu_share < 1
            pacer = Pacer(self._swap_cpu_share, self._serving()) if paced else None
            loaded = preload.take(slot.path, manifest) or artifact.load(slot.path, pacer)
            self.settings.check_expectations(loaded.manifest)
            index = ServedIndex(
                self.name,
                loaded,
                default_params=self.settings.search_params,
                limits=self._limits,
                batch_threads=self._batch_threads,
            )
            with self.acquire() if self._active is not None else _nothing() as current:
                report = gate.run(index, current, self.settings.gate, pacer)
                if report.passed and current is not None:  # the tables queries excluding ids needed there
                    index.ids.prepare_lookups(like=current.ids)
            if report.passed:
                self.hooks.loaded(index)  # a writable index replays its log here
        except ResourceExhausted as exc:
            self._fail(slot, exc.message, "memory", started)
            raise
        except FluxError as exc:
            self._budget.release(reserved)
            self._fail(slot, exc.message, "artifact", started)
            return
        except Exception as exc:  # a backend bug must not take the manager down
            self._budget.release(reserved)
            log.exception("index %r: version %d failed unexpectedly", self.name, slot.version)
            self._fail(slot, f"unexpected error: {exc!r}", "error", started)
            return
        slot.report = report
        if not report.passed:
            index.backend.close()
            self._budget.release(reserved)
            self._fail(slot, f"activation gate: {report.reason}", "gate", started)
            return
        with self._lock:
            slot.loaded = LoadedVersion(index, reserved)
            slot.state = State.READY
            slot.load_seconds = time.perf_counter() - started
        metrics.VERSION_LOAD_SECONDS.labels(self.name).observe(slot.load_seconds)
        self._transition(slot, "")
        log.info(
            "index %r: version %d ready after %.2fs (%s, %d items; gate %.2fs%s)",
            self.name,
            slot.version,
            slot.load_seconds,
            loaded.manifest.backend,
            loaded.manifest.count,
            report.seconds,
            f", recall@{report.k} {report.recall:.3f} ({report.truth} neighbours), "
            f"overlap@{report.k} {report.overlap:.3f}"
            if report.canary_queries
            else "",
        )

    def _activate(self, slot: VersionSlot) -> None:
        assert slot.loaded is not None
        started = time.perf_counter()
        with self.hooks.activating(slot.loaded.index), self._lock:
            previous = self._active
            if previous is not None:
                previous.state = State.READY
            slot.state = State.ACTIVE
            self._active = slot
        metrics.VERSION_SWAP_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        self._transition(slot, "")
        metrics.INDEX_VERSION.labels(self.name).set(slot.version)
        if previous is None:
            log.info("index %r: serving version %d", self.name, slot.version)
            if self._listener:
                self._listener(self.name, True)
        else:
            log.info("index %r: swapped version %d for %d", self.name, slot.version, previous.version)

    def _unload(self, slot: VersionSlot) -> None:
        with self._lock:
            loaded, slot.loaded = slot.loaded, None
            slot.state = State.AVAILABLE
            if loaded is None:
                return
            loaded.retired = True
            close = loaded.in_flight == 0
        self._transition(slot, "unloaded")
        log.info("index %r: unloaded version %d", self.name, slot.version)
        if close:
            self._close(loaded)

    def _fail(self, slot: VersionSlot, reason: str, kind: str, started: float) -> None:
        with self._lock:
            slot.state, slot.error = State.FAILED, reason
            slot.load_seconds = time.perf_counter() - started
        self._transition(slot, kind)
        log.error("index %r: version %d refused: %s", self.name, slot.version, reason)

    def _transition(self, slot: VersionSlot, reason: str) -> None:
        metrics.VERSION_TRANSITIONS.labels(self.name, slot.state.value, reason).inc()

    def _raise_if_failed(self, slot: VersionSlot) -> None:
        if slot.state is State.FAILED:
            raise FailedPrecondition(
                f"version {slot.version} of index {self.name!r} failed: {slot.error}", reason=Reason.VERSION_FAILED
            )


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _quiet_for(folder: Path) -> float:
    """Seconds since ``folder`` or a file in it last changed (0 when it cannot be read)."""
    try:
        changed = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except OSError:
        return 0.0
    return time.time() - changed
