"""Item attributes: what filters match on, and the store that keeps them per label.

An item has restrict tokens in namespaces (``{"market": ("US", "SE")}``) and at most one
crowding tag (for example its artist). Attributes travel with builds and upserts.

``AttributeStore`` keeps them per label: for every (namespace, token) the sorted labels of
the items holding it (a posting list), and for every label its crowding tag as a number.
Searches read one immutable ``Table`` (flux_core.storage.attribute_table, where the matching
lives) for their whole life; writes (``set``, ``clear``) build the next table beside it and
publish it in one assignment, so a search never sees half a write.

On disk a store is one ``.npz`` file (``save``/``load``) of plain arrays, no pickles:

* ``vocabulary``: UTF-8 JSON ``{"keys": [[namespace, token], ...], "tags": [tag, ...]}``
* ``offsets`` (int64, one more than keys) and ``postings`` (int32): key i's labels are
  ``postings[offsets[i]:offsets[i + 1]]``, ascending
* ``tags`` (int32, one per label): an index into ``vocabulary.tags``, -1 for none
* ``live`` (bool, one per label): whether the label holds an item
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from flux_core.backend import Labels
from flux_core.errors import ArtifactError, InvalidArgument
from flux_core.storage.attribute_table import NO_TAG, Mask, Postings, Table

_FORMAT = 1


@dataclass(frozen=True)
class ItemAttributes:
    """One item's restrict tokens by namespace, and its crowding tag ("" for none)."""

    restricts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    crowding_tag: str = ""

    @classmethod
    def create(
        cls,
        restricts: Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]] = (),
        crowding_tag: str = "",
        *,
        field: str = "attributes",
    ) -> ItemAttributes:
        """Validated attributes: namespaces and tokens non-empty, each namespace once.

        Errors are InvalidArgument naming ``field`` (e.g. ``items[3].attributes``), so the
        write path can hand them to the caller as they are.
        """
        return cls(parse_restricts(restricts, f"{field}.restricts"), crowding_tag)


def parse_restricts(
    restricts: Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]], field: str, *, unique: bool = True
) -> dict[str, tuple[str, ...]]:
    """Namespace -> tokens, refusing an empty namespace or token and a namespace given twice;
    errors name the entry, e.g. ``filter.allow[1].namespace``.

    ``unique`` drops a repeated token (an item's attributes, whose labels go into posting lists
    once). A query's filter keeps them: the table reads a repeated token once, and making 500
    tokens unique cost about 50 µs a query, of the 130 that reading and looking them up took."""
    pairs = restricts.items() if isinstance(restricts, Mapping) else restricts
    out: dict[str, tuple[str, ...]] = {}
    for position, (namespace, tokens) in enumerate(pairs):
        where = f"{field}[{position}]"
        if not namespace:
            raise InvalidArgument(f"{where}.namespace is empty", field=f"{where}.namespace")
        if namespace in out:
            raise InvalidArgument(
                f"{where}: namespace {namespace!r} appears twice; give each namespace once with all its tokens",
                field=f"{where}.namespace",
            )
        given = tuple(dict.fromkeys(tokens) if unique else tokens)
        if not given or not all(given):
            raise InvalidArgument(f"{where}.tokens must hold at least one token, none empty", field=f"{where}.tokens")
        out[namespace] = given
    return out


class AttributeStore:
    """The attributes of one index's items, by label; safe for concurrent searches and writes.

    Searches read ``table``. The write path (upsert and delete) calls ``set`` and ``clear``;
    writes are serialised here, and each costs O(labels + touched posting lists).
    """

    def __init__(
        self,
        table: Table,
        tag_names: Sequence[str],
        base: tuple[Sequence[tuple[str, str]], Labels, Postings],
    ) -> None:
        """Use ``build``, ``empty`` or ``load``. ``base`` is the posting lists as built or loaded
        (keys, offsets, postings), to find an item's old tokens when it is first rewritten."""
        self._table = table
        self._lock = threading.Lock()
        self._tag_numbers = {name: number for number, name in enumerate(tag_names)}
        self._base = base
        self._written: dict[int, frozenset[tuple[str, str]]] = {}  # keys of labels rewritten since

    @property
    def table(self) -> Table:
        """The current attributes; hold on to it for the whole of a search."""
        return self._table

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def empty(cls, size: int, live: Mask | None = None) -> AttributeStore:
        """``size`` labels without attributes, all live unless ``live`` says otherwise (an artifact
        without an attributes file)."""
        flags = np.ones(size, np.bool_) if live is None else np.asarray(live, np.bool_)
        none = np.empty(0, np.int64)
        return cls._from_arrays([], np.zeros(1, np.int64), none, np.full(size, NO_TAG, np.int32), [], flags)

    @classmethod
    def build(cls, items: Sequence[ItemAttributes]) -> AttributeStore:
        """The store of ``items``, label i holding ``items[i]``."""
        tag_names: dict[str, int] = {}
        tags = np.full(len(items), NO_TAG, np.int32)
        by_key: dict[tuple[str, str], list[int]] = {}
        for label, item in enumerate(items):
            for namespace, tokens in item.restricts.items():
                for token in tokens:
                    by_key.setdefault((namespace, token), []).append(label)
            if item.crowding_tag:
                tags[label] = tag_names.setdefault(item.crowding_tag, len(tag_names))
        keys = sorted(by_key)
        sizes = np.array([len(by_key[k]) for k in keys], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        postings = np.array([label for k in keys for label in by_key[k]], np.int64)
        return cls._from_arrays(keys, offsets, postings, tags, list(tag_names), np.ones(len(items), np.bool_))

    @classmethod
    def _from_arrays(
        cls,
        keys: list[tuple[str, str]],
        offsets: Labels,
        postings: Postings,
        tags: npt.NDArray[np.int32],
        tag_names: list[str],
        live: Mask,
    ) -> AttributeStore:
        nested: dict[str, dict[str, Postings]] = {}
        for number, (namespace, token) in enumerate(keys):
            nested.setdefault(namespace, {})[token] = postings[offsets[number] : offsets[number + 1]]
        table = Table.create(nested, tags, live, np.zeros(len(tags), np.bool_))
        return cls(table, tag_names, (keys, offsets, postings))

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the current table to ``path`` (an ``.npz`` file, see the module docstring)."""
        table = self._table
        keys = sorted((ns, token) for ns, by_token in table.postings.items() for token in by_token)
        lists = [table.postings[ns][token] for ns, token in keys]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in lists], dtype=np.int64)]).astype(np.int64)
        postings = np.concatenate(lists).astype(np.int32) if lists else np.empty(0, np.int32)
        names = [""] * len(self._tag_numbers)
        for name, number in self._tag_numbers.items():
            names[number] = name
        vocabulary = json.dumps({"format": _FORMAT, "keys": keys, "tags": names}, ensure_ascii=False)
        with path.open("wb") as fh:
            np.savez(
                fh,
                vocabulary=np.frombuffer(vocabulary.encode("utf-8"), np.uint8),
                offsets=offsets,
                postings=postings,
                tags=table.tags,
                live=table.live,
            )

    @classmethod
    def load(cls, path: Path, size: int) -> AttributeStore:
        """Read a store that ``save`` wrote for ``size`` labels; refuse one that is inconsistent."""
        try:
            with np.load(path, allow_pickle=False) as data:
                vocabulary = json.loads(data["vocabulary"].tobytes().decode("utf-8"))
                offsets, postings = data["offsets"], data["postings"]
                tags, live = data["tags"], data["live"]
            keys = [(str(ns), str(token)) for ns, token in vocabulary["keys"]]
            tag_names = [str(t) for t in vocabulary["tags"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path}: unreadable attributes: {exc}") from exc
        problem = _check(keys, offsets, postings, tags, tag_names, live, size)
        if problem:
            raise ArtifactError(f"{path}: {problem}")
        return cls._from_arrays(keys, offsets, postings.astype(np.int64), tags, tag_names, live)  # int32 on disk

    # -- the write path -------------------------------------------------------------------------

    def set(self, labels: Sequence[int] | Labels, items: Sequence[ItemAttributes]) -> None:
        """Give each label its item's attributes, replacing what it had; labels past the end grow the store.

        Call it for every upserted item, with ``ItemAttributes()`` when it has none: a label
        the store has never been told about is not live and no filtered search returns it.
        A label given twice keeps its last attributes.
        """
        labels = np.asarray(labels, np.int64)
        if len(labels) != len(items):
            raise ValueError(f"{len(labels)} labels for {len(items)} attribute sets")
        if len(labels) and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
        latest = dict(zip(labels.tolist(), items, strict=True))
        with self._lock:
            new_keys = {label: _keys(item) for label, item in latest.items()}
            numbers = [self._tag_number(item.crowding_tag) for item in latest.values()]
            self._publish(new_keys, np.array(numbers, np.int32), live=True)

    def clear(self, labels: Sequence[int] | Labels) -> None:
        """The items at ``labels`` are gone (deleted): they lose their attributes and no filtered
        search returns them again. Labels that hold no item are ignored."""
        with self._lock:
            live = self._table.live
            gone = {
                label: frozenset[tuple[str, str]]()
                for label in np.asarray(labels, np.int64).tolist()
                if 0 <= label < len(live) and live[label]
            }
            if gone:
                self._publish(gone, np.full(len(gone), NO_TAG, np.int32), live=False)

    def _tag_number(self, name: str) -> int:
        if not name:
            return NO_TAG
        return self._tag_numbers.setdefault(name, len(self._tag_numbers))

    def _publish(
        self, new_keys: dict[int, frozenset[tuple[str, str]]], tags: npt.NDArray[np.int32], live: bool
    ) -> None:
        """Publish the table in which each label of ``new_keys`` holds exactly those keys and its
        tag from ``tags`` (in the same order). The caller holds the lock."""
        old = self._table
        labels = np.fromiter(new_keys, np.int64, len(new_keys))
        size = max(old.size, int(labels.max()) + 1 if len(labels) else 0)
        changes: dict[tuple[str, str], tuple[list[int], list[int]]] = {}  # key -> (removed, added)
        held = self._keys_of(labels)
        for label, after in new_keys.items():
            before = held.get(label, frozenset())
            for key in before - after:
                changes.setdefault(key, ([], []))[0].append(label)
            for key in after - before:
                changes.setdefault(key, ([], []))[1].append(label)
        postings = {ns: dict(by_token) for ns, by_token in old.postings.items()}
        for (namespace, token), (removed, added) in changes.items():
            by_token = postings.setdefault(namespace, {})
            current = by_token.get(token, np.empty(0, np.int64))
            current = np.union1d(np.setdiff1d(current, removed), np.array(added, np.int64)).astype(np.int64)
            if len(current):
                by_token[token] = current
            else:
                by_token.pop(token, None)
        self._table = Table.create(
            {ns: by_token for ns, by_token in postings.items() if by_token},
            _grown(old.tags, size, NO_TAG, labels, tags),
            _grown(old.live, size, False, labels, live),
            _grown(old.changed, size, False, labels, True),
        )
        self._written.update(new_keys)

    def _keys_of(self, labels: Labels) -> dict[int, frozenset[tuple[str, str]]]:
        """The keys each label holds now."""
        out = {label: self._written[label] for label in labels.tolist() if label in self._written}
        keys, offsets, postings = self._base
        first = np.array([label for label in labels.tolist() if label not in out], np.int64)
        if len(first) and len(postings):
            positions = np.flatnonzero(np.isin(postings, first))
            numbers = np.searchsorted(offsets, positions, side="right") - 1
            for position, number in zip(positions.tolist(), numbers.tolist(), strict=True):
                label = int(postings[position])
                out[label] = out.get(label, frozenset()) | {keys[number]}
        return out


def _keys(item: ItemAttributes) -> frozenset[tuple[str, str]]:
    return frozenset((namespace, token) for namespace, tokens in item.restricts.items() for token in tokens)


def _grown(array: np.ndarray, size: int, fill: object, labels: Labels, values: object) -> np.ndarray:
    """A copy of ``array`` extended to ``size`` with ``fill``, with ``values`` written at ``labels``."""
    out = np.full(size, fill, array.dtype)
    out[: len(array)] = array
    out[labels] = values
    return out


def _check(
    keys: list[tuple[str, str]],
    offsets: np.ndarray,
    postings: np.ndarray,
    tags: np.ndarray,
    tag_names: list[str],
    live: np.ndarray,
    size: int,
) -> str:
    """What is wrong with loaded arrays, or "" when they are consistent."""
    if tags.shape != (size,) or tags.dtype != np.int32 or live.shape != (size,) or live.dtype != np.bool_:
        return f"expected int32 tags and bool live flags for {size} labels, got {tags.dtype}{tags.shape}"
    if offsets.shape != (len(keys) + 1,) or offsets.dtype != np.int64 or postings.dtype != np.int32:
        return "posting offsets do not match the vocabulary"
    if offsets[0] != 0 or offsets[-1] != len(postings) or (np.diff(offsets) < 0).any():
        return "posting offsets are not ascending from 0 to the number of postings"
    if len(postings) and (postings.min() < 0 or postings.max() >= size):
        return f"a posting names a label outside 0 .. {size - 1}"
    ascending = np.diff(postings.astype(np.int64)) > 0
    starts = offsets[1:-1]
    ascending[starts[(starts > 0) & (starts < len(postings))] - 1] = True  # where one list ends, the next may go down
    if not ascending.all():
        return "a posting list is not strictly ascending"
    if len(tags) and (tags.min() < NO_TAG or tags.max() >= len(tag_names)):
        return "a crowding tag number is outside the tag vocabulary"
    return ""
