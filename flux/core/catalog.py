"""The catalog: every configured index by name, with its state (loading, serving, failed).

One index failing to load never stops the others: its slot records why, and its
queries get FAILED_PRECONDITION with that reason while the rest keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from flux.config import IndexConfig
from flux.core import artifact
from flux.core.index import Limits, ServedIndex
from flux.errors import ArtifactError, FailedPrecondition, FluxError, IndexNotFound, Unavailable

log = logging.getLogger(__name__)


class IndexState(Enum):
    LOADING = "loading"
    SERVING = "serving"
    FAILED = "failed"


@dataclass
class Slot:
    """One configured index and what became of it."""

    config: IndexConfig
    state: IndexState = IndexState.LOADING
    index: ServedIndex | None = None
    error: str = ""
    load_seconds: float = 0.0


#: Called with (name, state) whenever an index changes state; health reporting hooks in here.
Listener = Callable[[str, IndexState], None]


class Catalog:
    """Holds the served indexes. Reads are lock-free: a slot's index is swapped by assignment."""

    def __init__(self, indexes: list[IndexConfig], *, limits: Limits = Limits(), batch_threads: int = 1) -> None:
        self._slots = {c.name: Slot(c) for c in indexes}
        self._limits = limits
        self._batch_threads = batch_threads
        self._listeners: list[Listener] = []
        self.loaded = threading.Event()  # set once every index has been tried

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def names(self) -> list[str]:
        return sorted(self._slots)

    def slot(self, name: str) -> Slot:
        try:
            return self._slots[name]
        except KeyError:
            known = ", ".join(sorted(self._slots)) or "none"
            raise IndexNotFound(f"no index named {name!r} (indexes: {known})", field="index") from None

    def get(self, name: str) -> ServedIndex:
        """The index to answer a query with, or the error that explains why there is none."""
        slot = self.slot(name)
        index = slot.index
        if index is not None:
            return index
        if slot.state is IndexState.FAILED:
            raise FailedPrecondition(f"index {name!r} failed to load: {slot.error}", field="index")
        raise Unavailable(f"index {name!r} is still loading; retry shortly", field="index")

    def load_all(self) -> None:
        """Load every index in turn; failures are recorded, never raised."""
        try:
            for name in self.names():
                self._load(self._slots[name])
        finally:
            self.loaded.set()

    def _load(self, slot: Slot) -> None:
        config = slot.config
        started = time.perf_counter()
        try:
            loaded = artifact.load(config.path)
            _check_expectations(config, loaded.manifest)
            slot.index = ServedIndex(
                config.name,
                loaded,
                default_params=config.search_params,
                limits=self._limits,
                batch_threads=self._batch_threads,
            )
        except FluxError as exc:
            self._fail(slot, exc.message)
        except Exception as exc:  # a backend bug must not take the other indexes down
            log.exception("index %r: unexpected error while loading %s", config.name, config.path)
            self._fail(slot, f"unexpected error: {exc!r}")
        else:
            slot.state, slot.error = IndexState.SERVING, ""
            slot.load_seconds = time.perf_counter() - started
            log.info(
                "index %r: serving version %d (%s, %d items) after %.2fs",
                config.name,
                slot.index.version,
                slot.index.manifest.backend,
                slot.index.manifest.count,
                slot.load_seconds,
            )
            self._notify(config.name, slot.state)

    def _fail(self, slot: Slot, reason: str) -> None:
        slot.state, slot.error = IndexState.FAILED, reason
        log.error("index %r: not served: %s", slot.config.name, reason)
        self._notify(slot.config.name, slot.state)

    def _notify(self, name: str, state: IndexState) -> None:
        for listener in self._listeners:
            listener(name, state)


def _check_expectations(config: IndexConfig, manifest: artifact.Manifest) -> None:
    expected = {"backend": config.backend, "dimension": config.dimension, "metric": config.metric}
    actual = {"backend": manifest.backend, "dimension": manifest.dimension, "metric": manifest.metric}
    for key, want in expected.items():
        if want is not None and want != actual[key]:
            raise ArtifactError(
                f"{config.path / artifact.MANIFEST}: {key} is {_show(actual[key])}, "
                f"but the config expects {_show(want)} for index {config.name!r}"
            )


def _show(value: object) -> str:
    return repr(getattr(value, "value", value))
