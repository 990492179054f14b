"""What should be served: the versions a source offers, and the pure policy that picks among them.

In the spirit of TensorFlow Serving's aspired versions: ``scan`` says which versions
exist, ``plan`` (stateless, idempotent) says what the next steps are, and the manager
carries them out. Keeping the decision pure makes it a table of cases to test.

A source is a directory with one artifact per version, each named by its number::

    tracks/1/manifest.json ...
    tracks/2/manifest.json ...

A path that is itself an artifact (it holds manifest.json) is a source of one version,
the one its manifest names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from flux.core import artifact
from flux.errors import ArtifactError


class State(Enum):
    """Where one version is. The proto's VersionState mirrors it."""

    AVAILABLE = "available"
    LOADING = "loading"
    READY = "ready"
    ACTIVE = "active"
    FAILED = "failed"


@dataclass(frozen=True)
class Policy:
    """Which versions to serve: the newest (keeping ``keep`` loaded), or an explicit list."""

    kind: str = "latest"  # "latest" or "specific"
    keep: int = 1  # latest: how many of the newest versions stay loaded (the newest is active)
    versions: tuple[int, ...] = ()  # specific: load these; the newest of them is active

    def describe(self) -> str:
        if self.kind == "specific":
            return f"specific {list(self.versions)}"
        return "latest" if self.keep == 1 else f"latest (keep {self.keep})"


@dataclass(frozen=True)
class Step:
    """One thing for the manager to do."""

    action: str  # "load", "activate" or "unload"
    version: int


def scan(path: Path) -> dict[int, Path]:
    """Every version the source at ``path`` offers, by number. Staging and other entries are ignored."""
    if (path / artifact.MANIFEST).is_file():
        try:
            return {artifact.read_manifest(path).version: path}
        except ArtifactError:
            return {0: path}  # unreadable: offered anyway, so that loading it reports why
    if not path.is_dir():
        return {}
    return {int(p.name): p for p in path.iterdir() if p.name.isdigit() and (p / artifact.MANIFEST).is_file()}


def plan(available: set[int], states: dict[int, State], policy: Policy, pinned: int | None = None) -> list[Step]:
    """The next steps toward serving what ``policy`` (or ``pinned``) asks, given the current states.

    Availability first: a new version is loaded while the old one keeps serving, becomes
    active once READY, and only then is the old one unloaded. Failed versions are never
    retried here (an operator can ask for them explicitly).
    """
    usable = {v for v in available | set(states) if states.get(v) is not State.FAILED}
    target: int | None
    if pinned is not None:
        wanted, target = {pinned}, pinned
    elif policy.kind == "specific":
        wanted = usable & set(policy.versions)
        target = max(wanted, default=None)
    else:
        newest = sorted(usable & available, reverse=True)
        wanted = set(newest[: policy.keep])
        target = newest[0] if newest else None
    active = next((v for v, s in states.items() if s is State.ACTIVE), None)
    steps = [Step("load", v) for v in sorted(wanted, reverse=True) if states.get(v, State.AVAILABLE) is State.AVAILABLE]
    if target is not None and target != active and states.get(target) is State.READY:
        steps.append(Step("activate", target))
        active = target
    steps += [
        Step("unload", v)
        for v, s in sorted(states.items())
        if s in (State.READY, State.ACTIVE) and v != active and v not in wanted
    ]
    return steps
