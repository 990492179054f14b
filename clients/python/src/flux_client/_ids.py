"""The hash by which ``Filter.exclude_id_hashes`` names ids: 64-bit FNV-1a over each id's UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

_OFFSET = np.uint64(0xCBF29CE484222325)
_PRIME = np.uint64(0x100000001B3)


def id_hashes(ids: Iterable[str]) -> npt.NDArray[np.uint64]:
    """Each id's hash, in order, for ``Filter(exclude_id_hashes=...)``.

    A long exclusion list (what the user already played) costs both sides less as hashes than as
    strings: hash it once where the list is kept, and send the hashes with every query. Ids of one
    byte length are hashed together, one numpy pass per byte.
    """
    encoded = [item_id.encode() for item_id in ids]
    rows_by_length: dict[int, list[int]] = {}
    for row, raw in enumerate(encoded):
        rows_by_length.setdefault(len(raw), []).append(row)
    out = np.empty(len(encoded), np.uint64)
    for length, rows in rows_by_length.items():
        hashes = np.full(len(rows), _OFFSET, np.uint64)
        if length:
            data = np.frombuffer(b"".join([encoded[row] for row in rows]), np.uint8).reshape(len(rows), length)
            for column in data.T:
                hashes = (hashes ^ column) * _PRIME
        out[rows] = hashes
    return out
