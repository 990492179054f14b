"""Backend discovery through the flux.backends entry point group, with real (temporary) distributions."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flux_core.backend import Backend
from flux_core.errors import BackendError, NotFound
from flux_core.storage import registry


def install_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution: a .dist-info folder plus its modules, as pip would leave them."""
    dist_info = site / f"{name}-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[flux.backends]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(registry._loaded):
        if name.startswith("plugin"):
            del registry._loaded[name]


GOOD = """
    from flux_backends.exact import ExactBackend

    class Plugin(ExactBackend):
        name = "plugin-good"
"""


def test_the_in_tree_backends_come_from_entry_points() -> None:
    assert {"exact", "hnsw", "annoy"} <= set(registry.names())
    assert registry.get("hnsw").__module__ == "flux_backends.hnsw"


def test_an_installed_plugin_is_found_and_validated(site: Path) -> None:
    install_distribution(site, "flux_plugin_good", {"plugin-good": "good_mod:Plugin"}, {"good_mod": GOOD})
    assert "plugin-good" in registry.names()
    assert registry.get("plugin-good").name == "plugin-good"


def test_a_missing_optional_dependency_gives_an_install_hint(site: Path) -> None:
    install_distribution(
        site,
        "flux_plugin_needy",
        {"plugin-needy": "needy_mod:Plugin [fast]"},
        {"needy_mod": "import some_library_that_is_not_installed\n"},
    )
    with pytest.raises(BackendError) as caught:
        registry.get("plugin-needy")
    message = caught.value.message
    assert "backend 'plugin-needy'" in message
    assert "distribution flux_plugin_needy 1.2.3" in message
    assert "No module named 'some_library_that_is_not_installed'" in message
    assert "pip install 'flux_plugin_needy[fast]'" in message


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("Plugin = 42\n", "not a subclass of flux_core.backend.Backend"),
        (
            GOOD.replace('"plugin-good"', '"other-name"'),
            "declares name 'other-name', but is registered as 'plugin-bad'",
        ),
        (GOOD + "        api_version = 99\n", "implements backend API version 99; this Flux supports 1"),
        (
            "from flux_core.backend import Backend\nclass Plugin(Backend):\n    name = 'plugin-bad'\n",
            "does not implement",
        ),
        ("raise RuntimeError('boom at import')\n", "failed while importing: RuntimeError('boom at import')"),
    ],
)
def test_an_invalid_plugin_is_refused_naming_it_and_its_distribution(site: Path, source: str, fragment: str) -> None:
    module = f"bad_mod_{uuid.uuid4().hex}"  # a fresh module: Python caches imports by name
    install_distribution(
        site,
        "flux_plugin_bad",
        {"plugin-bad": f"{module}:Plugin"},
        {module: source.replace("plugin-good", "plugin-bad")},
    )
    with pytest.raises(BackendError) as caught:
        registry.get("plugin-bad")
    assert "distribution flux_plugin_bad 1.2.3" in caught.value.message
    assert fragment in caught.value.message


def test_a_name_declared_by_two_distributions_is_refused(site: Path) -> None:
    install_distribution(site, "flux_plugin_one", {"plugin-twice": "one_mod:Plugin"}, {"one_mod": GOOD})
    install_distribution(site, "flux_plugin_two", {"plugin-twice": "two_mod:Plugin"}, {"two_mod": GOOD})
    with pytest.raises(BackendError, match=r"declared twice, by distribution flux_plugin_\w+ 1.2.3 and distribution"):
        registry.get("plugin-twice")


def test_an_unknown_name_lists_the_installed_backends() -> None:
    with pytest.raises(NotFound, match=r"no backend named 'nope' is installed \(installed: .*annoy.*exact.*hnsw"):
        registry.get("nope")


def test_runtime_registration_refuses_a_taken_name_unless_replacing() -> None:
    exact = registry.get("exact")

    class Custom(exact):  # type: ignore[valid-type,misc]
        name = "exact"

    with pytest.raises(BackendError, match="backend name 'exact' is already taken"):
        registry.register("exact", Custom)
    registry.register("exact", Custom, replace=True)
    try:
        assert registry.get("exact") is Custom
    finally:
        registry.unregister("exact")
    assert registry.get("exact") is exact


def test_runtime_registration_validates_the_class() -> None:
    class Incomplete(Backend):
        name = "incomplete"

    with pytest.raises(BackendError, match="does not implement"):
        registry.register("incomplete", Incomplete)
