"""Artifacts are verified before they are served: every kind of damage is refused, naming the file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from flux_api.v1 import types_pb2
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.errors import ArtifactError
from flux_core.storage import artifact
from flux_core.storage.ids import Ids
from tests import support


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base, _ = support.dataset(n=300, dimension=8, queries=1)
    root = tmp_path_factory.mktemp("pristine")
    return {b: support.build_artifact(root / b, base, backend=b, metric="l2") for b in ("exact", "hnsw", "annoy")}


def damaged_copy(pristine: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    copy = tmp_path / pristine.name
    shutil.copytree(pristine, copy)
    damage(copy)
    return copy


def main_file(path: Path) -> Path:
    """The backend's largest file: the one a corruption would hurt most."""
    return max(
        (p for p in path.iterdir() if p.name not in {"manifest.json", "ids.json", "canary.npz"}),
        key=lambda p: p.stat().st_size,
    )


def flip_a_byte(path: Path) -> None:
    target = main_file(path)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    target = main_file(path)
    target.write_bytes(target.read_bytes()[:-100])


def remove(path: Path) -> None:
    main_file(path).unlink()


def change_manifest(key: str, value: object) -> Callable[[Path], None]:
    """A manifest that disagrees with the data, with checksums left intact (as a careless edit would)."""

    def damage(path: Path) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        manifest[key] = value
        (path / "manifest.json").write_text(json.dumps(manifest))

    return damage


BACKENDS = ("exact", "hnsw", "annoy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flipped_byte_is_refused(pristine: dict[str, Path], tmp_path: Path, backend: str) -> None:
    path = damaged_copy(pristine[backend], tmp_path, flip_a_byte)
    with pytest.raises(ArtifactError, match=rf"{main_file(path).name}: checksum mismatch"):
        artifact.load(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_file_is_refused(pristine: dict[str, Path], tmp_path: Path, backend: str) -> None:
    path = damaged_copy(pristine[backend], tmp_path, truncate)
    with pytest.raises(
        ArtifactError, match=rf"{main_file(path).name}: \d+ bytes, the manifest says \d+ \(truncated\?\)"
    ):
        artifact.load(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_file_is_refused(pristine: dict[str, Path], tmp_path: Path, backend: str) -> None:
    name = main_file(pristine[backend]).name
    path = damaged_copy(pristine[backend], tmp_path, remove)
    with pytest.raises(ArtifactError, match=rf"{name}: missing \(listed in manifest.json\)"):
        artifact.load(path)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("count", 299, "ids.npy: holds |S11 (300,); the manifest says 299 ids"),
        ("dimension", 16, "backend could not load the artifact"),
        ("backend", "nope", "no backend named 'nope'"),
    ],
)
def test_a_manifest_that_disagrees_with_the_data_is_refused(
    pristine: dict[str, Path], tmp_path: Path, backend: str, key: str, value: object, fragment: str
) -> None:
    path = damaged_copy(pristine[backend], tmp_path, change_manifest(key, value))
    with pytest.raises(Exception) as caught:  # noqa: PT011 (the backend case is a BackendError)
        artifact.load(path)
    assert fragment in str(caught.value)
    assert str(tmp_path) not in str(caught.value)  # files are named inside the artifact (callers see this)


@pytest.mark.parametrize(
    ("held", "said"),
    [
        ("ids.json", r"ids.json: expected a list of 300 strings"),  # an artifact without ids.npy (as before it)
        ("ids.npy", r"ids.npy: holds \|S\d+ \(299,\); the manifest says 300 ids"),
    ],
)
def test_ids_that_disagree_with_the_manifest_are_refused(
    pristine: dict[str, Path], tmp_path: Path, held: str, said: str
) -> None:
    def drop_an_id(path: Path) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        if held == "ids.json":
            (path / "ids.json").write_text(json.dumps(json.loads((path / "ids.json").read_text())[:-1]))
            (path / "ids.npy").unlink()
            del manifest["files"]["ids.npy"]
        else:
            np.save(path / "ids.npy", np.load(path / "ids.npy")[:-1])
        manifest["files"][held] = artifact._describe(path / held)  # a consistent checksum
        (path / "manifest.json").write_text(json.dumps(manifest))

    path = damaged_copy(pristine["hnsw"], tmp_path, drop_an_id)
    with pytest.raises(ArtifactError, match=said):
        artifact.load(path)


def test_ids_are_kept_packed_beside_the_json_when_that_is_smaller(tmp_path: Path) -> None:
    """The server reads ids.npy (one read, no Python object per id); ids.json stays for tools and
    for ids that do not pack (very uneven lengths, NUL characters)."""
    vectors = np.eye(4, 8, dtype=np.float32)
    for name, ids, packs in [
        ("even", ["a:1", "b:22", "c:333", "d:\u00e94"], True),
        ("uneven", ["a", "b", "c", "d" * 1000], False),
        ("nul", ["a", "b\0", "c", "d"], False),
    ]:
        path = support.build_artifact(tmp_path / name, vectors, backend="exact", metric="l2", ids=ids)
        assert (path / "ids.npy").exists() == packs
        assert json.loads((path / "ids.json").read_text()) == ids
        loaded = artifact.load(path)
        assert loaded.ids.dtype.kind == ("S" if packs else "O")
        assert [i.decode() if isinstance(i, bytes) else i for i in loaded.ids.tolist()] == ids


def test_a_manifest_that_is_not_json_is_refused(pristine: dict[str, Path], tmp_path: Path) -> None:
    path = damaged_copy(pristine["exact"], tmp_path, lambda p: (p / "manifest.json").write_text("{not json"))
    with pytest.raises(ArtifactError, match=r"manifest.json: not a valid manifest"):
        artifact.load(path)


def test_a_file_name_escaping_the_artifact_is_refused(pristine: dict[str, Path], tmp_path: Path) -> None:
    def escape(path: Path) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 1}
        (path / "manifest.json").write_text(json.dumps(manifest))

    path = damaged_copy(pristine["exact"], tmp_path, escape)
    with pytest.raises(ArtifactError, match=r"points outside the artifact"):
        artifact.load(path)


def test_artifacts_are_immutable(pristine: dict[str, Path]) -> None:
    loaded = artifact.load(pristine["exact"])
    ids = Ids(loaded.ids).snapshot()
    with pytest.raises(ArtifactError, match="already exists; artifacts are immutable"):
        artifact.write(pristine["exact"], loaded.backend, ids, name="x", version=2, build_params={})


def test_a_server_refuses_damaged_artifacts_and_keeps_serving_the_rest(
    pristine: dict[str, Path], tmp_path: Path
) -> None:
    damages = {"flipped": flip_a_byte, "truncated": truncate, "missing": remove, "lying": change_manifest("count", 7)}
    indexes = [{"name": "good", "path": str(pristine["hnsw"])}]
    for name, damage in damages.items():
        folder = tmp_path / name
        folder.mkdir()
        indexes.append({"name": name, "path": str(damaged_copy(pristine["annoy"], folder, damage))})
    with support.running_server(support.server_config(indexes)) as server, support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        query = types_pb2.FloatVectors(dimension=8, data=np.ones(8, "<f4").tobytes())
        for name in damages:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Search(pb.SearchRequest(index=name, vector=query, k=3))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"index {name!r} failed to load" in caught.value.details()
            assert "index.ann" in caught.value.details() or "the manifest says 7 ids" in caught.value.details()
        assert len(stub.Search(pb.SearchRequest(index="good", vector=query, k=3)).neighbors.ids) == 3
