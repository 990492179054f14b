"""The ids of a loaded index: packed as fixed-width UTF-8 bytes when smaller, and the same ids either way."""

from __future__ import annotations

import numpy as np
import pytest

import flux_client
from flux_api.v1 import types_pb2
from flux_core.storage.ids import Ids, _hash, _Hashed, id_hashes, packed

#: FNV-1a, 64 bits, as published with the algorithm (and as Go's hash/fnv New64a computes them).
FNV1A_64 = {"": 0xCBF29CE484222325, "a": 0xAF63DC4C8601EC8C, "foobar": 0x85944171F73967E8}


def test_ids_of_similar_length_are_packed_into_far_less_memory_than_strings() -> None:
    ids = [f"track:{i:06d}" for i in range(10_000)]
    compact = packed(ids)
    assert compact.dtype == np.dtype("S12")
    as_strings = np.array(ids, dtype=object)
    string_bytes = as_strings.nbytes + sum(len(i) + 49 for i in ids)  # the pointers and the str objects
    assert compact.nbytes * 4 < string_bytes


def test_ids_that_cannot_or_should_not_be_packed_stay_strings() -> None:
    assert packed(["a", None, "c"]).dtype == object  # a label without an item
    assert packed(["a", "b\0"]).dtype == object  # numpy would drop the trailing NUL
    assert packed(["a", "b", "x" * 10_000]).dtype == object  # one long id would widen every row
    assert packed([]).dtype == object


def test_packed_ids_read_back_as_the_same_strings_everywhere() -> None:
    names = ["ü-ß", "plain", "日本"]
    ids = Ids(packed(names))
    labels = np.array([2, 0, 1])
    assert ids.strings(labels) == ["日本", "ü-ß", "plain"]
    assert [ids.label(name) for name in names] == [0, 1, 2]
    assert ids.label("missing") is None
    assert ids.live().tolist() == [0, 1, 2]
    assert ids.snapshot() == names
    answer = types_pb2.PackedNeighbors()
    answer.ids.extend(ids.of(labels).tolist())  # what the serving path sends: bytes, taken as UTF-8
    assert list(answer.ids) == ["日本", "ü-ß", "plain"]


def test_a_write_to_packed_ids_turns_them_into_strings_and_keeps_every_label() -> None:
    ids = Ids(packed(["a", "b", "c"]))
    assert ids.assign(["b", "d"]).tolist() == [1, 3]
    assert ids.strings(np.arange(4)) == ["a", "b", "c", "d"]
    assert ids.of(np.array([3, 0])).tolist() == ["d", "a"]
    assert ids.release(["a"]).tolist() == [0]
    assert ids.live().tolist() == [1, 2, 3]
    assert ids.snapshot() == [None, "b", "c", "d"]


def test_labels_of_many_ids_keep_their_order_and_leave_out_unknown_ids() -> None:
    for by_label in (packed(["a", "b", "c", "d"]), np.array(["a", None, "c", "d"], dtype=object)):
        ids = Ids(by_label)
        found = ids.labels(["d", "missing", "a", "b", "c"])
        expected = [3, 0, 1, 2] if by_label.dtype.kind == "S" else [3, 0, 2]  # "b" holds no item in the second
        assert found.dtype == np.int64
        assert found.tolist() == expected
        assert ids.labels([]).tolist() == []
        assert ids.labels(iter(["a"])).tolist() == [0]  # any iterable, e.g. a protobuf repeated field


def test_packed_labels_are_found_exactly_whatever_the_ids_look_like() -> None:
    stored = ["track:1", "track:10", "ü-ß", "日本", "a", "track:2"]
    ids = Ids(packed(stored))
    assert ids.labels(["日本", "track:10", "a"]).tolist() == [3, 1, 4]  # non-ASCII ids among the rest
    # Not held: a longer id sharing a stored prefix, the stored width plus one, trailing NULs, empty.
    longer = ["track:100", "track:10x", "track:1\0", "a\0", "", "track:" + "9" * 40]
    assert ids.labels(longer).tolist() == []
    assert ids.labels([*longer, "track:2", "track:1"]).tolist() == [5, 0]
    assert ids.labels(["\ud800", "a", "track:\udfff"]).tolist() == [4]  # a lone surrogate is no UTF-8 id


def test_labels_follow_writes_to_packed_ids() -> None:
    ids = Ids(packed(["a", "b", "c"]))
    assert ids.labels(["a", "b", "c"]).tolist() == [0, 1, 2]  # the sorted copy, before any write
    ids.release(["b"])
    assert ids.labels(["a", "b", "c"]).tolist() == [0, 2]  # a released id is no longer held
    assert ids.assign(["d"]).tolist() == [3]
    assert ids.labels(["d", "b", "a"]).tolist() == [3, 0]


def test_after_writes_the_table_still_finds_the_loaded_ids_and_the_map_the_rest() -> None:
    """Exclusion lists keep the table's speed on an index that takes writes: the table over the ids
    as loaded drops those deleted since, and the ids it misses go to the map once ids were added."""
    rng = np.random.default_rng(3)
    stored = [f"track:{i}" for i in range(2_000)]
    ids = Ids(packed(stored))
    ids.prepare_lookup()
    ids.release([f"track:{i}" for i in range(0, 2_000, 7)])  # deleted
    ids.assign(["new:1", "new:2", "track:14", "track:3"])  # new ids, one deleted and added again, one upsert
    ids.release(["new:2"])
    assert ids.lookup_ready
    held = ids.snapshot()
    by_id = {item_id: label for label, item_id in enumerate(held) if item_id is not None}
    assert by_id["track:14"] == 2_002  # deleted and added again: a new label
    assert by_id["track:3"] == 3  # written again while held: the same label
    wanted = [f"track:{i}" for i in rng.integers(2_100, size=3_000)] + ["new:1", "new:2", "nope", "a\0"]
    wanted = [wanted[i] for i in rng.permutation(len(wanted))]
    assert ids.labels(wanted).tolist() == [by_id[w] for w in wanted if w in by_id]
    assert ids.labels(["track:7", "track:14", "new:1"]).tolist() == [2_002, 2_000]


def test_the_server_and_the_client_hash_ids_as_the_contract_says() -> None:
    """``Filter.exclude_id_hashes``: FNV-1a over UTF-8, the same from the client, from strings and from packed ids."""
    names = list(FNV1A_64)
    assert id_hashes(names).tolist() == list(FNV1A_64.values())
    assert flux_client.id_hashes(names).tolist() == list(FNV1A_64.values())
    rng = np.random.default_rng(11)
    mixed = [f"{'ü' * int(rng.integers(3))}track:{rng.integers(10 ** int(rng.integers(1, 9)))}" for _ in range(500)]
    mixed += ["a\0", "\0", "日本", "x" * 300]
    assert id_hashes(mixed).tolist() == flux_client.id_hashes(mixed).tolist()
    alike = mixed[:200]
    assert id_hashes(packed(alike)).tolist() == id_hashes(alike).tolist()
    assert len(set(id_hashes(mixed).tolist())) == len(set(mixed))


@pytest.mark.parametrize("built", ["before writes", "after writes"])
@pytest.mark.parametrize("stored", [[f"track:{i}" for i in range(2_000)], [*(f"t{i}" for i in range(1_999)), None]])
def test_ids_excluded_by_hash_are_found_as_the_map_finds_them(built: str, stored: list[str | None]) -> None:
    """The table over the loaded ids' hashes drops ids deleted since; ids added since (new, or
    deleted and added again) are found by their hash too, whether the table was built before
    the writes or after them; packed ids and ids kept as strings alike."""
    rng = np.random.default_rng(3)
    ids = Ids(packed(stored))
    if built == "before writes":
        assert ids.labels_by_hash(id_hashes(["nope"])).tolist() == []
    held = [item_id for item_id in stored if item_id is not None]
    ids.release(held[::7])
    ids.assign(["new:1", "new:2", held[14], held[3]])  # new ids, one deleted and added again, one upsert
    ids.release(["new:2"])
    by_id = {item_id: label for label, item_id in enumerate(ids.snapshot()) if item_id is not None}
    assert by_id[held[14]] == 2_002
    assert by_id[held[3]] == 3
    wanted = [held[i] for i in rng.integers(len(held), size=3_000)] + ["new:1", "new:2", "nope", "a\0"]
    wanted = [wanted[i] for i in rng.permutation(len(wanted))]
    assert ids.labels_by_hash(id_hashes(wanted)).tolist() == [by_id[w] for w in wanted if w in by_id]
    ids.assign(["new:3"])  # added once the table exists
    assert ids.labels_by_hash(id_hashes(["new:3", held[7], "new:1"])).tolist() == [2_003, 2_000]


def test_ids_that_share_a_hash_are_told_apart_by_their_bytes() -> None:
    stored = [f"track:{i}" for i in range(50)] + ["a", "ü"]
    by_label = packed(stored)
    wanted = ["track:7", "missing", "ü", "track:49", "track:7", "track:490", "a", "b"]
    expected = [7, 51, 49, 7, 50]
    for weak in (
        lambda keys: np.zeros(len(keys), np.uint64),  # every id in one run
        lambda keys: keys.view(np.uint8).reshape(len(keys), -1)[:, -9].astype(np.uint64),  # runs by one byte
        lambda keys: _hash(keys) >> np.uint64(40),  # one run, in which the low bits tell ids apart
        lambda keys: _hash(keys) & np.uint64(0xFFFF << 48),  # homes apart, every slot's low bits alike
    ):
        hashed = _Hashed(by_label, hash_keys=weak)
        assert _found(hashed, wanted).tolist() == expected
        assert _found(hashed, ["nothing", "track:"]).tolist() == []


def test_hashed_lookup_agrees_with_a_dict() -> None:
    rng = np.random.default_rng(7)
    stored = [f"{rng.integers(10**6)}-{i}" for i in range(5_000)]
    ids = Ids(packed(stored))
    by_id = {item_id: label for label, item_id in enumerate(stored)}
    wanted = [stored[i] for i in rng.integers(len(stored), size=2_000)] + [f"x{i}" for i in range(500)]
    wanted = [wanted[i] for i in rng.permutation(len(wanted))]
    assert ids.labels(wanted).tolist() == [by_id[w] for w in wanted if w in by_id]


def test_a_run_that_passes_the_last_home_slot_spills_past_it_and_is_still_walked() -> None:
    """Runs spill into slots after the last home instead of wrapping round: no walk may run off the end."""
    stored = [f"track:{i}" for i in range(40)]
    hashed = _Hashed(packed(stored), hash_keys=lambda keys: _hash(keys) | np.uint64(0xFFFF << 48))
    last_home = int(np.uint64(2**64 - 1) >> hashed.shift)
    assert np.count_nonzero(hashed.table[last_home + 1 :]) == len(stored) - 1  # all but one beyond the homes
    assert _found(hashed, [*reversed(stored), "track:40", "track:"]).tolist() == list(reversed(range(len(stored))))


def test_every_label_fits_its_slot_at_table_sizes_around_powers_of_two() -> None:
    """The label field is as wide as the count of ids needs: the largest label is the one cut first."""
    for count in (1, 2, 3, 4, 7, 8, 9, 255, 256, 257):
        stored = [f"id-{i}" for i in range(count)]
        hashed = _Hashed(packed(stored))
        assert _found(hashed, [*reversed(stored), "id-x", "id-", ""]).tolist() == list(reversed(range(count)))


def _found(hashed: _Hashed, wanted: list[str]) -> np.ndarray:
    """The labels of those of ``wanted`` the table holds, in their order."""
    labels = hashed.each(wanted)
    return labels[labels >= 0]
