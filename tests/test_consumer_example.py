"""examples/consumer-ci runs its contract tests as a consuming team's CI would.

Fresh virtual environment, only the consumer-facing installs (the service with its `test`
extra, which brings flux-server[testing] and with it the flux_server fixture), then the
example's own pytest. The distributions are installed from copies, so the source tree is
left as it was (no build/ or egg-info folders).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def _copy(tmp: Path) -> dict[str, Path]:
    copies = {name: tmp / name for name in ("client", "core", "backends", "server", "consumer")}
    shutil.copytree(REPO / "clients" / "python", copies["client"], ignore=IGNORE)
    shutil.copytree(REPO / "core", copies["core"], ignore=IGNORE)
    shutil.copytree(REPO / "backends", copies["backends"], ignore=IGNORE)
    shutil.copytree(REPO / "flux", copies["server"] / "flux", ignore=IGNORE)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, copies["server"])
    shutil.copytree(REPO / "examples" / "consumer-ci", copies["consumer"], ignore=IGNORE)
    return copies


def test_the_consumer_example_passes_its_tests_in_a_fresh_venv(tmp_path: Path) -> None:
    copies = _copy(tmp_path)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env, timeout=60)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    # The local Flux distributions are named so pip takes them for the consumer's requirements.
    local = [str(copies[name]) for name in ("client", "core", "backends")]
    done = subprocess.run(
        [*install, *local, f"{copies['server']}[testing]", f"{copies['consumer']}[test]"],
        capture_output=True, text=True, env=env, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    run = subprocess.run(
        [str(python), "-I", "-m", "pytest", "-q"],
        capture_output=True, text=True, env=env, timeout=120, cwd=copies["consumer"],
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout, run.stdout
    listed = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, env=env, check=False)
    assert listed.returncode != 0, "the venv was meant to hold only what the consumer installed"
