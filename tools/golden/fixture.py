"""The fixture of the golden examples (protos/examples/fixture.json): the indexes it describes, built
into a temporary folder, and a fresh server of them that every recording and replay starts from."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "protos" / "examples"
FIXTURE = "fixture.json"


def load_fixture(examples: Path = EXAMPLES) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((examples / FIXTURE).read_text(encoding="utf-8"))
    return fixture


def build_indexes(fixture: Mapping[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Build every version of every fixture index under ``folder``; the config's index entries."""
    from flux_core.backend import Metric
    from flux_core.storage import builder
    from flux_core.storage.attributes import ItemAttributes

    entries = []
    for index in fixture["indexes"]:
        source = folder / index["name"]
        for version, items_name in sorted(index["versions"].items(), key=lambda pair: int(pair[0])):
            items = fixture["items"][items_name]
            attributes = None
            if any("restricts" in item or "crowding_tag" in item for item in items):
                attributes = [
                    ItemAttributes.create(item.get("restricts", {}), item.get("crowding_tag", "")) for item in items
                ]
            builder.build(
                source / version,
                np.array([item["vector"] for item in items], dtype=np.float32),
                [item["id"] for item in items],
                backend=index["backend"],
                metric=Metric(index["metric"]),
                name=index["name"],
                version=int(version),
                attributes=attributes,
            )
        # poll_seconds 0: no version appears or goes while the cases run, so every answer is the same.
        entries.append({"name": index["name"], "path": str(source), "poll_seconds": 0, **index.get("config", {})})
    return entries


@contextmanager
def serve(examples: Path = EXAMPLES, *, ready_timeout: float = 60.0) -> Iterator[str]:
    """A fresh server of the fixture on 127.0.0.1 (a free port); yields its address. Its files go at exit."""
    from flux import config as flux_config
    from flux.server import build_server

    fixture = load_fixture(examples)
    with ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="flux-golden-"))
        stack.callback(shutil.rmtree, folder, True)
        raw: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.5},
            "indexes": build_indexes(fixture, folder),
            **fixture.get("config", {}),
        }
        server = build_server(flux_config.parse(raw, source=f"{examples / FIXTURE}"))
        server.start()
        stack.callback(server.stop, 0)
        if not server.wait_ready(ready_timeout):
            raise TimeoutError(f"the golden server did not load its indexes within {ready_timeout}s")
        yield server.address


def example_files(examples: Path = EXAMPLES) -> list[Path]:
    """The example files in the order they are replayed (the fixture's ``files``)."""
    return [examples / name for name in load_fixture(examples)["files"]]
