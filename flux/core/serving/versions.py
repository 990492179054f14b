"""What should be served: the versions a source offers, and the pure policy that picks among them.

In the spirit of TensorFlow Serving's aspired versions: ``scan`` says which versions
exist, ``plan`` (stateless, idempotent) says what the next steps are, and the manager
carries them out. Keeping the decision pure makes it a table of cases to test.

A source is a directory with one artifact per version, each named by its number::

    tracks/1/manifest.json ...
    tracks/2/manifest.json ...

A folder's number must be the version its manifest names (the manager refuses it otherwise).
Entries named ``.<name>.<random>`` are staging, the folders ``flux build`` and snapshots write
before their rename; any other entry that is not a number is no version: it is left alone and
named once in the log.

A path that is itself an artifact (it holds manifest.json) is a source of one version,
the one its manifest names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from flux_core.errors import ArtifactError
from flux_core.storage import artifact


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
    """Every version the source at ``path`` offers, by number: the numbered folders that hold a manifest."""
    if (path / artifact.MANIFEST).is_file():
        try:
            return {artifact.read_manifest(path).version: path}
        except ArtifactError:
            return {0: path}  # unreadable: offered anyway, so that loading it reports why
    return {v: p for v, p in folders(path).items() if (p / artifact.MANIFEST).is_file()}


def folders(path: Path) -> dict[int, Path]:
    """The numbered folders of the source directory ``path``, with or without a manifest."""
    if not path.is_dir() or (path / artifact.MANIFEST).is_file():
        return {}
    return {int(p.name): p for p in path.iterdir() if is_version_name(p.name) and p.is_dir()}


#: What ``flux build`` and snapshots write a version into before renaming it: ``.<name>.<random>``.
_STAGING = re.compile(r"^\.[^.]+\.")


def strays(path: Path) -> list[Path]:
    """Entries of the source directory ``path`` that are neither a version folder nor a staging folder."""
    if not path.is_dir() or (path / artifact.MANIFEST).is_file():
        return []
    return sorted(p for p in path.iterdir() if not _STAGING.match(p.name) and not is_version_name(p.name))


def is_version_name(name: str) -> bool:
    """A version folder's name: a whole number in ASCII digits, without leading zeros (``01`` would be ``1`` twice)."""
    return name.isascii() and name.isdigit() and name == str(int(name))


def plan(available: set[int], states: dict[int, State], policy: Policy, pinned: int | None = None) -> list[Step]:
    """The next steps toward serving what ``policy`` (or ``pinned``) asks, given the current states.

    Availability first: a new version is loaded while the old one keeps serving, becomes
    active once READY, and only then are the versions it replaces unloaded (a load that then
    fails takes nothing away). The version that is to answer is loaded and activated before
    older versions the policy keeps are loaded again. Failed versions are never retried here
    (an operator can ask for them explicitly). While the newest loads, a ready version newer
    than the active one answers meanwhile. A pin changes which version answers, not how many
    stay loaded: the pinned version takes the place of the oldest one the policy keeps.
    The manager takes the first step and plans again, so each step sees what the last one did.
    """
    usable = {v for v in available | set(states) if states.get(v) is not State.FAILED}
    target: int | None
    if policy.kind == "specific":
        wanted = usable & set(policy.versions)
        target = max(wanted, default=None)
    else:
        newest = sorted(usable & available, reverse=True)
        wanted = set(newest[: policy.keep])
        target = newest[0] if newest else None
    if pinned is not None:
        if policy.kind != "specific":
            wanted = set(sorted(wanted - {pinned}, reverse=True)[: policy.keep - 1])
        wanted, target = wanted | {pinned}, pinned
    active = next((v for v, s in states.items() if s is State.ACTIVE), None)
    steps = []
    if (
        pinned is None
        and target is not None
        and states.get(target, State.AVAILABLE) in (State.AVAILABLE, State.LOADING)
    ):
        # While the newest loads, a newer version than the active one that is ready answers meanwhile.
        ready = [v for v in wanted if states.get(v) is State.READY and (active is None or v > active)]
        if ready:
            steps.append(Step("activate", max(ready)))
            active = max(ready)
    loads = [v for v in sorted(wanted, reverse=True) if states.get(v, State.AVAILABLE) is State.AVAILABLE]
    if target in loads:
        steps.append(Step("load", target))
    if target is not None and target != active and states.get(target) is State.READY:
        steps.append(Step("activate", target))
        active = target
    steps += [Step("load", v) for v in loads if v != target]
    if target is None or target == active:
        steps += [
            Step("unload", v)
            for v, s in sorted(states.items())
            if s in (State.READY, State.ACTIVE) and v != active and v not in wanted
        ]
    return steps
