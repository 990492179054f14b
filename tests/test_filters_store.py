"""Item attributes: matching, the write path's set/clear, the artifact file, and attributes read by `flux build`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flux.cli import main
from flux.core.query.filters import Filter
from flux.core.serving.index import ServedIndex
from flux.datasets import load_items
from flux_core.backend import Metric
from flux_core.errors import ArtifactError, InvalidArgument
from flux_core.storage import artifact, builder
from flux_core.storage.attribute_table import NO_TAG
from flux_core.storage.attributes import AttributeStore, ItemAttributes
from tests import support

FIXTURES = Path(__file__).parent / "fixtures" / "artifacts" / "v1"

ITEMS = [
    ItemAttributes({"market": ("US", "SE"), "explicit": ("false",)}, "artist:a"),
    ItemAttributes({"market": ("US",), "explicit": ("true",)}, "artist:a"),
    ItemAttributes({"market": ("DE",)}, "artist:b"),
    ItemAttributes({}, ""),
    ItemAttributes({"market": ("SE",), "explicit": ("false",)}, "artist:c"),
]


def passing(store: AttributeStore, allow: dict[str, list[str]], deny: dict[str, list[str]] | None = None) -> list[int]:
    return np.flatnonzero(store.table.matching(allow, deny or {})).tolist()


def test_allow_is_and_across_namespaces_or_within_one_and_deny_removes() -> None:
    store = AttributeStore.build(ITEMS)
    assert passing(store, {"market": ["US", "SE"]}) == [0, 1, 4]
    assert passing(store, {"market": ["US", "SE"], "explicit": ["false"]}) == [0, 4]
    assert passing(store, {"explicit": ["true", "false"]}) == [0, 1, 4]  # no explicit namespace: no pass
    assert passing(store, {}, {"explicit": ["true"]}) == [0, 2, 3, 4]
    assert passing(store, {"market": ["US"]}, {"market": ["SE"]}) == [1]
    assert passing(store, {"market": ["FR"]}) == []
    assert passing(store, {"nowhere": ["x"]}, {"nowhere": ["y"]}) == []


def test_one_of_a_single_valued_namespace_matches_the_mask_without_building_it() -> None:
    rng = np.random.default_rng(5)
    items = [
        ItemAttributes({"bucket": (f"b{b}",), "market": tuple(rng.choice(["US", "SE"], 2))} if b < 7 else {})
        for b in rng.integers(0, 8, 400)
    ]
    table = AttributeStore.build(items).table
    allow = {"bucket": ["b1", "b3", "b3", "nowhere"]}  # a repeated token counts once
    chosen = table.one_of(allow, list_limit=10)
    assert chosen is not None
    expected = table.matching(allow, {})
    assert chosen.count == int(expected.sum())
    assert np.array_equal(chosen.mask(), expected)
    labels = rng.integers(0, 400, 50)
    assert np.array_equal(chosen.holds(labels), expected[labels])
    assert table.one_of(allow, list_limit=400) is None  # few pass: listing them is cheaper
    assert table.one_of({"market": ["US"]}, list_limit=10) is None  # an item may hold two markets
    assert table.one_of({"bucket": ["b1"], "market": ["US"]}, list_limit=10) is None  # two namespaces


def test_crowding_tags_are_numbered_and_untagged_items_have_none() -> None:
    tags = AttributeStore.build(ITEMS).table.tags.tolist()
    assert tags[0] == tags[1] != tags[2]
    assert tags[3] == NO_TAG
    assert len({tags[0], tags[2], tags[4]}) == 3


def test_set_replaces_attributes_grows_the_store_and_leaves_published_tables_alone() -> None:
    store = AttributeStore.build(ITEMS)
    before = store.table
    store.set([1, 7], [ItemAttributes({"market": ("DE",)}, "artist:new"), ItemAttributes({"market": ("US",)}, "")])
    after = store.table
    assert passing(store, {"market": ["US"]}) == [0, 7]
    assert passing(store, {"market": ["DE"]}) == [1, 2]
    assert passing(store, {"explicit": ["true"]}) == []
    assert after.size == 8
    assert after.live_count == 6
    assert after.live.tolist() == [True] * 5 + [False, False, True]  # labels 5 and 6 were never told about
    assert after.changed.tolist() == [False, True] + [False] * 5 + [True]
    assert after.any_changed
    assert after.tags[1] not in before.tags.tolist()
    assert after.tags[7] == NO_TAG
    # a search that took the old table goes on seeing it whole
    assert np.flatnonzero(before.matching({"market": ["US"]}, {})).tolist() == [0, 1]
    assert before.size == 5
    assert not before.any_changed


def test_set_twice_on_a_label_keeps_the_last_and_rewrites_rewritten_labels() -> None:
    store = AttributeStore.build(ITEMS)
    store.set([4, 4], [ItemAttributes({"market": ("DE",)}), ItemAttributes({"market": ("FR",)})])
    store.set([4], [ItemAttributes({"market": ("US",)})])
    assert passing(store, {"market": ["US"]}) == [0, 1, 4]
    assert passing(store, {"market": ["FR", "DE", "SE"]}) == [0, 2]


def test_clear_takes_items_out_of_every_filter() -> None:
    store = AttributeStore.build(ITEMS)
    store.clear([0, 3, 99])
    assert passing(store, {"market": ["US", "SE"]}) == [1, 4]
    assert passing(store, {}, {"explicit": ["true"]}) == [2, 4]  # a deny-only filter starts from live items
    assert store.table.live_count == 3
    assert store.table.tags[0] == NO_TAG
    store.set([0], [ItemAttributes({"market": ("SE",)})])  # an upsert brings it back
    assert passing(store, {"market": ["SE"]}) == [0, 4]


def test_save_and_load_round_trip_including_writes(tmp_path: Path) -> None:
    store = AttributeStore.build(ITEMS)
    store.set([5], [ItemAttributes({"genre": ("jazz", "på svenska")}, "artist:ü")])
    store.clear([2])
    store.save(tmp_path / "attributes.npz")
    loaded = AttributeStore.load(tmp_path / "attributes.npz", 6)
    for allow, deny in [({"market": ["US", "SE", "DE"]}, {}), ({"genre": ["på svenska"]}, {}), ({}, {"x": ["y"]})]:
        assert passing(loaded, allow, deny) == passing(store, allow, deny)
    assert loaded.table.tags.tolist() == store.table.tags.tolist()
    assert not loaded.table.any_changed  # loaded items are as the file says
    with pytest.raises(ArtifactError, match="for 7 labels"):
        AttributeStore.load(tmp_path / "attributes.npz", 7)


def test_a_lying_attributes_file_is_refused_naming_it(tmp_path: Path) -> None:
    store = AttributeStore.build(ITEMS)
    store.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as data:
        arrays = dict(data)
    arrays["postings"] = arrays["postings"].copy()
    arrays["postings"][0] = 40
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ArtifactError, match=r"bad\.npz: a posting names a label outside 0 \.\. 4"):
        AttributeStore.load(tmp_path / "bad.npz", 5)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"junk\.npz: unreadable attributes"):
        AttributeStore.load(tmp_path / "junk.npz", 5)


def test_attribute_and_filter_validation_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        ItemAttributes.create([("market", ["US"]), ("market", ["SE"])], field="items[3].attributes")
    assert caught.value.field == "items[3].attributes.restricts[1].namespace"
    with pytest.raises(InvalidArgument) as caught:
        Filter.create(deny=[("explicit", [])], field="overrides[2].filter")
    assert caught.value.field == "overrides[2].filter.deny[0].tokens"
    with pytest.raises(InvalidArgument) as caught:
        Filter.create(exclude_ids=[f"id{i}" for i in range(10_001)])
    assert caught.value.field == "filter.exclude_ids"
    assert "10,001" in caught.value.message
    assert Filter.create() is None
    repeated = Filter.create(allow=[("market", ["US", "SE", "US"])])
    assert repeated is not None
    assert repeated.allow == {"market": ("US", "SE", "US")}  # as sent: none dropped
    assert ItemAttributes.create({"market": ["US", "SE", "US"]}).restricts == {"market": ("US", "SE")}
    assert Filter.create(exclude_ids=["a"] * 10_000) is not None
    hashes = np.arange(9_001, dtype=np.uint64)  # as an in-process caller holds them: a numpy array
    with pytest.raises(InvalidArgument) as caught:
        Filter.create(exclude_ids=["a"] * 1_000, exclude_id_hashes=hashes, field="overrides[1].filter")
    assert caught.value.field == "overrides[1].filter.exclude_id_hashes"
    assert "hold 10,001 ids together" in caught.value.message
    made = Filter.create(exclude_id_hashes=hashes)
    assert made is not None
    assert made.exclude_id_hashes.tolist() == hashes.tolist()
    assert not made.exclude_id_hashes.flags.writeable  # the filter's own copy, read-only


def test_artifact_keeps_attributes_and_vectors_and_old_artifacts_load_without(tmp_path: Path) -> None:
    base = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    path = support.build_artifact(tmp_path / "plain", base, backend="hnsw", metric="l2")  # no attributes
    assert not {artifact.ATTRIBUTES, artifact.FILTER_VECTORS} & set(artifact.read_manifest(path).files)
    builder.build(tmp_path / "attrs", base, None, backend="hnsw", metric=Metric.L2, name="t", attributes=ITEMS)
    files = artifact.read_manifest(tmp_path / "attrs").files
    assert {artifact.ATTRIBUTES, artifact.FILTER_VECTORS} <= set(files)
    loaded = artifact.load(tmp_path / "attrs")
    assert loaded.filter_vectors is not None
    assert np.array_equal(loaded.filter_vectors, base)
    assert loaded.attributes is not None
    assert passing(loaded.attributes, {"market": ["DE"]}) == [2]

    old = artifact.load(FIXTURES / "hnsw")  # format v1, written before attributes existed
    assert old.filter_vectors is None
    assert old.attributes is not None
    assert old.attributes.table.live_count == 40
    with pytest.raises(InvalidArgument, match="2 attribute sets for 5 vectors"):
        builder.build(tmp_path / "short", base, None, backend="hnsw", metric=Metric.L2, name="t", attributes=ITEMS[:2])


def test_filters_on_an_artifact_without_attributes() -> None:
    index = ServedIndex("old", artifact.load(FIXTURES / "exact"))
    query = index.backend.get_vectors(np.array([0], np.int64))
    params = [index.default_params]
    allow = Filter.create(allow=[("market", ["US"])])
    deny = Filter.create(deny=[("market", ["US"])], exclude_ids=["fixture:00", "no-such-id"])
    nothing, everything = index.planner.search(np.vstack([query, query]), [5, 5], params * 2, [allow, deny])
    assert len(nothing.labels) == 0
    assert nothing.fewer_than_k
    assert len(everything.labels) == 5
    assert not everything.fewer_than_k
    expected = index.nearest(query, 6, index.default_params)[0][0][1:]  # all pass but the excluded nearest
    assert everything.labels.tolist() == expected.tolist()


def test_jsonl_attributes_are_read_and_built_into_the_artifact(tmp_path: Path) -> None:
    lines = [
        {
            "id": "t1",
            "vector": [0.0, 1.0],
            "restricts": {"market": ["US", "SE"], "explicit": [False]},
            "crowding_tag": 7,
        },
        {"id": "t2", "vector": [1.0, 0.0], "restricts": {"year": [2024]}},
        {"id": "t3", "vector": [1.0, 1.0]},
    ]
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    _, ids, attributes = load_items(source)
    assert ids == ["t1", "t2", "t3"]
    assert attributes == [
        ItemAttributes({"market": ("US", "SE"), "explicit": ("false",)}, "7"),
        ItemAttributes({"year": ("2024",)}, ""),
        ItemAttributes({}, ""),
    ]
    assert main(["build", str(source), "--out", str(tmp_path / "built"), "--backend", "exact", "--threads", "1"]) == 0
    loaded = artifact.load(tmp_path / "built")
    assert loaded.attributes is not None
    assert passing(loaded.attributes, {"explicit": ["false"]}) == [0]

    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "a", "vector": [1.0]}) + "\n")
    assert load_items(plain)[2] is None  # no attributes at all: the artifact gets none

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "vector": [1.0], "restricts": {"market": "US"}}) + "\n")
    with pytest.raises(InvalidArgument, match=r"bad\.jsonl:1: \"restricts\" must be an object"):
        load_items(bad)
    bad.write_text(json.dumps({"id": "a", "vector": [1.0], "restricts": {"": ["US"]}}) + "\n")
    with pytest.raises(InvalidArgument, match=r"bad\.jsonl:1\.restricts\[0\]\.namespace is empty"):
        load_items(bad)
