"""Config validation: errors name the file and the key; good configs parse to typed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux import config
from flux_core.backend import Metric
from flux_core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flux.yaml"
    path.write_text(text)
    return path


def test_a_good_config_parses_and_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server: {host: 0.0.0.0, port: 6000, threads: 8}
limits: {max_k: 100}
indexes:
  - name: tracks
    path: data/tracks
    backend: hnsw
    dimension: 128
    metric: cosine
    search_params: {ef: 128}
""",
    )
    loaded = config.load(path)
    assert (loaded.server.host, loaded.server.port, loaded.server.threads) == ("0.0.0.0", 6000, 8)
    assert loaded.limits.max_k == 100
    assert loaded.limits.max_batch == 1024
    index = loaded.indexes[0]
    assert index.path == tmp_path / "data" / "tracks"
    assert (index.backend, index.dimension, index.metric, index.search_params) == (
        "hnsw",
        128,
        Metric.COSINE,
        {"ef": 128},
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("indexes: [{name: a, path: x, metric: euclid}]", "indexes[0].metric: Input should be 'l2', 'cosine' or 'ip'"),
        ("indexes: [{name: a}]", "indexes[0].path: Field required"),
        ("indexes: [{name: a, path: x, pth: y}]", "indexes[0].pth: unknown key"),
        ("server: {port: 70000}", "server.port: Input should be less than or equal to 65535"),
        ("limits: {max_k: 0}", "limits.max_k: Input should be greater than or equal to 1"),
        ("indexes: [{name: a, path: x}, {name: a, path: y}]", "indexes[1].name: 'a' is used by an earlier index"),
        ("indexes: [{name: 'bad name!', path: x}]", "indexes[0].name: must be 1-128 letters"),
        ("- just a list", "the top level must be a mapping"),
        ("server: [unclosed", "not valid YAML"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in caught.value.message
    assert fragment in caught.value.message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        config.load(tmp_path / "nope.yaml")


def test_environment_overrides_apply_to_a_config_made_in_code_and_keep_its_defaults(tmp_path: Path) -> None:
    made = config.parse(
        {"server": {"host": "127.0.0.1", "port": 50051}, "indexes": [{"name": "demo", "path": str(tmp_path)}]},
        source="built-in demo config",
    )
    assert config.with_environment(made, source="demo", environ={"HOME": "/root"}) is made  # nothing to apply
    changed = config.with_environment(
        made, source="demo", environ={"FLUX_SERVER__PORT": "6000", "FLUX_INDEXES__0__SEARCH_PARAMS": "{ef: 99}"}
    )
    assert (changed.server.port, changed.server.host, changed.indexes[0].search_params) == (
        6000,
        "127.0.0.1",
        {"ef": 99},
    )
    assert changed.server.threads == made.server.threads
    assert changed.indexes[0].path == made.indexes[0].path
    with pytest.raises(ConfigError) as caught:
        config.with_environment(made, source="built-in demo config", environ={"FLUX_SERVER__PORT": "high"})
    assert str(caught.value).startswith("built-in demo config: server.port")
    assert "(set by the environment variable FLUX_SERVER__PORT)" in str(caught.value)
