"""Beam's filesystems as the build and publishing steps use them, alike on a local disk and an object store:
files written and read as they are (never compressed for their suffix), matched, sized, and removed.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

RAW = CompressionTypes.UNCOMPRESSED  # never let a file's suffix (.gz, .zst) make Beam compress it


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=RAW) as fh:
        return bytes(fh.read()).decode("utf-8")


def files_under(folder: str) -> list[Any]:
    return list(FileSystems.match([FileSystems.join(folder, "**")])[0].metadata_list)


def has_size(path: str, size: int) -> bool:
    found = FileSystems.match([path])[0].metadata_list
    return len(found) == 1 and found[0].size_in_bytes == size


def is_local(path: str) -> bool:
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)


def make_dirs(folder: str) -> None:
    """Create ``folder`` where the filesystem has folders (local disks); object stores need none."""
    if is_local(folder):
        os.makedirs(folder, exist_ok=True)


def remove_tree(folder: str) -> None:
    files = [m.path for m in files_under(folder)]
    if files:
        FileSystems.delete(files)
    if is_local(folder) and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)  # the emptied folders; object stores have none
