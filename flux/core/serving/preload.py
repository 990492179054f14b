"""Versions loaded once, before the worker processes are forked, so that the workers share their memory.

An hnswlib (or faiss) index lives in memory of its own, not in a mapped file, so each worker
process that loaded it would hold a copy. With ``server.workers`` above 1, the supervising
process loads the versions each index starts with (``load``), then forks the workers: they
begin with those artifacts in pages shared copy-on-write, which searching only reads. A
worker's manager takes its preloaded artifact (``take``) instead of reading the files again,
and still runs every check and the activation gate on it. A version loaded later (a hot swap)
is loaded by each worker on its own; once the old version is released, only the new one's
copies remain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from flux.core.serving import versions
from flux.core.serving.index_settings import IndexSettings
from flux.core.serving.versions import State
from flux_core.errors import FluxError
from flux_core.storage import artifact

log = logging.getLogger(__name__)

_loaded: dict[Path, artifact.Artifact] = {}


def load(indexes: Sequence[IndexSettings]) -> int:
    """Load the versions each index's policy starts with; returns how many loaded.

    A version that fails is left for the workers, which refuse it as usual and report why.
    """
    for settings in indexes:
        for version, path in _starting_versions(settings).items():
            started = time.perf_counter()
            try:
                manifest = settings.check_version(path, version)
                loaded = artifact.load(path)
                settings.check_expectations(loaded.manifest)
            except FluxError as exc:
                log.warning("index %r: version %d not preloaded, the workers will load it: %s",
                            settings.name, version, exc.message)  # fmt: skip
                continue
            if loaded.manifest != manifest:  # replaced while it loaded
                loaded.backend.close()
                continue
            _loaded[path] = loaded
            log.info("index %r: version %d loaded for the workers to share (%.2fs)",
                     settings.name, version, time.perf_counter() - started)  # fmt: skip
    return len(_loaded)


def take(path: Path, manifest: artifact.Manifest) -> artifact.Artifact | None:
    """The artifact preloaded from ``path``, if it still has this manifest; each is taken once."""
    loaded = _loaded.pop(path, None)
    if loaded is not None and loaded.manifest != manifest:
        loaded.backend.close()
        return None
    return loaded


def forget() -> None:
    """Drop what nobody took: in the supervisor once the workers are forked (their copies stay
    shared among them), in a worker once its indexes are loaded."""
    _loaded.clear()


def _starting_versions(settings: IndexSettings) -> dict[int, Path]:
    """The versions a manager starting now would load: the policy's plan, played out as if each load succeeded."""
    available = versions.scan(settings.source)
    states: dict[int, State] = {}
    for _ in range(64):
        steps = versions.plan(set(available), states, settings.policy)
        if not steps:
            break
        step = steps[0]
        if step.action == "load":
            states[step.version] = State.READY
        elif step.action == "activate":
            states = {v: State.READY if s is State.ACTIVE else s for v, s in states.items()}
            states[step.version] = State.ACTIVE
        else:
            states.pop(step.version, None)
    return {v: available[v] for v in sorted(states) if v in available}
