"""``pip install clients/python`` into a fresh virtual environment, without the server, gives a working client.

The distribution is installed from a copy of clients/python, which also proves that the
folder builds on its own (nothing outside it is needed). The fresh environment gets no
pip of its own (that alone takes seconds); this environment's pip installs into it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from flux.server import FluxServer
from flux_client import FluxClient

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "python"

SCRIPT = """
import importlib.util, json, sys
from importlib.metadata import distributions, version
from pathlib import Path

import numpy as np

import flux_client
from flux_client import FluxClient, IndexNotFound

target, index, queries = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
with FluxClient(target) as client:
    single = client.search(index, queries[0], k=5)
    batch = client.search(index, queries, k=5)
    info = client.describe(index)
    try:
        client.search("no-such-index", queries[0])
        error = None
    except IndexNotFound as exc:
        error = [exc.code.name, exc.reason]
print(json.dumps({
    "server_package": importlib.util.find_spec("flux") is not None,
    "client_location": flux_client.__file__,
    "py_typed": (Path(flux_client.__file__).parent / "py.typed").is_file(),
    "version": version("flux-client"),
    "distributions": sorted(d.metadata["Name"].lower().replace("_", "-") for d in distributions()),
    "single": single.ids.tolist(),
    "batch": batch.ids.tolist(),
    "dimension": info.dimension,
    "error": error,
}))
"""


def test_the_client_installs_alone_and_queries_a_live_server(
    server: FluxServer, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    source = tmp_path / "flux-client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env, timeout=60)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(source)]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr

    _, queries = data
    np.save(tmp_path / "queries.npy", queries[:3])
    (tmp_path / "check.py").write_text(SCRIPT)
    # -I: no current folder, script folder, PYTHONPATH or user site on sys.path; only the venv.
    run = subprocess.run(
        [str(python), "-I", str(tmp_path / "check.py"), server.address, "hnsw-l2", str(tmp_path / "queries.npy")],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)

    assert got["server_package"] is False
    assert got["client_location"].startswith(str(venv))
    assert got["py_typed"] is True
    assert set(got["distributions"]) == {"flux-client", "grpcio", "protobuf", "numpy", "typing-extensions"}
    with FluxClient(server.address) as flux:
        assert got["single"] == flux.search("hnsw-l2", queries[0], k=5).ids.tolist()
        assert got["batch"] == flux.search("hnsw-l2", queries[:3], k=5).ids.tolist()
    assert got["dimension"] == 64
    assert got["error"] == ["NOT_FOUND", "INDEX_NOT_FOUND"]
    assert got["version"] == released_contract_version()


def released_contract_version() -> str:
    """The newest release heading (``## X.Y.Z``) of the contract's CHANGELOG."""
    text = (REPO / "protos" / "CHANGELOG.md").read_text(encoding="utf-8")
    found = re.search(r"^## (\d+\.\d+\.\d+)", text, flags=re.MULTILINE)
    assert found, "protos/CHANGELOG.md has no release heading"
    return found.group(1)


def test_the_client_version_follows_the_contract() -> None:
    """flux-client X.Y.Z speaks the contract released as X.Y.Z; its major version names the package."""
    pyproject = (CLIENT / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.search(r'^version = "([^"]+)"', pyproject, flags=re.MULTILINE)
    assert declared is not None
    assert declared.group(1) == released_contract_version()
    major = declared.group(1).split(".")[0]
    assert (CLIENT / "src" / "flux_api" / f"v{major}" / "vector_service_pb2.py").is_file()
