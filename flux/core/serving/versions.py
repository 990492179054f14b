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

A version folder may also hold a **sharded version** (``flux_core.storage.sharded``): shard
artifacts and ``sharded.json``, which its builder writes last. It is a version like any other
here (found, numbered and published the same way, so a router can swap them); ``flux serve``
serves one artifact per version and refuses to load it (``check_servable``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from flux_core.errors import ArtifactError
from flux_core.storage import artifact, sharded


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
    """Every version the source at ``path`` offers, by number: the numbered folders that hold a
    manifest (an artifact's ``manifest.json`` or a sharded version's ``sharded.json``)."""
    if is_version(path):
        try:
            return {read_version(path): path}
        except ArtifactError:
            return {0: path}  # unreadable: offered anyway, so that loading it reports why
    return {v: p for v, p in folders(path).items() if is_version(p)}


def folders(path: Path) -> dict[int, Path]:
    """The numbered folders of the source directory ``path``, with or without a manifest."""
    if not path.is_dir() or is_version(path):
        return {}
    return {int(p.name): p for p in path.iterdir() if is_version_name(p.name) and p.is_dir()}


def is_version(path: Path) -> bool:
    """Whether ``path`` holds a whole version: an artifact or a sharded version."""
    return (path / artifact.MANIFEST).is_file() or sharded.is_sharded(path)


def is_sharded(path: Path) -> bool:
    """Whether the version at ``path`` is a sharded version (``sharded.json``), served by the router."""
    return sharded.is_sharded(path) and not (path / artifact.MANIFEST).is_file()


def read_version(path: Path) -> int:
    """The version number the manifest at ``path`` names (an artifact's or a sharded version's)."""
    if is_sharded(path):
        return sharded.read(path).version
    return artifact.read_manifest(path).version


def verify(path: Path, *, open_shards: bool = False) -> int:
    """Verify the version at ``path`` whatever its kind; return its item count. Raises ArtifactError.

    An artifact is verified and opened with its backend (``artifact.load``); a sharded version has
    every shard verified and its sharding checked (``sharded.verify``), each shard opened too with
    ``open_shards``.
    """
    if is_sharded(path):
        manifest = sharded.read(path)
        sharded.verify(path, manifest, open_shards=open_shards)
        return manifest.count
    loaded = artifact.load(path)
    loaded.backend.close()
    return loaded.manifest.count


def check_servable(path: Path) -> None:
    """Refuse (ArtifactError) a version that ``flux serve`` cannot serve itself: a sharded version."""
    if is_sharded(path):
        try:
            shards = f"{sharded.read(path).sharding.shards} shards"
        except ArtifactError:
            shards = "shards"
        raise ArtifactError(
            f"{sharded.MANIFEST}: this version is sharded ({shards}); flux serve serves one artifact per "
            "version, serve a sharded version through the router (docs/scale.md)"
        )


#: What ``flux build`` and snapshots write a version into before renaming it: ``.<name>.<random>``;
#: flux-beam stages a sharded version's shards in ``.<version>.sharded-<run>`` the same way.
_STAGING = re.compile(r"^\.[^.]+\.")


def strays(path: Path) -> list[Path]:
    """Entries of the source directory ``path`` that are neither a version folder nor a staging folder."""
    if not path.is_dir() or is_version(path):
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
