"""The Go stubs, proven against a live server: the example builds from Debian's packages, finds the Python
client's neighbours and reads the reasons of errors from their google.rpc details.

``make go`` installs the Debian packages and builds the stubs and the example; CI runs it before the tests
and sets FLUX_REQUIRE_GO=1, so there this test fails rather than skips when Go is missing. Elsewhere it is
skipped until ``make go`` has been run once.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from flux import __version__ as server_version
from flux.server import FluxServer
from flux_client import CONTRACT_VERSION, Filter, FluxClient

REPO = Path(__file__).resolve().parent.parent
INDEX = "hnsw-l2"  # served by the shared test server (tests/conftest.py)
K = 10
GO_PACKAGE = "flux.vectors/api/flux_api/v1;fluxapiv1"


def make(target: str) -> str:
    done = subprocess.run(["make", "-s", target], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def test_every_proto_file_names_the_same_go_package() -> None:
    """buf breaking lets go_package go from unset to set once (protos/buf.yaml); this pins its value."""
    files = sorted((REPO / "protos" / "flux_api" / "v1").glob("*.proto"))
    assert files
    for path in files:
        options = re.findall(r'^option go_package = "([^"]*)";', path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert options == [GO_PACKAGE], path.name


@pytest.fixture(scope="module")
def example() -> str:
    """The example program, built here and now from the current protos."""
    missing = make("go-missing")
    if missing:
        message = f"the Go toolchain is not installed (missing Debian packages: {missing}); run `make go`"
        if os.environ.get("FLUX_REQUIRE_GO"):
            pytest.fail(message)
        pytest.skip(message)
    make("go-build")
    return make("go-example")


def test_the_go_example_finds_the_same_neighbours_and_reads_error_details(
    example: str, server: FluxServer, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    _, queries = data
    queries = queries[:8]
    path = tmp_path / "queries.f32"
    queries.astype("<f4").tofile(path)

    done = subprocess.run(
        [example, server.address, INDEX, str(path), str(K)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, list[list[str]]] = {}
    for line in done.stdout.splitlines():
        kind, *fields = line.split("\t")
        out.setdefault(kind, []).append(fields)

    assert out["health"] == [["SERVING"]]
    [(contract, software, backends)] = out["server"]
    assert (contract, software) == (CONTRACT_VERSION, server_version)
    assert int(backends) >= 4
    assert out["index"] == [[INDEX, "64", "5000", "3"]]
    with FluxClient(server.address) as flux:
        singles = [flux.search(INDEX, q, k=K) for q in queries]
        batch = flux.batch_search(INDEX, queries, k=K)
    for kind in ("search", "batch"):
        rows = out[kind]
        assert [int(r[0]) for r in rows] == list(range(len(queries))), kind
        for row, (_, version, ids, distances) in enumerate(rows):
            expected = singles[row] if kind == "search" else batch
            expected_ids = expected.ids if kind == "search" else expected.ids[row]
            expected_distances = expected.distances if kind == "search" else expected.distances[row]
            assert int(version) == expected.version
            assert ids.split(",") == expected_ids.tolist(), (kind, row)
            # Go prints each float32 in its shortest round-trip form: the same bits come back.
            assert np.array(distances.split(","), dtype=np.float32).tolist() == expected_distances.tolist()

    # The first query's two nearest left out by their hashes, which Go computed: as the ids leave them out.
    with FluxClient(server.address) as flux:
        unplayed = flux.search(INDEX, queries[0], k=K, filter=Filter(exclude_ids=singles[0].ids[:2].tolist()))
    [(_, _, ids, _)] = out["unplayed"]
    assert ids.split(",") == unplayed.ids.tolist()

    [(code, trailer, reason, domain, message)] = out["error"]
    assert (code, trailer, reason, domain) == ("NotFound", "INDEX_NOT_FOUND", "INDEX_NOT_FOUND", "flux.vectors")
    assert f"{INDEX}-missing" in message
    assert out["invalid"] == [["InvalidArgument", "DIMENSION_MISMATCH", "vector.dimension", INDEX]]
