"""Sharded versions without Beam: the sharding function, the sharded manifest and its checks
(flux_core.storage.sharded), the version machinery finding them, and `flux inspect` verifying them.

The versions here are built shard by shard with the ordinary builder, as a pipeline worker does;
tests/test_beam.py builds them with the Beam pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from flux.core.serving import versions
from flux_core.backend import Metric
from flux_core.errors import ArtifactError, InvalidArgument
from flux_core.storage import artifact, builder, sharded
from tests.test_cli import flux


def hex_shard(key: str, shards: int) -> int:
    """The sharding function as another implementation (a router in another language) would write it."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) % shards


def build_sharded(
    source: Path,
    vectors: np.ndarray,
    ids: list[str],
    *,
    shards: int,
    version: int = 1,
    key_of: Callable[[str], str] | None = None,
    misplace: str | None = None,
) -> Path:
    """A sharded version built shard by shard; ``misplace`` puts that id into the shard after its own."""
    folder = source / str(version)
    folder.mkdir(parents=True)
    keys = ids if key_of is None else [key_of(i) for i in ids]
    assignment = sharded.assign(keys, shards)
    if misplace is not None:
        assignment[ids.index(misplace)] = (assignment[ids.index(misplace)] + 1) % shards
    for index in range(shards):
        rows = np.flatnonzero(assignment == index)
        builder.build(
            folder / sharded.shard_name(index, shards),
            vectors[rows],
            [ids[r] for r in rows],
            backend="exact",
            metric=Metric.L2,
            name="docs",
            version=version,
        )
        if key_of is not None:
            (folder / sharded.keys_name(index, shards)).write_text(json.dumps([keys[r] for r in rows]))
    manifest = sharded.ShardedManifest(
        name="docs",
        version=version,
        backend="exact",
        library=artifact.read_manifest(folder / sharded.shard_name(0, shards)).library,
        dimension=vectors.shape[1],
        metric=Metric.L2,
        count=len(ids),
        sharding=sharded.Sharding(shards=shards, key="tenant" if key_of else sharded.ID_KEY),
        shards=tuple(sharded.describe_shard(folder, i, shards) for i in range(shards)),
        built_by={"test": "build_sharded"},
    )
    sharded.write(folder, manifest)
    return folder


@pytest.fixture
def items() -> tuple[np.ndarray, list[str]]:
    vectors = np.random.default_rng(7).standard_normal((600, 8)).astype(np.float32)
    return vectors, [f"doc:{i}" for i in range(600)]


def test_the_sharding_function_is_sha256_mod_and_spreads_ids_evenly() -> None:
    # Fixed values: a router written elsewhere must agree with these for ever.
    assert sharded.shard_of("track:1", 16) == 3
    assert sharded.shard_of("item:000042", 4) == 2
    assert sharded.shard_of("doc:7", 3) == 2
    ids = [f"item:{i:06d}" for i in range(40_000)]
    assignment = sharded.assign(ids, 8)
    assert assignment.tolist() == [hex_shard(i, 8) for i in ids]
    sizes = np.bincount(assignment, minlength=8)
    assert sizes.max() / sizes.min() < 1.05
    assert sharded.shard_of("ünïcode-id", 5) == hex_shard("ünïcode-id", 5)
    with pytest.raises(InvalidArgument, match="shards must be at least 1"):
        sharded.shard_of("x", 0)
    assert sharded.key_text(7) == "7"
    assert sharded.key_text(True) == "true"
    assert sharded.key_text("7") == "7"


def test_a_sharded_version_verifies_and_reports_every_shard(
    tmp_path: Path, items: tuple[np.ndarray, list[str]]
) -> None:
    vectors, ids = items
    folder = build_sharded(tmp_path, vectors, ids, shards=3)
    manifest = sharded.read(folder)
    assert manifest == sharded.ShardedManifest.from_json(manifest.to_json())
    assert [s.path for s in manifest.shards] == [f"shard-0000{i}-of-00003" for i in range(3)]
    reports = sharded.verify(folder, open_shards=True)
    assert [r.count for r in reports] == [s.count for s in manifest.shards]
    assert sum(r.count for r in reports) == 600
    assert min(r.count for r in reports) > 150
    assert all(r.stats is not None and r.stats["items"] == r.count for r in reports)
    for shard in manifest.shards:  # every id is in the shard its hash names
        held = json.loads((folder / shard.path / artifact.IDS).read_text())
        assert {hex_shard(i, 3) for i in held} == {shard.index}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # the manifest's temporary file is gone
    with pytest.raises(ArtifactError, match="is a sharded version already"):
        sharded.write(folder, manifest)


def test_verify_names_a_corrupt_shard_file(tmp_path: Path, items: tuple[np.ndarray, list[str]]) -> None:
    vectors, ids = items
    folder = build_sharded(tmp_path, vectors, ids, shards=3)
    stored = folder / "shard-00001-of-00003" / "vectors.npy"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"^shard-00001-of-00003/vectors.npy: checksum mismatch"):
        sharded.verify(folder)


def test_verify_refuses_an_id_in_the_wrong_shard(tmp_path: Path, items: tuple[np.ndarray, list[str]]) -> None:
    vectors, ids = items
    folder = build_sharded(tmp_path, vectors, ids, shards=4, misplace="doc:42")
    home = hex_shard("doc:42", 4)
    with pytest.raises(ArtifactError, match=rf"holds id 'doc:42', whose id 'doc:42' .* sends to shard {home} \(1 item"):
        sharded.verify(folder)


def test_verify_refuses_a_shard_that_is_not_the_one_recorded(
    tmp_path: Path, items: tuple[np.ndarray, list[str]]
) -> None:
    vectors, ids = items
    folder = build_sharded(tmp_path, vectors, ids, shards=2)
    other = build_sharded(tmp_path / "other", vectors * 2, ids, shards=2)  # same ids, other vectors
    shard = folder / "shard-00000-of-00002"
    for path in shard.iterdir():
        path.unlink()
    for path in (other / "shard-00000-of-00002").iterdir():
        (shard / path.name).write_bytes(path.read_bytes())
    with pytest.raises(
        ArtifactError, match=r"^shard-00000-of-00002/manifest.json: checksum mismatch with sharded.json"
    ):
        sharded.verify(folder)


def test_versions_sharded_by_a_key_column_check_the_keys(tmp_path: Path, items: tuple[np.ndarray, list[str]]) -> None:
    vectors, ids = items
    tenant = {i: f"tenant:{n % 7}" for n, i in enumerate(ids)}
    folder = build_sharded(tmp_path, vectors, ids, shards=3, key_of=tenant.__getitem__)
    manifest = sharded.read(folder)
    assert manifest.sharding.key == "tenant"
    assert all(s.keys is not None and s.keys["path"] == f"{s.path}.keys.json" for s in manifest.shards)
    sharded.verify(folder)
    for shard in manifest.shards:  # a tenant's items are all in one shard
        held = json.loads((folder / shard.path / artifact.IDS).read_text())
        assert {hex_shard(tenant[i], 3) for i in held} == {shard.index}

    keys = folder / manifest.shards[1].keys["path"]  # type: ignore[index]
    keys.write_text(keys.read_text().replace("tenant:", "tenamt:", 1))
    with pytest.raises(ArtifactError, match=r"shard-00001-of-00003.keys.json: checksum or size mismatch"):
        sharded.verify(folder)


def test_the_manifest_refuses_what_contradicts_itself(tmp_path: Path, items: tuple[np.ndarray, list[str]]) -> None:
    vectors, ids = items
    good = sharded.read(build_sharded(tmp_path, vectors, ids, shards=2))
    first, second = good.shards
    bad = {
        "format_version 2 is not supported": dataclasses.replace(good, format_version=2),
        "sharding function 'crc32' is not known": dataclasses.replace(
            good, sharding=dataclasses.replace(good.sharding, function="crc32")
        ),
        r"lists shards \[1, 0\], expected 0 .. 1 in order": dataclasses.replace(good, shards=(second, first)),
        "is not a plain folder name": dataclasses.replace(
            good, shards=(dataclasses.replace(first, path="../x"), second)
        ),
        "the shards hold 600 items, count says 601": dataclasses.replace(good, count=601),
        "must list a keys file exactly when sharded by a key column": dataclasses.replace(
            good, sharding=dataclasses.replace(good.sharding, key="tenant")
        ),
    }
    for message, manifest in bad.items():
        with pytest.raises(ArtifactError, match=message):
            sharded.ShardedManifest.from_json(manifest.to_json())
    with pytest.raises(ArtifactError, match="not a valid sharded manifest"):
        sharded.ShardedManifest.from_json('{"format_version": 1, "name": "x"}')
    with pytest.raises(ArtifactError, match=r"sharded\.json: missing"):
        sharded.read(tmp_path)


def test_the_version_machinery_takes_a_sharded_folder_as_a_version(
    tmp_path: Path, items: tuple[np.ndarray, list[str]]
) -> None:
    vectors, ids = items
    source = tmp_path / "docs"
    builder.build(source / "1", vectors, ids, backend="exact", metric=Metric.L2, name="docs", version=1)
    build_sharded(source, vectors, ids, shards=2, version=2)
    unfinished = source / "3" / "shard-00000-of-00002"  # shards published, sharded.json not yet
    builder.build(unfinished, vectors[:5], ids[:5], backend="exact", metric=Metric.L2, name="docs", version=3)
    (source / ".4.sharded-0123456789ab" / "x").mkdir(parents=True)  # a pipeline's staging folder
    (source / "notes").mkdir()

    assert versions.scan(source) == {1: source / "1", 2: source / "2"}
    assert versions.folders(source) == {1: source / "1", 2: source / "2", 3: source / "3"}
    assert versions.strays(source) == [source / "notes"]
    assert versions.is_sharded(source / "2")
    assert not versions.is_sharded(source / "1")
    assert versions.read_version(source / "2") == 2
    assert versions.verify(source / "1") == 600
    assert versions.verify(source / "2", open_shards=True) == 600
    versions.check_servable(source / "1")
    with pytest.raises(ArtifactError, match=r"this version is sharded \(2 shards\); .* through the router"):
        versions.check_servable(source / "2")
    # A path that is itself a sharded version is a source of that one version.
    assert versions.scan(source / "2") == {2: source / "2"}
    assert versions.folders(source / "2") == {}
    assert versions.strays(source / "2") == []

    (source / "2" / sharded.MANIFEST).write_text("{not json")
    assert versions.scan(source / "2") == {0: source / "2"}  # offered anyway, so that loading it says why
    with pytest.raises(ArtifactError, match="not a valid sharded manifest"):
        versions.verify(source / "2")


def test_flux_inspect_verifies_a_sharded_version(tmp_path: Path, items: tuple[np.ndarray, list[str]]) -> None:
    vectors, ids = items
    folder = build_sharded(tmp_path / "docs", vectors, ids, shards=3, version=5)
    text = flux("inspect", str(folder)).stdout
    assert f"{folder}: docs version 5, sharded, 3 shards verified" in text
    assert "sha256-mod of the id into 3 shards; every id is in its shard" in text
    counts = [s.count for s in sharded.read(folder).shards]
    for index, count in enumerate(counts):
        assert re.search(rf"shard-0000{index}-of-00003 +{count:,} items", text), text
        assert f"verified, opened with {count:,} items" in text

    shown = json.loads(flux("inspect", "--json", str(folder)).stdout)
    assert shown["sharded"]["count"] == 600
    assert shown["sharded"]["sharding"]["shards"] == 3
    assert [s["count"] for s in shown["shards"]] == counts
    assert all(s["stats"]["items"] == s["count"] for s in shown["shards"])

    ids_file = folder / "shard-00002-of-00003" / artifact.IDS
    ids_file.write_text(ids_file.read_text().replace("doc:", "dok:", 1))
    refused = flux("inspect", str(folder), check=False)
    assert refused.returncode == 2
    said = refused.stderr.strip().splitlines()[-1]  # the log before it has the full path, for the operator
    assert said == "flux inspect: shard-00002-of-00003/ids.json: checksum mismatch, the file is corrupt"
