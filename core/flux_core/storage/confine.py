"""Keeping index paths inside the data root: no ``..`` and no symlink may lead out of it.

Paths are compared after every symlink is resolved, so a version directory or an
artifact file that is a link to somewhere else is caught as surely as a ``../``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flux_core.errors import ArtifactError

log = logging.getLogger(__name__)


def escape(path: Path, root: Path) -> Path | None:
    """Where ``path`` really leads when that is outside ``root``; None when it stays inside."""
    real = path.resolve()
    return None if real.is_relative_to(root.resolve()) else real


def check_artifact(directory: Path, root: Path | None) -> None:
    """Refuse (ArtifactError) an artifact directory or any entry in it that leads out of ``root``.

    The error names the entry relative to the artifact, since it may reach clients; the log
    names the full paths, for the operator.
    """
    if root is None:
        return
    for path in (directory, *sorted(directory.rglob("*"))):
        what = "the version directory" if path == directory else f"{path.relative_to(directory)}:"
        try:
            real = escape(path, root)
        except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable directory
            log.warning("%s: cannot be resolved (%s); refused", path, exc)
            raise ArtifactError(f"{what} cannot be resolved; refused") from None
        if real is not None:
            log.warning("%s: resolves to %s, outside the data root %s; refused", path, real, root)
            raise ArtifactError(f"{what} leads outside the data root; refused")
