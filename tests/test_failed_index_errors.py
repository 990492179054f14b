"""A plugin's failure reaches the caller: a writable index whose first version could not be made, and
`flux query --random` on an index that is not serving."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flux_backends.exact import ExactBackend
from flux_client import FluxClient, IndexFailed
from flux_core.backend import Metric, Progress
from flux_core.storage import registry
from tests.support import running_server, server_config


class RefusesToBuild(ExactBackend):
    """A plugin whose library refuses to build, with its own exception type."""

    name = "refuses-to-build"

    @classmethod
    def build(
        cls, vectors: Any, metric: Metric, params: Any, *, threads: int = 1, progress: Progress | None = None
    ) -> ExactBackend:
        raise RuntimeError("the library cannot build an index of 0 items")


@pytest.fixture
def refusing() -> Iterator[str]:
    registry.register(RefusesToBuild.name, RefusesToBuild)
    try:
        yield RefusesToBuild.name
    finally:
        registry.unregister(RefusesToBuild.name)


def test_a_writable_index_whose_first_version_could_not_be_made_says_why(refusing: str, tmp_path: Path) -> None:
    index = {
        "name": "feed",
        "path": str(tmp_path / "feed"),
        "backend": refusing,
        "dimension": 4,
        "metric": "l2",
        "poll_seconds": 0,
        "writes": {"enabled": True, "snapshot_every": 0},
    }
    with running_server(server_config([index])) as server, FluxClient(server.address) as client:
        described = client.describe("feed")
        assert described.state == "failed"
        assert "RuntimeError: the library cannot build an index of 0 items" in described.error
        with pytest.raises(IndexFailed) as caught:
            client.search("feed", np.zeros(4, np.float32), k=1)
        assert "could not create an empty version 1" in str(caught.value)
        random = subprocess.run(
            [sys.executable, "-m", "flux", "query", "--target", server.address, "--index", "feed", "--random"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert random.returncode == 1
    assert "index 'feed' is failed, so there is no dimension to draw a vector for" in random.stderr
    assert "RuntimeError: the library cannot build" in random.stderr
