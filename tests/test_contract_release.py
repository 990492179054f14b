"""Released contract images: each release of the contract commits its buf image (protos/releases/), `make breaking`
checks the contract against the newest one as well as against main, and a consumer runs the same check offline.

Every buf command here runs on a copy of protos/ (or of a consumer's tree) in tmp_path: protos/ itself is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from google.protobuf import descriptor_pb2

from tests.test_client_install import released_contract_version

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "protos"
BUF = REPO / ".venv" / "bin" / "buf"
CONTRACT_FILES = {f"flux_api/v1/{name}.proto" for name in ("types", "admin_service", "vector_service", "write_service")}
# `make breaking` without remaking .venv: the tests check the buf commands, not the install.
MAKE = ["make", "--no-print-directory"] + [
    f"--old-file={done}" for done in (".venv/.installed", ".venv/.generated", ".venv-beam/.installed")
]


def release_image(version: str | None = None) -> Path:
    """The committed image of a release (default: the newest in protos/CHANGELOG.md)."""
    return PROTOS / "releases" / f"flux_api-v{version or released_contract_version()}.binpb"


def read_image(path: Path) -> descriptor_pb2.FileDescriptorSet:
    """A buf image read as the FileDescriptorSet it extends (buf's own per-file fields stay unknown fields)."""
    image = descriptor_pb2.FileDescriptorSet()
    image.ParseFromString(path.read_bytes())
    return image


def released_methods(version: str | None = None) -> set[str]:
    """Every RPC of the released contract, as ``flux_api.v1.VectorService/Search``."""
    return {
        f"{file.package}.{service.name}/{method.name}"
        for file in read_image(release_image(version)).file
        if file.package.startswith("flux_api.")
        for service in file.service
        for method in service.method
    }


def _contract(image: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The files of an image without source info or buf's own fields: the wire contract only."""
    files = {}
    for file in image.file:
        file.ClearField("source_code_info")
        file.DiscardUnknownFields()
        files[file.name] = file
    return files


def copy_of_protos(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("examples"))
    return copy


def renumber_search_k(protos: Path) -> None:
    """SearchRequest.k from field 3 to field 8: wire-incompatible for every client built before."""
    path = protos / "flux_api" / "v1" / "vector_service.proto"
    text = path.read_text(encoding="utf-8")
    block = re.search(r"^message SearchRequest \{.*?^\}", text, flags=re.MULTILINE | re.DOTALL)
    assert block is not None
    assert "  uint32 k = 3;\n" in block.group(0)
    renumbered = block.group(0).replace("  uint32 k = 3;\n", "  uint32 k = 8;\n")
    path.write_text(text[: block.start()] + renumbered + text[block.end() :], encoding="utf-8")


def breaking(protos: Path, against_main: str) -> subprocess.CompletedProcess[str]:
    """`make breaking` run on ``protos`` (a copy), against ``against_main`` and the copy's release image."""
    return subprocess.run(
        [*MAKE, "breaking", f"BREAKING_DIR={protos}", f"BREAKING_AGAINST={against_main}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_newest_release_has_its_image_committed() -> None:
    version = released_contract_version()
    path = release_image(version)
    assert path.is_file(), f"release {version} has no image: cd protos && buf build -o releases/{path.name}"
    image = read_image(path)
    assert {f.name for f in image.file} >= CONTRACT_FILES
    assert "google/protobuf/struct.proto" in {f.name for f in image.file}, "imports are part of the image"
    assert {"flux_api.v1.VectorService/Search", "flux_api.v1.WriteService/UpsertStream"} <= released_methods(version)


def test_the_image_is_the_contract_of_the_commit_that_cut_the_release(tmp_path: Path) -> None:
    """The image was built from the release itself: the commit that added its heading to the CHANGELOG (or, while
    a release is being cut and that commit is still to be made, the protos/ of the working tree)."""
    version = released_contract_version()
    found = subprocess.run(
        ["git", "log", "--format=%H", f"-S## {version} ", "--", "protos/CHANGELOG.md"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    source = f"{REPO}/.git#ref={found[-1]},subdir=protos" if found else str(PROTOS)
    built = tmp_path / "built.binpb"
    subprocess.run(
        [str(BUF), "build", source, "-o", str(built)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    released, rebuilt = _contract(read_image(release_image(version))), _contract(read_image(built))
    assert sorted(released) == sorted(rebuilt)
    for name, file in rebuilt.items():
        assert released[name] == file, f"{name} in {release_image(version).name} is not the one released"


def test_make_breaking_refuses_a_renumbered_field_against_the_release_image(tmp_path: Path) -> None:
    protos = copy_of_protos(tmp_path)
    renumber_search_k(protos)

    # Against itself the first check passes, so only the check against the committed release image can refuse it.
    done = breaking(protos, ".")

    assert done.returncode != 0
    out = done.stdout + done.stderr
    image_check = f"buf breaking --against 'releases/{release_image().name}'"
    assert image_check in out, "the second check, against the release image, ran"
    assert out.index(image_check) < out.index('field "3" with name "k" on message "SearchRequest" was deleted')


def test_make_breaking_passes_an_additive_change_against_main_and_the_release_image(tmp_path: Path) -> None:
    protos = copy_of_protos(tmp_path)
    path = protos / "flux_api" / "v1" / "types.proto"
    path.write_text(
        path.read_text(encoding="utf-8")
        + "\n// Added after the release: a new message.\nmessage Annotation {\n  // A note.\n  string note = 1;\n}\n",
        encoding="utf-8",
    )
    vector_service = protos / "flux_api" / "v1" / "vector_service.proto"
    text = vector_service.read_text(encoding="utf-8")
    added = "message SearchResponse {\n  // Added after the release.\n  Annotation annotation = 20;\n"
    vector_service.write_text(text.replace("message SearchResponse {\n", added, 1), encoding="utf-8")

    done = breaking(protos, f"{REPO}/.git#branch=main,subdir=protos")

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"buf breaking --against 'releases/{release_image().name}'" in done.stdout


def test_a_consumer_checks_its_vendored_contract_against_the_image_without_network(tmp_path: Path) -> None:
    """The recipe of protos/README.md: the vendored protos and the image in the consumer's tree, no network."""
    vendored = tmp_path / "service" / "third_party" / "flux"
    shutil.copytree(PROTOS / "flux_api", vendored / "flux_api")
    shutil.copy(release_image(), vendored / release_image().name)
    (vendored / "buf.yaml").write_text("version: v2\nbreaking:\n  use:\n    - FILE\n", encoding="utf-8")
    unreachable = "http://127.0.0.1:9"  # any attempt to reach a registry fails at once
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "BUF_CACHE_DIR": str(tmp_path / "buf-cache"),
        "HTTPS_PROXY": unreachable,
        "HTTP_PROXY": unreachable,
        "https_proxy": unreachable,
        "http_proxy": unreachable,
    }
    command = [str(BUF), "breaking", "third_party/flux", "--against", f"third_party/flux/{release_image().name}"]

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=tmp_path / "service", env=env, capture_output=True, text=True, timeout=120)

    passed = check()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    renumber_search_k(vendored)
    refused = check()
    assert refused.returncode != 0
    assert 'field "3" with name "k" on message "SearchRequest" was deleted' in refused.stdout
