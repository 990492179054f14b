"""Keeping index paths inside the data root: no ``..`` and no symlink may lead out of it.

Paths are compared after every symlink is resolved, so a version directory or an
artifact file that is a link to somewhere else is caught as surely as a ``../``.
"""

from __future__ import annotations

from pathlib import Path

from flux.errors import ArtifactError


def escape(path: Path, root: Path) -> Path | None:
    """Where ``path`` really leads when that is outside ``root``; None when it stays inside."""
    real = path.resolve()
    return None if real.is_relative_to(root.resolve()) else real


def check_artifact(directory: Path, root: Path | None) -> None:
    """Refuse (ArtifactError, naming the path) an artifact directory or any entry in it that leads out of ``root``."""
    if root is None:
        return
    for path in (directory, *sorted(directory.rglob("*"))):
        real = escape(path, root)
        if real is not None:
            raise ArtifactError(f"{path}: resolves to {real}, outside the data root {root}; refused")
