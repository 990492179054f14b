"""Version folders Flux cannot use are refused where an operator looks (ListVersions, GetIndex), with the reason."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from flux.core.serving.manager import UNFINISHED_SECONDS
from flux_api.v1 import admin_service_pb2 as admin
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from tests import support
from tests.test_hot_swap import publish, query, serve, wait_for


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "tracks"
    publish(folder, 1)
    return folder


def listed(server_address: str) -> dict[int, admin.VersionInfo]:
    with grpc.insecure_channel(server_address) as channel:
        response = AdminServiceStub(channel).ListVersions(admin.ListVersionsRequest(index="tracks"), timeout=10)
    return {v.version: v for v in response.versions}


def test_a_version_folder_without_a_manifest_is_listed_failed_then_served_once_complete(
    source: Path, tmp_path: Path
) -> None:
    staging = publish(tmp_path / "staging", 2)
    with serve(source) as server:
        shutil.copytree(staging, source / "2", ignore=shutil.ignore_patterns("manifest.json"))  # a copy cut short
        appeared = time.monotonic()
        wait_for(lambda: 2 in listed(server.address), timeout=UNFINISHED_SECONDS + 10)
        waited = time.monotonic() - appeared
        version = listed(server.address)[2]
        assert version.state == admin.VERSION_STATE_FAILED
        assert version.error.startswith("2/manifest.json: missing")
        assert waited >= UNFINISHED_SECONDS * 0.9, "reported while the publisher may still have been copying"
        with support.channel_to(server) as channel:
            info = AdminServiceStub(channel).GetIndex(admin.GetIndexRequest(name="tracks"), timeout=10).index
        assert info.version == 1
        assert "2/manifest.json: missing" in info.error

        shutil.copy(staging / "manifest.json", source / "2" / "manifest.json")  # the copy completes
        manager = server.catalog.manager("tracks")
        wait_for(lambda: manager.active is not None and manager.active.version == 2)
        assert listed(server.address)[2].error == ""


def test_at_start_the_missing_manifest_is_named(tmp_path: Path) -> None:
    numbered = tmp_path / "numbered"
    shutil.copytree(publish(tmp_path / "staging", 1), numbered / "1", ignore=shutil.ignore_patterns("manifest.json"))
    bare = tmp_path / "bare"  # meant to be an artifact itself, its manifest lost on the way
    shutil.copytree(tmp_path / "staging" / "1", bare, ignore=shutil.ignore_patterns("manifest.json"))
    config = support.server_config([{"name": "numbered", "path": str(numbered)}, {"name": "bare", "path": str(bare)}])
    with support.running_server(config) as server, support.channel_to(server) as channel:
        stub = AdminServiceStub(channel)
        numbered_error = stub.GetIndex(admin.GetIndexRequest(name="numbered"), timeout=10).index.error
        bare_error = stub.GetIndex(admin.GetIndexRequest(name="bare"), timeout=10).index.error
        versions = stub.ListVersions(admin.ListVersionsRequest(index="numbered"), timeout=10).versions
    assert "1/manifest.json: missing" in numbered_error
    assert [(v.version, v.state) for v in versions] == [(1, admin.VERSION_STATE_FAILED)]
    assert "bare/manifest.json is missing, and it holds no numbered version folder" in bare_error


def test_a_folder_whose_manifest_names_another_version_is_refused(source: Path, tmp_path: Path) -> None:
    shutil.move(publish(tmp_path / "staging", 2), source / "8")  # built as version 2, published as folder 8
    with serve(source) as server:
        manager = server.catalog.manager("tracks")
        wait_for(lambda: any(s.version == 8 and s.state.value == "failed" for s in manager.slots()))
        version = listed(server.address)[8]
        assert version.state == admin.VERSION_STATE_FAILED
        assert "built as version 2, but its folder is 8" in version.error
        with support.channel_to(server) as channel:
            search = VectorServiceStub(channel).Search
            assert search(pb.SearchRequest(index="tracks", vector=query(), k=3), timeout=5).version == 1
            with pytest.raises(grpc.RpcError) as caught:
                search(pb.SearchRequest(index="tracks", vector=query(), k=3, version=8), timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            info = AdminServiceStub(channel).GetIndex(admin.GetIndexRequest(name="tracks"), timeout=10).index
        assert (info.version, manager.active and manager.active.version) == (1, 1)
        assert "version 8: manifest.json: the artifact was built as version 2" in info.error


def test_entries_that_are_no_version_are_passed_over_and_named_in_the_log(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    staging = publish(tmp_path / "staging", 2)
    for name in ("v3", "01", "..1", ".4.a1b2c3"):
        shutil.copytree(staging, source / name)
    with caplog.at_level(logging.WARNING, logger="flux.core.serving.manager"), serve(source) as server:
        assert set(listed(server.address)) == {1}
        warned = caplog.text
    assert "v3 is not a version folder" in warned
    assert "01 is not a version folder" in warned  # would be version 1 a second time
    assert "..1 is not a version folder" in warned  # hidden, but not a staging folder
    assert ".4.a1b2c3" not in warned  # what `flux build` and snapshots write before the rename


def test_config_check_names_the_folders_the_server_would_refuse(source: Path, tmp_path: Path) -> None:
    staging = publish(tmp_path / "staging", 2)
    shutil.copytree(staging, source / "2", ignore=shutil.ignore_patterns("manifest.json"))
    shutil.copytree(staging, source / "8")
    shutil.copytree(staging, source / "v3")
    config = tmp_path / "flux.yaml"
    config.write_text(f"indexes:\n  - name: tracks\n    path: {source}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    result = subprocess.run(
        [sys.executable, "-m", "flux", "config", "check", str(config)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert f"tracks       {source}: versions 1, 8 (latest)" in result.stdout
    assert "2/: no manifest.json, refused" in result.stdout
    assert "8/: built as version 2, refused" in result.stdout
    assert "v3: not a version folder, ignored" in result.stdout
