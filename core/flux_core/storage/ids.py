"""The string ids of one loaded index, by label, and the label of each id; upserts grow it.

Searches read without a lock, while one writer at a time (``flux.core.writes.writer``) changes it:

* a new id gets a new label, never one used before in this process, so a label a search
  got from the backend always names the id it had when the search ran, even if that id
  was deleted since. (Backends reuse the memory of deleted items themselves: hnswlib
  puts a new label in a deleted item's slot.)
* the label array grows by copying into a larger one, published with one assignment,
  and a label is given its id before the backend holds it, so no search can return a
  label the array does not cover.
* a deleted id leaves the map at once; its string stays in the array for searches in
  flight. A snapshot writes ``None`` there (``snapshot``), which is how an artifact
  records labels that hold no item.

A loaded artifact's ids are kept as one fixed-width array of UTF-8 bytes (``packed``) when
that is smaller than one Python string each, which it is for ids of similar length: 200,000
ids like ``"123456"`` take 1.2 MB instead of about 13 MB. Answers take them as they are
(protobuf accepts UTF-8 bytes for string fields); the first write turns them into strings.

Exclusion lists come by id (``labels``) or by each id's 64-bit FNV-1a hash, the contract's
``Filter.exclude_id_hashes`` (``labels_by_hash``, ``id_hashes``); each is looked up in an
open-addressing table over the ids as loaded (``_Table``), built on first use, with the writes
since laid over it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from flux_core.backend import Labels

#: What one id costs as a Python string beyond its characters, with its pointer in an object array.
_STR_OVERHEAD = 57
#: FNV-1a's 64-bit offset basis and prime (``id_hashes``).
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def packed(ids: Sequence[str | None]) -> np.ndarray:
    """``ids`` by label as fixed-width UTF-8 bytes when that is smaller, else as an array of str.

    Labels without an item (``None``) and ids with a NUL character (numpy drops trailing
    NULs) keep the array of str.
    """
    if not ids or any(item_id is None or "\0" in item_id for item_id in ids):
        return np.array(ids, dtype=object)
    encoded = [item_id.encode() for item_id in ids]  # type: ignore[union-attr]
    width = max(map(len, encoded))
    if width * len(encoded) >= sum(map(len, encoded)) + _STR_OVERHEAD * len(encoded):
        return np.array(ids, dtype=object)
    return np.array(encoded, dtype=f"S{max(width, 1)}")


def _strings(by_label: np.ndarray) -> list[str | None]:
    values = by_label.tolist()
    return [value.decode() for value in values] if by_label.dtype.kind == "S" else values


class Ids:
    def __init__(self, by_label: np.ndarray) -> None:
        self._by_label = by_label  # may be longer than _next: room to grow into
        self._next = len(by_label)  # the label the next new id gets
        self._labels: dict[str, int] | None = None  # built on first use
        self._lock = threading.Lock()  # builds the map once; held by writers
        #: The ids as loaded, when packed: the keys of the hash table exclusions are looked up in, for good.
        self._packed = by_label if by_label.dtype.kind == "S" else None
        self._hashed: _Hashed | None = None  # built on first use
        self._loaded = len(by_label)  # labels below this held their ids as loaded (or nothing)
        self._gone: np.ndarray | None = None  # per loaded label, whether its id has left the map since
        self._added = False  # an id has been added since loading: the table misses it
        #: The ids as loaded by contract hash, and the ids added since (hash -> label): built on first use.
        self._by_hash: _IdHashes | None = None
        self._added_by_hash: dict[int, int] = {}

    # -- reads (any thread, no lock) ---------------------------------------------------

    def of(self, labels: Labels) -> np.ndarray:
        """The id of each label, in the shape of ``labels`` (which must all be >= 0), as str or UTF-8 bytes."""
        return self._by_label[labels]

    def strings(self, labels: Labels) -> list[str]:
        """The id of each label (a 1-d array of labels >= 0), as str."""
        return _strings(self._by_label[labels])  # type: ignore[return-value]

    def label(self, item_id: str) -> int | None:
        """The label of ``item_id``, or None when the index does not hold it."""
        return self._map().get(item_id)

    def labels(self, ids: Iterable[str]) -> Labels:
        """The labels of those of ``ids`` the index holds, in their order; the others are left out.

        An exclusion list of thousands of ids is looked up on every query that carries it. Packed
        ids are found in a hash table of integers (``_Hashed``) over the ids as loaded, writes or
        not: a label whose id has left since is dropped, and once ids have been added, those the
        table misses (new ones, or ones deleted and added again) are looked up in the dict. Ids
        loaded unpacked are looked up by mapping the dict's ``get`` over them in C.
        """
        if self._packed is None:
            found = np.fromiter(map(self._map().get, ids, itertools.repeat(-1)), np.int64)
            return found[found >= 0]
        wanted = ids if isinstance(ids, list | tuple) else list(ids)
        added = self._added  # read first: an id added after this is not looked for, as before the write
        found = self._hashed_ids().each(wanted)
        self._drop_gone(found)
        if added:
            missed = np.flatnonzero(found < 0)
            if len(missed):
                get = self._map().get
                found[missed] = [get(wanted[row], -1) for row in missed.tolist()]
        return found[found >= 0]

    def labels_by_hash(self, hashes: np.ndarray) -> Labels:
        """The labels of the ids whose ``id_hashes`` are among ``hashes``, in their order; hashes no
        held id has are left out. As ``labels``: a table over the ids as loaded (``_IdHashes``),
        labels whose id has left since dropped, and the ids added since in a dict by hash."""
        table = self._hashes_table()
        found = table.each(hashes)
        self._drop_gone(found)
        added = self._added_by_hash
        if added:
            missed = np.flatnonzero(found < 0)
            if len(missed):
                get = added.get
                found[missed] = [get(value, -1) for value in hashes[missed].tolist()]
        return found[found >= 0]

    def _drop_gone(self, found: Labels) -> None:
        """Set to -1, in place, the labels a table over the ids as loaded found whose id has left since."""
        gone = self._gone
        if gone is not None:
            held = found >= 0
            held[held] = gone[found[held]]
            found[held] = -1

    @property
    def lookup_ready(self) -> bool:
        """Whether the table ``labels`` finds packed ids in is built: an exclusion list was looked up."""
        return self._hashed is not None

    @property
    def hash_lookup_ready(self) -> bool:
        """Whether the table ``labels_by_hash`` looks in is built: ids were left out by hash."""
        return self._by_hash is not None

    def prepare_lookups(self, like: Ids) -> None:
        """Build now the lookup tables ``like`` (the version this one replaces) had built, so that
        the first queries after a swap do not wait for them (``prepare_lookup``)."""
        if like.lookup_ready:
            self.prepare_lookup()
        if like.hash_lookup_ready:
            self._hashes_table()

    def prepare_lookup(self) -> None:
        """Build the table ``labels`` finds packed ids in now, rather than on the first exclusion list.

        Building it takes about 0.5 s at 5 million ids (an argsort of their hashes), during which
        the first query to need it, and those behind it, wait; a version loads it in advance when
        the version it replaces had built one (``flux.core.serving.manager``).
        """
        if self._packed is not None:
            self._hashed_ids()

    def live(self) -> Labels:
        """The labels that hold an item, ascending."""
        if self._labels is None:
            if self._by_label.dtype.kind == "S":  # packed: every label holds an item
                return np.arange(self._next, dtype=np.int64)
            held = [item_id is not None for item_id in self._by_label[: self._next].tolist()]
            return np.flatnonzero(held).astype(np.int64)
        return np.sort(np.fromiter(self._labels.values(), np.int64, len(self._labels)))

    def snapshot(self) -> list[str | None]:
        """Every label's id in label order, ``None`` where a label holds no item (for an artifact)."""
        out: list[str | None] = [None] * self._next
        for item_id, label in self._map().items():
            out[label] = item_id
        return out

    def _hashed_ids(self) -> _Hashed:
        hashed = self._hashed
        if hashed is None:
            with self._lock:
                if self._hashed is None:
                    assert self._packed is not None, "a table is built over packed ids"
                    self._hashed = _Hashed(self._packed)
                hashed = self._hashed
        return hashed

    def _hashes_table(self) -> _IdHashes:
        table = self._by_hash
        if table is None:
            with self._lock:  # writers wait: the ids added so far are hashed into the dict, then writes keep it
                if self._by_hash is None:
                    if self._added and self._labels is not None:  # a write built the map before adding
                        added = [(item_id, label) for item_id, label in self._labels.items() if label >= self._loaded]
                        hashes = id_hashes([item_id for item_id, _ in added]).tolist()
                        self._added_by_hash.update(zip(hashes, (label for _, label in added), strict=True))
                    loaded = self._packed if self._packed is not None else self._by_label[: self._loaded]
                    self._by_hash = _IdHashes(loaded)
                table = self._by_hash
        return table

    def _map(self) -> dict[str, int]:
        labels = self._labels
        if labels is None:
            with self._lock:
                if self._labels is None:
                    ids = _strings(self._by_label[: self._next])
                    self._labels = {item_id: label for label, item_id in enumerate(ids) if item_id is not None}
                labels = self._labels
        return labels

    # -- writes (one writer at a time) ---------------------------------------------------

    def assign(self, ids: Sequence[str]) -> Labels:
        """The label of each id, giving new ids new labels; ``ids`` must not repeat."""
        labels = self._map()
        with self._lock:
            out = np.empty(len(ids), np.int64)
            new: list[str] = []
            for row, item_id in enumerate(ids):
                label = labels.get(item_id)
                if label is None:
                    label = self._next + len(new)
                    new.append(item_id)
                out[row] = label
            if new:
                self._added = True  # before the map holds them: a lookup that sees them also asks the map
                self._grow(new)
                for offset, item_id in enumerate(new):
                    labels[item_id] = self._next + offset
                if self._by_hash is not None:
                    by_hash = self._added_by_hash
                    for offset, value in enumerate(id_hashes(new).tolist()):
                        by_hash[value] = self._next + offset
                self._next += len(new)
            return out

    def release(self, ids: Sequence[str]) -> Labels:
        """Take ``ids`` out of the map and return their labels; ids not held are skipped."""
        labels = self._map()
        with self._lock:
            held = [item_id for item_id in ids if item_id in labels]
            found = np.array([labels.pop(item_id) for item_id in held], np.int64)
            gone = self._gone if self._gone is not None else np.zeros(self._loaded, np.bool_)
            gone[found[found < len(gone)]] = True
            self._gone = gone  # published once it marks them
            if self._by_hash is not None and len(found):
                by_hash = self._added_by_hash
                for value, label in zip(id_hashes(held).tolist(), found.tolist(), strict=True):
                    if by_hash.get(value) == label:
                        del by_hash[value]
        return found

    def _grow(self, new: list[str]) -> None:
        needed = self._next + len(new)
        array = self._by_label
        if needed > len(array) or array.dtype.kind == "S":
            array = np.empty(max(needed, 2 * len(array), 64), dtype=object)
            array[: self._next] = _strings(self._by_label[: self._next])
        array[self._next : needed] = new
        self._by_label = array  # published only now that every new label has its id


class _Table:
    """Labels by 64-bit hash in an open-addressing hash table of integers: a batch of hashes is
    found by a few vectorised gathers, about one random memory access each. For an exclusion list
    that is faster than a binary search over sorted hashes (10,000 ids among 200,000, caches cold:
    about 1.1 against 1.9 ms) or a dict probe per id (probes that miss the CPU's caches), and needs
    no map of Python strings.

    Each slot holds a label plus one (0: empty) in its low bits, as few as the largest label
    needs, and the low bits of its 64-bit hash in the rest. A label lives in the first free slot
    from the one its hash's high bits name (its home); labels are placed in home order, so a run
    that passes the last home spills into slots appended after it rather than wrapping round, and
    the table ends with an empty slot at which every walk stops. 8 bytes a slot at 1.5 to 3 slots
    a label; building it for 200,000 labels takes about 10 ms.
    """

    def __init__(self, hashes: np.ndarray, labels: Labels, count: int) -> None:
        """``hashes[i]`` is the hash of ``labels[i]``, each label below ``count``."""
        bits = max(len(hashes) * 3 // 2 - 1, 1).bit_length()
        self.shift = np.uint64(64 - bits)
        self.label_bits = np.uint64(count.bit_length())
        self.label_mask = np.uint64((1 << count.bit_length()) - 1)
        # In place where it can be: at 5 million labels each array of them is 40 MB.
        order = np.argsort(hashes)
        entries = hashes[order]  # sorted: their homes ascend
        at = (entries >> self.shift).view(np.int64)  # each home, then the slot it gets: the first
        rank = np.arange(len(hashes))  # free one at or past it, given those placed before it
        at -= rank
        np.maximum.accumulate(at, out=at)
        at += rank
        del rank
        self.table = np.zeros(max(1 << bits, int(at.max(initial=0)) + 1) + 1, np.uint64)
        entries <<= self.label_bits
        placed = np.asarray(labels[order], np.int64).view(np.uint64)
        del order
        placed += np.uint64(1)
        entries |= placed
        self.table[at] = entries

    def find(self, hashes: np.ndarray, same: Callable[[np.ndarray, Labels], np.ndarray]) -> Labels:
        """The label of each of ``hashes``, -1 where the table holds none. Hashes that share their
        low bits share a slot's tag: ``same(rows, labels)`` tells for those rows whether the label
        found is truly theirs, and the walk goes on for the rest (a second round is all but never
        needed with 64-bit hashes)."""
        tags = hashes << self.label_bits
        slots, labels = self._walk(tags, (hashes >> self.shift).astype(np.intp))
        pending = np.arange(len(hashes))
        while len(pending := pending[labels[pending] >= 0]):
            pending = pending[~same(pending, labels[pending])]
            if len(pending):
                slots[pending], labels[pending] = self._walk(tags[pending], slots[pending] + 1)
        return labels

    def _walk(self, tags: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, Labels]:
        """From each of ``slots`` on, the first slot that holds ``tags`` or nothing, and its label (or -1)."""
        entries = self.table[slots]
        pending = np.flatnonzero((entries != 0) & ((entries & ~self.label_mask) != tags))
        while len(pending):
            slots[pending] += 1
            entries[pending] = self.table[slots[pending]]
            pending = pending[(entries[pending] != 0) & ((entries[pending] & ~self.label_mask) != tags[pending])]
        labels: Labels = (entries & self.label_mask).astype(np.int64) - 1
        return slots, labels


class _Hashed(_Table):
    """Packed ids by a hash of their bytes, each found checked byte for byte against ``by_label``
    (rather than against a copy of the ids as 64-bit words: 0.1 ms more for 10,000 ids, 16 bytes
    an id less). Memory per stored id: 21 bytes for 200,000 ids (the sorted hashes and their order
    took 16)."""

    def __init__(self, by_label: np.ndarray, hash_keys: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.by_label = by_label
        self.hash_keys = hash_keys or _hash
        # At least one byte wider than any stored id (a longer id, cut to this width, still matches
        # none), and whole 64-bit words, so that the keys' bytes are hashed as they lie.
        self.width = (by_label.dtype.itemsize // 8 + 1) * 8
        hashes = self.hash_keys(by_label.astype(f"S{self.width}"))
        super().__init__(hashes, np.arange(len(by_label)), len(by_label))

    def each(self, wanted: Sequence[str]) -> Labels:
        """The label of each of ``wanted``, -1 where the table holds none."""
        out = np.full(len(wanted), -1, np.int64)
        rows: np.ndarray | None = None
        if "\0" in "".join(wanted):  # numpy drops trailing NULs; no packed id holds one (``packed``)
            rows = np.array([row for row, item_id in enumerate(wanted) if "\0" not in item_id], np.intp)
            wanted = [wanted[row] for row in rows.tolist()]
        if not wanted or not len(self.by_label):
            return out
        try:
            keys = np.array(wanted, dtype=f"S{self.width}")  # numpy encodes str as ASCII
        except UnicodeEncodeError:  # a lone surrogate cannot be held: its bytes are not UTF-8
            keys = np.array([item_id.encode("utf-8", "surrogatepass") for item_id in wanted], f"S{self.width}")
        labels = self.find(self.hash_keys(keys), lambda at, found: self.by_label[found] == keys[at])
        if rows is None:
            return labels
        out[rows] = labels
        return out


class _IdHashes(_Table):
    """The ids as loaded by their contract hash (``id_hashes``), for ``Filter.exclude_id_hashes``:
    a sent hash is found with no string built on either side. The table is keyed on the hashes
    mixed (FNV-1a's high bits, which name a home, vary little between ids alike but for their
    last bytes), and a label found is checked against its full hash (``keys``, 8 bytes an id), so
    that a hash excludes exactly the ids that have it."""

    def __init__(self, by_label: np.ndarray) -> None:
        if by_label.dtype.kind == "S":
            labels = np.arange(len(by_label))
            hashes = id_hashes(by_label)
        else:  # str, None where a label holds no item
            held = [label for label, item_id in enumerate(by_label.tolist()) if item_id is not None]
            labels = np.array(held, np.int64)
            hashes = id_hashes(by_label[labels].tolist())
        mixed = _mix(hashes)  # in place: the hashes are this table's own
        if len(labels) == len(by_label):  # every label holds an id: its keys are the mixed hashes as they are
            self.keys = mixed
        else:
            self.keys = np.zeros(len(by_label), np.uint64)
            self.keys[labels] = mixed
        super().__init__(mixed, labels, len(by_label))

    def each(self, hashes: np.ndarray) -> Labels:
        """The label of each of ``hashes``, -1 where the table holds none."""
        if not len(self.keys):
            return np.full(len(hashes), -1, np.int64)
        mixed = _mix(hashes.astype(np.uint64))  # a copy: the caller's hashes stay as sent
        return self.find(mixed, lambda at, found: self.keys[found] == mixed[at])


def _hash(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each fixed-width byte string (whose width is a multiple of 8)."""
    words = keys.view(np.uint64).reshape(len(keys), -1)
    out = np.full(len(keys), 0x9E3779B97F4A7C15, np.uint64)
    for column in words.T:  # splitmix64's finaliser after each word
        out ^= column
        _mix(out)
    return out


def _mix(hashes: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every bit of each hash stirred into every other (one to one)."""
    hashes ^= hashes >> np.uint64(30)
    hashes *= np.uint64(0xBF58476D1CE4E5B9)
    hashes ^= hashes >> np.uint64(27)
    hashes *= np.uint64(0x94D049BB133111EB)
    hashes ^= hashes >> np.uint64(31)
    return hashes


def id_hashes(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Each id's 64-bit FNV-1a hash over its UTF-8 bytes: what ``Filter.exclude_id_hashes`` carries.

    ``ids`` as str, or packed (``packed``: fixed-width UTF-8 bytes without NULs). One pass of
    numpy per byte position, over every id at once: about 5 ms for 200,000 ids of 13 bytes.
    """
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "S":
        raw, lengths = ids, np.char.str_len(ids)
    else:
        encoded = [item_id.encode("utf-8", "surrogatepass") for item_id in ids]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        raw = np.array(encoded, dtype=f"S{max(int(lengths.max(initial=0)), 1)}")
    columns = raw.view(np.uint8).reshape(len(raw), raw.dtype.itemsize)
    out = np.full(len(raw), FNV_OFFSET, np.uint64)
    alike = bool(len(lengths)) and bool((lengths == lengths[0]).all())
    for column in range(int(lengths.max(initial=0))):
        if alike:
            out ^= columns[:, column]
            out *= FNV_PRIME
        else:
            out = np.where(lengths > column, (out ^ columns[:, column]) * FNV_PRIME, out)
    return out
