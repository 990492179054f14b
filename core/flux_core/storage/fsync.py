"""fsync of a file or a directory by path: what makes a written file, or a name created or
removed in a directory, survive a power cut (artifacts and the write-ahead log both need it)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
