"""The writes a log records (an upsert of items, a delete of ids) and their payload bytes.

Payload layout, little-endian::

    upsert: b"U" | u32 length of meta | meta | rows x dimension float32 values, row-major
    delete: b"D" | u32 length of meta | meta

``meta`` is UTF-8 JSON: ``{"ids": [...]}``, and for an upsert also ``"dimension"`` and, when
the request gave attributes, ``"attributes"``: per id, ``{"restricts": {namespace: [token,
...]}, "crowding_tag": tag}``. Vectors stay raw bytes, so a batch costs one copy to log.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flux_core.backend import Matrix
from flux_core.storage.attributes import ItemAttributes

_LENGTH = struct.Struct("<I")
_F32 = np.dtype("<f4")


@dataclass(frozen=True)
class Upsert:
    """Insert or replace items: vector and attributes both (an item given no attributes has none)."""

    ids: Sequence[str]
    vectors: Matrix  # one row per id
    attributes: Sequence[ItemAttributes] | None = None  # one per id, or None when the request gave none


@dataclass(frozen=True)
class Delete:
    """Remove items; ids the index does not hold are skipped."""

    ids: Sequence[str]


Op = Upsert | Delete


def encode(op: Op) -> bytes:
    if isinstance(op, Delete):
        return b"D" + _framed({"ids": list(op.ids)})
    meta: dict[str, Any] = {"ids": list(op.ids), "dimension": int(op.vectors.shape[1])}
    if op.attributes is not None:
        meta["attributes"] = [
            {"restricts": {ns: list(tokens) for ns, tokens in a.restricts.items()}, "crowding_tag": a.crowding_tag}
            for a in op.attributes
        ]
    return b"U" + _framed(meta) + np.ascontiguousarray(op.vectors, dtype=_F32).tobytes()


def decode(payload: bytes) -> Op:
    """The write a payload holds; ValueError when it is not one ``encode`` wrote."""
    kind = payload[:1]
    if kind not in (b"U", b"D") or len(payload) < 1 + _LENGTH.size:
        raise ValueError(f"unknown write kind {kind!r}")
    (length,) = _LENGTH.unpack_from(payload, 1)
    start = 1 + _LENGTH.size
    meta = json.loads(payload[start : start + length])
    ids = meta["ids"]
    if kind == b"D":
        return Delete(ids)
    dimension = int(meta["dimension"])
    vectors = np.frombuffer(payload, _F32, offset=start + length).reshape(-1, dimension)
    if len(vectors) != len(ids):
        raise ValueError(f"{len(vectors)} vectors for {len(ids)} ids")
    attributes = meta.get("attributes")
    if attributes is None:
        return Upsert(ids, vectors)
    items = [
        ItemAttributes({ns: tuple(tokens) for ns, tokens in a["restricts"].items()}, a["crowding_tag"])
        for a in attributes
    ]
    return Upsert(ids, vectors, items)


def _framed(meta: dict[str, Any]) -> bytes:
    data = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data
