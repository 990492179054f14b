"""Generate the Python code for the wire contract, or check that it is current.

    python tools/protogen.py          # write clients/python/src/flux_api
    python tools/protogen.py --check  # exit 1 when the committed code is stale

Generated code lives in its own package, ``flux_api``, imported by the server and
the client alike; nothing hand-written lives there. ``flux_api.CONTRACT_VERSION`` is the
newest release heading of protos/CHANGELOG.md, so the check also fails after a release
until the code is generated again.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUTPUT = ROOT / "clients" / "python" / "src"
PACKAGE = "flux_api"
CHANGELOG = PROTOS / "CHANGELOG.md"
_GENERATED = '"""Generated from protos/ by tools/protogen.py; do not edit."""\n'


def contract_version() -> str:
    """The newest release of the contract: the first ``## X.Y.Z`` heading of protos/CHANGELOG.md."""
    found = re.search(r"^## (\d+\.\d+\.\d+)", CHANGELOG.read_text(encoding="utf-8"), flags=re.MULTILINE)
    if found is None:
        raise SystemExit(f"{CHANGELOG.relative_to(ROOT)} has no release heading (## X.Y.Z)")
    return found.group(1)


def _protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def generate(out: Path) -> None:
    """Run protoc with the Python, gRPC and typed-stub plugins into ``out``."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).rglob("*.proto"))
    bindir = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside the interpreter
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{_protoc_include()}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in [p for p in (out / PACKAGE).rglob("*") if p.is_dir()]:
        (package_dir / "__init__.py").write_text(_GENERATED)
    (out / PACKAGE / "__init__.py").write_text(
        _GENERATED
        + "\n#: The release of the wire contract this code was generated from (protos/CHANGELOG.md).\n"
        + f'CONTRACT_VERSION = "{contract_version()}"\n'
    )
    (out / PACKAGE / "py.typed").write_text("")


def _diff(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    stale = [*cmp.left_only, *cmp.right_only, *cmp.diff_files]
    # dircmp compares shallowly by stat; compare contents to be sure.
    stale += [f for f in cmp.same_files if (a / f).read_bytes() != (b / f).read_bytes()]
    for sub in cmp.common_dirs:
        stale += [f"{sub}/{f}" for f in _diff(a / sub, b / sub)]
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        target = OUTPUT / PACKAGE
        if opts.check:
            stale = _diff(fresh / PACKAGE, target) if target.exists() else ["(missing)"]
            if stale:
                print(f"generated code in {target.relative_to(ROOT)} is stale: {', '.join(stale)}", file=sys.stderr)
                print("run `make proto` and commit the result", file=sys.stderr)
                return 1
            print("generated code is current")
            return 0
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(fresh / PACKAGE, target)
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
