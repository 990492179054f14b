"""The attributes of every label at one moment, as searches read them: posting lists, crowding tags, live flags.

A ``Table`` is never changed once published: ``AttributeStore`` (flux_core.storage.attributes)
builds the next one beside it on every write and publishes it in one assignment, so a search
that holds a table for its whole life never sees half a write. Matching a filter against it
(``matching``, ``select``) costs O(postings read) when few items pass, O(labels) otherwise.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import numpy.typing as npt

from flux_core.backend import Labels

#: Labels in memory are int64: numpy indexes with int32 arrays three times slower.
Postings = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
NO_TAG = -1


@dataclass(frozen=True)
class Table:
    """The attributes of every label at one moment. Never changed once published."""

    postings: Mapping[str, Mapping[str, Postings]]  # namespace -> token -> ascending labels
    tags: npt.NDArray[np.int32]  # crowding tag number per label, NO_TAG for none
    live: Mask  # the label holds an item
    changed: Mask  # set or cleared since the store was loaded or built
    live_count: int
    any_changed: bool
    #: Per namespace, its ``_Single`` index once asked for (None: not single-valued); built on first use.
    _singles: dict[str, _Single | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def create(
        cls, postings: Mapping[str, Mapping[str, Postings]], tags: npt.NDArray[np.int32], live: Mask, changed: Mask
    ) -> Table:
        """The table of these arrays, with the counts it keeps of them."""
        return cls(postings, tags, live, changed, int(np.count_nonzero(live)), bool(changed.any()))

    @property
    def size(self) -> int:
        """Labels covered: 0 .. size-1."""
        return len(self.tags)

    def matching(self, allow: Mapping[str, Collection[str]], deny: Mapping[str, Collection[str]]) -> Mask:
        """A mask over labels: True where a live item holds, in every ``allow`` namespace, at least
        one of its tokens (AND across namespaces, OR within one) and no token of ``deny``."""
        return self._mask({namespace: self._lists(namespace, tokens) for namespace, tokens in allow.items()}, deny)

    def select(
        self, allow: Mapping[str, Collection[str]], deny: Mapping[str, Collection[str]], list_limit: int
    ) -> tuple[Labels | None, Mask | None]:
        """The items ``matching`` marks: as ascending labels when one ``allow`` namespace holds at
        most ``list_limit`` postings of its tokens (few items pass), else as a mask over labels;
        the other of the two is None.

        The labels cost O(postings read) where the mask costs O(labels): with few passing items,
        building, counting and listing a mask would cost more than the rest of the query."""
        lists = {namespace: self._lists(namespace, tokens) for namespace, tokens in allow.items()}
        sizes = {namespace: sum(len(p) for p in found) for namespace, found in lists.items()}
        narrowest = min(sizes, key=sizes.__getitem__, default=None)
        if narrowest is not None and sizes[narrowest] <= list_limit:
            first = lists.pop(narrowest)
            labels = first[0] if len(first) == 1 else _ascending_unique(_joined(first))  # one list already is
            for found in lists.values():
                labels = labels[self._holds(_joined(found), labels)]
            for namespace, tokens in deny.items():
                labels = labels[~self._holds(_joined(self._lists(namespace, tokens)), labels)]
            return labels, None
        return None, self._mask(lists, deny)

    def one_of(self, allow: Mapping[str, Collection[str]], list_limit: int) -> OneOf | None:
        """The items holding one of the tokens of a single ``allow`` namespace, without a mask over
        every label, when that namespace gives each item at most one token (a bucket, a country)
        and more than ``list_limit`` items pass; else None (``select`` answers).

        For an unchanged table only: the index behind it is built once per table, on first use."""
        if len(allow) != 1 or self.any_changed:
            return None
        [(namespace, tokens)] = allow.items()
        if namespace not in self._singles:
            self._singles[namespace] = _Single.of(self.postings.get(namespace, {}), self.size)
        single = self._singles[namespace]
        if single is None:
            return None
        # Each token's number, -1 for a token no item holds: that marks the last entry, which stays False.
        numbers = np.fromiter(map(single.numbers.get, tokens, repeat(-1)), np.intp, len(tokens))
        allowed = np.zeros(len(single.counts) + 1, np.bool_)  # the last entry: items without a token
        allowed[numbers] = True
        allowed[-1] = False
        count = int(single.counts[allowed[:-1]].sum())  # from the mask: a token given twice counts once
        if count <= list_limit:
            return None
        return OneOf(allowed, single.token_of, count)

    def _mask(self, lists: Mapping[str, list[Postings]], deny: Mapping[str, Collection[str]]) -> Mask:
        mask: Mask | None = None
        for found in lists.values():
            hit = np.zeros(self.size, np.bool_)
            hit[_joined(found)] = True
            if mask is None:
                mask = hit
            else:
                mask &= hit
        if mask is None:
            mask = self.live.copy()
        for namespace, tokens in deny.items():
            mask[_joined(self._lists(namespace, tokens))] = False
        return mask

    def _holds(self, postings: Postings, labels: Postings) -> Mask:
        """Which of ``labels`` appear in ``postings``: by sorting when both are short, else by a mask."""
        if len(postings) <= self.size // 16:
            return np.isin(labels, postings)
        hit = np.zeros(self.size, np.bool_)
        hit[postings] = True
        holds: Mask = hit[labels]
        return holds

    def _lists(self, namespace: str, tokens: Collection[str]) -> list[Postings]:
        """The posting list of each of ``tokens`` in ``namespace`` that any item holds."""
        by_token = self.postings.get(namespace, {})
        return [p for p in map(by_token.get, tokens) if p is not None]


@dataclass(frozen=True)
class _Single:
    """A namespace in which each item holds at most one token: each label's token number."""

    numbers: dict[str, int]  # token -> its number
    token_of: npt.NDArray[np.int32]  # label -> token number, -1 for none
    counts: npt.NDArray[np.int64]  # token number -> items holding it

    @classmethod
    def of(cls, by_token: Mapping[str, Postings], size: int) -> _Single | None:
        """The index of ``by_token``, or None when some item holds two of its tokens."""
        lists = list(by_token.values())
        counts = np.fromiter(map(len, lists), np.int64, len(lists))
        token_of = np.full(size, -1, np.int32)
        for number, postings in enumerate(lists):
            token_of[postings] = number
        if int(counts.sum()) != int(np.count_nonzero(token_of >= 0)):
            return None
        return cls(dict(zip(by_token, range(len(lists)), strict=True)), token_of, counts)


@dataclass(frozen=True)
class OneOf:
    """The items holding one of some tokens of a single-valued namespace (``Table.one_of``)."""

    allowed: Mask  # by token number, and False last, for items without a token
    token_of: npt.NDArray[np.int32]
    count: int  # items that pass

    def holds(self, labels: Labels) -> Mask:
        """Which of ``labels`` (all within the table) pass: a lookup per label, no mask over all."""
        passes: Mask = self.allowed.take(self.token_of[labels])
        return passes

    def mask(self) -> Mask:
        """The passing items as a mask over every label, for the strategies that need one.

        ``take``, not ``allowed[token_of]``: numpy indexes with int32 five times slower than
        it takes (200,000 labels: 1.2 against 0.35 ms)."""
        mask: Mask = self.allowed.take(self.token_of)
        return mask


def _joined(lists: list[Postings]) -> Postings:
    if len(lists) == 1:
        return lists[0]
    return np.concatenate(lists) if lists else np.empty(0, np.int64)


def _ascending_unique(labels: Postings) -> Postings:
    """``np.unique`` without its hashing, which is slower on a few thousand labels."""
    ordered = np.sort(labels)
    if len(ordered) > 1:
        ordered = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
    return ordered
