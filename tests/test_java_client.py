"""The Java stubs, proven against a live server: the example compiles and finds the Python client's neighbours.

``make java`` installs the Debian packages and builds the stubs jar; CI runs it before the
tests and sets FLUX_REQUIRE_JAVA=1, so there this test fails rather than skips when Java
is missing. Elsewhere it is skipped until ``make java`` has been run once.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flux.server import FluxServer
from flux_client import FluxClient

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "clients" / "java" / "example" / "FluxExample.java"
INDEX = "hnsw-l2"  # served by the shared test server (tests/conftest.py)
K = 10


def make(target: str) -> str:
    done = subprocess.run(["make", "-s", target], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stubs jar brought up to date, and the example compiled against it here and now."""
    missing = make("java-missing")
    if missing:
        message = f"the Java toolchain is not installed (missing Debian packages: {missing}); run `make java`"
        if os.environ.get("FLUX_REQUIRE_JAVA"):
            pytest.fail(message)
        pytest.skip(message)
    make("java-build")
    runtime = make("java-classpath")
    classes = tmp_path_factory.mktemp("java-example")
    compiled = subprocess.run(
        ["javac", "-Xlint:all", "-Xlint:-options", "-Werror", "--release", "8", "-encoding", "UTF-8",
         "-cp", runtime, "-d", str(classes), str(EXAMPLE)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    return f"{classes}:{runtime}"


def run_example(classpath: str, target: str, queries: Path) -> dict[str, list[list[str]]]:
    """Run FluxExample; its tab-separated lines grouped by their first field."""
    done = subprocess.run(
        ["java", "-cp", classpath, "io.flux.example.FluxExample", target, INDEX, str(queries), str(K)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines: dict[str, list[list[str]]] = {}
    for line in done.stdout.splitlines():
        kind, *fields = line.split("\t")
        lines.setdefault(kind, []).append(fields)
    return lines


def test_the_java_example_finds_the_same_neighbours_as_the_python_client(
    classpath: str, server: FluxServer, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    _, queries = data
    queries = queries[:8]
    path = tmp_path / "queries.f32"
    queries.astype("<f4").tofile(path)

    out = run_example(classpath, server.address, path)

    assert out["health"] == [["SERVING"]]
    assert out["index"] == [[INDEX, "64", "5000", "3"]]
    with FluxClient(server.address) as flux:
        singles = [flux.search(INDEX, q, k=K) for q in queries]
        batch = flux.batch_search(INDEX, queries, k=K)
    for kind, rows in (("search", out["search"]), ("batch", out["batch"])):
        assert [int(r[0]) for r in rows] == list(range(len(queries))), kind
        for row, (_, version, ids, distances) in enumerate(rows):
            expected = singles[row] if kind == "search" else batch
            expected_ids = expected.ids if kind == "search" else expected.ids[row]
            expected_distances = expected.distances if kind == "search" else expected.distances[row]
            assert int(version) == expected.version
            assert ids.split(",") == expected_ids.tolist(), (kind, row)
            # Java prints each float32 exactly (shortest round-trip form): the same bits come back.
            assert np.array(distances.split(","), dtype=np.float32).tolist() == expected_distances.tolist()

    [(code, reason, message)] = out["error"]
    assert (code, reason) == ("NOT_FOUND", "INDEX_NOT_FOUND")
    assert f"{INDEX}-missing" in message


def test_the_jar_carries_the_contract_version_and_the_protos(classpath: str) -> None:
    jar = Path(classpath.split(":")[1])  # after the example's classes: the stubs jar
    version = make("java-version")
    assert jar.name == f"flux-api-{version}.jar"
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
        manifest = archive.read("META-INF/MANIFEST.MF").decode()
    assert {"flux_api/v1/vector_service.proto", "io/flux/api/v1/VectorServiceGrpc.class"} <= names
    assert f"Implementation-Version: {version}" in manifest
