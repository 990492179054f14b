"""The Java stubs, proven against a live server: the example compiles, finds the Python client's neighbours and
reads the reasons of errors from their google.rpc details; the jars carry poms Maven can install.

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
from xml.etree import ElementTree

import numpy as np
import pytest

from flux import __version__ as server_version
from flux.server import FluxServer
from flux_client import CONTRACT_VERSION, Filter, FluxClient
from tests.test_client_install import released_contract_version

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
    [(contract, software, backends)] = out["server"]
    assert (contract, software) == (CONTRACT_VERSION, server_version)
    assert int(backends) >= 4
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

    # The first query's two nearest left out by their hashes, which Java computed: as the ids leave them out.
    with FluxClient(server.address) as flux:
        unplayed = flux.search(INDEX, queries[0], k=K, filter=Filter(exclude_ids=singles[0].ids[:2].tolist()))
    [(_, _, ids, _)] = out["unplayed"]
    assert ids.split(",") == unplayed.ids.tolist()

    [(code, trailer, reason, domain, message)] = out["error"]
    assert (code, trailer, reason, domain) == ("NOT_FOUND", "INDEX_NOT_FOUND", "INDEX_NOT_FOUND", "flux.vectors")
    assert f"{INDEX}-missing" in message
    assert out["invalid"] == [["INVALID_ARGUMENT", "DIMENSION_MISMATCH", "vector.dimension", INDEX]]


def test_the_jar_carries_the_contract_version_and_the_protos(classpath: str) -> None:
    jar = Path(classpath.split(":")[1])  # after the example's classes: the stubs jar
    version = make("java-version")
    assert version == CONTRACT_VERSION == released_contract_version()
    assert jar.name == f"flux-api-{version}.jar"
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
        manifest = archive.read("META-INF/MANIFEST.MF").decode()
        pom = archive.read("META-INF/maven/io.flux/flux-api/pom.xml").decode()
    assert {"flux_api/v1/vector_service.proto", "io/flux/api/v1/VectorServiceGrpc.class"} <= names
    assert f"Implementation-Version: {version}" in manifest
    assert pom == Path(make("java-artifacts").splitlines()[0].split()[1]).read_text()


def test_the_google_rpc_jar_holds_the_error_details_and_the_stubs_jar_does_not(classpath: str) -> None:
    [(stubs, _), (rpc, _)] = [line.split() for line in make("java-artifacts").splitlines()]
    with zipfile.ZipFile(rpc) as archive:
        names = set(archive.namelist())
    expected = {"com/google/rpc/Status.class", "com/google/rpc/ErrorInfo.class", "com/google/rpc/BadRequest.class"}
    assert expected | {"google/rpc/error_details.proto"} <= names
    with zipfile.ZipFile(stubs) as archive:  # so that Maven users, who have proto-google-common-protos, leave it out
        assert not [n for n in archive.namelist() if n.startswith("com/google/")]


MAVEN = "http://maven.apache.org/POM/4.0.0"


def pom_of(path: str) -> tuple[tuple[str, str, str], list[tuple[str, str, str, str]]]:
    root = ElementTree.parse(path).getroot()

    def text(node: ElementTree.Element, name: str) -> str:
        found = node.find(f"{{{MAVEN}}}{name}")
        return "" if found is None or found.text is None else found.text

    coordinates = (text(root, "groupId"), text(root, "artifactId"), text(root, "version"))
    dependencies = [
        (text(d, "groupId"), text(d, "artifactId"), text(d, "version"), text(d, "scope") or "compile")
        for d in root.iter(f"{{{MAVEN}}}dependency")
    ]
    return coordinates, dependencies


def test_the_poms_name_the_jars_and_the_dependencies_they_are_built_against(classpath: str) -> None:
    version = make("java-version")
    [(_, stubs_pom), (_, rpc_pom)] = [line.split() for line in make("java-artifacts").splitlines()]
    grpc = next(Path("/usr/share/java").glob("grpc-stub-[0-9]*.jar")).stem.removeprefix("grpc-stub-")
    protobuf = next(Path("/usr/share/java").glob("protobuf-[0-9]*.jar")).stem.removeprefix("protobuf-")
    coordinates, dependencies = pom_of(stubs_pom)
    assert coordinates == ("io.flux", "flux-api", version)
    assert dependencies == [
        ("com.google.protobuf", "protobuf-java", protobuf, "compile"),
        ("io.grpc", "grpc-protobuf", grpc, "compile"),
        ("io.grpc", "grpc-stub", grpc, "compile"),
        ("org.apache.tomcat", "annotations-api", "6.0.53", "provided"),
    ]
    assert pom_of(rpc_pom) == (
        ("io.flux", "flux-api-google-rpc", version),
        [("com.google.protobuf", "protobuf-java", protobuf, "compile")],
    )


def test_mvn_install_file_takes_the_jars_with_their_poms(classpath: str, tmp_path: Path) -> None:
    """`mvn install:install-file -DpomFile=...` into an empty local repository, with Debian's Maven repository
    (maven, libmaven-install-plugin-java: `make java` installs them) as the only source: no Maven Central."""
    debian = Path("/usr/share/maven-repo")
    plugin = max(
        (p.parent.name for p in (debian / "org/apache/maven/plugins/maven-install-plugin").glob("*/*.jar")),
        key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()),
    )
    settings = tmp_path / "settings.xml"
    settings.write_text(
        f"<settings><mirrors><mirror><id>debian</id><mirrorOf>*</mirrorOf><url>{debian.as_uri()}</url>"
        "</mirror></mirrors></settings>"
    )
    repository = tmp_path / "repository"
    version = make("java-version")
    for line in make("java-artifacts").splitlines():
        jar, pom = line.split()
        done = subprocess.run(
            ["mvn", "-q", "-B", "-s", str(settings), f"-Dmaven.repo.local={repository}",
             f"org.apache.maven.plugins:maven-install-plugin:{plugin}:install-file",
             f"-Dfile={jar}", f"-DpomFile={pom}"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    for artifact in ("flux-api", "flux-api-google-rpc"):
        installed = repository / "io" / "flux" / artifact / version
        assert (installed / f"{artifact}-{version}.jar").is_file()
        assert pom_of(str(installed / f"{artifact}-{version}.pom"))[0] == ("io.flux", artifact, version)
