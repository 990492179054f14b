"""Blocks of items: what travels between the pipeline's steps, thousands of items to an element.

One element per item would cost Beam's per-element overhead (a coder call, a function call) two
hundred thousand times for 200,000 vectors; a block of 8,192 items costs it once, and its vectors
stay one float32 matrix from the reader to the backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from flux_core.errors import InvalidArgument
from flux_core.storage.attributes import ItemAttributes
from flux_core.storage.sharded import key_text

Vectors = npt.NDArray[np.float32]


@dataclass
class Block:
    """Items: their ids, their vectors (row i is item i's), and optionally their attributes and shard keys."""

    ids: list[str]
    vectors: Vectors
    #: One per item when the input carries restricts or crowding tags, else None.
    attributes: list[ItemAttributes] | None = None
    #: One per item when sharding by a key column, else None (items are sharded by id).
    keys: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def shard_keys(self) -> list[str]:
        """What the sharding function hashes: the key column's values, or the ids."""
        return self.ids if self.keys is None else self.keys

    def take(self, rows: npt.NDArray[np.int64]) -> Block:
        """The items at ``rows``, in that order."""
        picked = rows.tolist()
        return Block(
            ids=[self.ids[r] for r in picked],
            vectors=np.ascontiguousarray(self.vectors[rows]),
            attributes=None if self.attributes is None else [self.attributes[r] for r in picked],
            keys=None if self.keys is None else [self.keys[r] for r in picked],
        )

    @staticmethod
    def concat(blocks: Sequence[Block], dimension: int) -> Block:
        """One block of every item of ``blocks``; items without attributes get none when others have some."""
        vectors = np.empty((sum(len(b) for b in blocks), dimension), np.float32)
        row = 0
        for block in blocks:
            vectors[row : row + len(block)] = block.vectors
            row += len(block)
        with_attributes = any(b.attributes is not None for b in blocks)
        with_keys = any(b.keys is not None for b in blocks)
        return Block(
            ids=[i for b in blocks for i in b.ids],
            vectors=vectors,
            attributes=[a for b in blocks for a in (b.attributes or [ItemAttributes()] * len(b))]
            if with_attributes
            else None,
            keys=[k for b in blocks for k in (b.keys or b.ids)] if with_keys else None,
        )


def checked_vectors(matrix: npt.NDArray[Any], where: str) -> Vectors:
    """``matrix`` as a C-contiguous float32 matrix, refusing NaN, Inf and any shape but 2-D."""
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise InvalidArgument(f"{where}: expected a 2-D numeric array, got {matrix.dtype} with shape {matrix.shape}")
    vectors = np.ascontiguousarray(matrix, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise InvalidArgument(f"{where}: row {int(np.argmin(finite))} contains NaN or Inf")
    return vectors


def attributes_of(restricts: object, crowding_tag: object, where: str) -> ItemAttributes:
    """An item's attributes from the values a file holds, as ``flux build`` takes them from .jsonl.

    ``restricts`` may be a mapping of namespace to tokens, a list of (namespace, tokens) pairs (a
    Parquet map column) or the JSON text of a mapping; None means none. Tokens and tags that are
    numbers or booleans are taken as their JSON text (docs/filters.md).
    """
    if isinstance(restricts, str):
        try:
            restricts = json.loads(restricts)
        except ValueError as exc:
            raise InvalidArgument(f"{where}: restricts is not JSON: {exc}") from None
    if restricts is None:
        pairs: list[tuple[str, list[str]]] = []
    elif isinstance(restricts, Mapping):
        pairs = [(str(ns), _tokens(tokens, where)) for ns, tokens in restricts.items() if tokens is not None]
    elif isinstance(restricts, list) and all(isinstance(p, tuple | list) and len(p) == 2 for p in restricts):
        pairs = [(str(ns), _tokens(tokens, where)) for ns, tokens in restricts]
    else:
        raise InvalidArgument(f"{where}: restricts must be an object of namespace: [tokens, ...]")
    tag = "" if crowding_tag is None else _text(crowding_tag, where)
    return ItemAttributes.create(pairs, tag, field=where)


def _tokens(tokens: object, where: str) -> list[str]:
    if not isinstance(tokens, list | tuple):
        raise InvalidArgument(f"{where}: restricts must be an object of namespace: [tokens, ...]")
    return [_text(token, where) for token in tokens]


def _text(value: object, where: str) -> str:
    try:
        return key_text(value)
    except InvalidArgument:
        raise InvalidArgument(
            f"{where}: a restrict token or crowding tag must be a string, number or boolean"
        ) from None
