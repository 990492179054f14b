"""``flux backends`` lists the real entry points (Flux's own and a temporary plugin distribution), what
each can do and takes, and a broken plugin with the error that ``flux build`` would give."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_cli import flux
from tests.test_registry import GOOD, install_distribution


@pytest.fixture
def plugins(tmp_path: Path) -> dict[str, str]:
    """A good plugin and a broken one (its library is not installed), installed where a `flux` process finds them."""
    site = tmp_path / "site"
    site.mkdir()
    install_distribution(site, "flux_plugin_good", {"plugin-good": "listed_good:Plugin"}, {"listed_good": GOOD})
    install_distribution(
        site,
        "flux_plugin_needy",
        {"plugin-needy": "listed_needy:Plugin [fast]"},
        {"listed_needy": "import some_library_that_is_not_installed\n"},
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_lists_every_backend_with_its_origin_capabilities_and_params(plugins: dict[str, str]) -> None:
    result = flux("backends", check=False, **plugins)
    assert result.returncode == 1, result.stdout + result.stderr  # one plugin cannot be loaded
    out = result.stdout
    assert "hnsw: flux-backends 0.1.0 (flux_backends.hnsw:HnswBackend [hnsw])" in out
    assert "  capabilities  mutable, supports_delete, thread_safe_search\n" in out
    assert "search params ef  64  (1 to 100000)" in out
    assert "M                16  (2 to 200)" in out
    assert "annoy: flux-backends 0.1.0" in out
    assert "capabilities  mmap_load, thread_safe_search" in out
    assert "exact: flux-backends 0.1.0 (flux_backends.exact:ExactBackend)" in out
    assert "plugin-good: flux_plugin_good 1.2.3 (listed_good:Plugin)" in out
    needy = "plugin-needy: flux_plugin_needy 1.2.3 (listed_needy:Plugin [fast])\n  BROKEN        backend 'plugin-needy'"
    assert needy in out
    assert "No module named 'some_library_that_is_not_installed'" in out
    assert "pip install 'flux_plugin_needy[fast]'" in out
    assert result.stderr.strip().endswith("cannot be loaded: plugin-needy"), result.stderr


def test_json_has_one_object_per_backend_and_exits_0_when_all_load(plugins: dict[str, str]) -> None:
    listed = {item["name"]: item for item in json.loads(flux("backends", "--json", check=False, **plugins).stdout)}
    assert {"exact", "hnsw", "annoy", "voyager", "plugin-good", "plugin-needy"} <= set(listed)
    voyager = listed["voyager"]
    assert voyager["library"].startswith("voyager ")
    assert voyager["search_params"]["ef"] == {
        "default": 64,
        "minimum": 1,
        "maximum": 100_000,
        "integer": True,
        "doc": "search beam, at least k is used; more gives higher recall, slower",
    }
    assert set(voyager["build_params"]) == {"M", "ef_construction", "seed"}
    assert listed["plugin-good"]["capabilities"] == listed["exact"]["capabilities"]
    assert listed["plugin-needy"]["error"].startswith("backend 'plugin-needy' (listed_needy:Plugin [fast], from ")
    assert all(not item["error"] for name, item in listed.items() if name != "plugin-needy")

    result = flux("backends")  # Flux's own backends only: every one loads
    assert "plugin-needy" not in result.stdout
    assert result.stderr == ""
