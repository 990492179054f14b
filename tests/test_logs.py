"""A plugin's library that logs at INFO does not flood Flux's commands: other libraries' loggers stay at
WARNING unless $FLUX_LIBRARY_LOG_LEVEL asks for more, while Flux's own keep their level."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import ENV, flux
from tests.test_registry import install_distribution

# What faiss does as it loads: INFO records on its own logger (eleven of them), here three, and one warning.
NOISY = """
    import logging

    from flux_backends.exact import ExactBackend

    for line in ("Loading faiss with AVX2 support.", "Successfully loaded faiss with AVX2 support.", "third"):
        logging.getLogger("noisy_library.loader").info("noisy: %s", line)
    logging.getLogger("noisy_library").warning("noisy: a warning worth seeing")

    class Plugin(ExactBackend):
        name = "plugin-noisy"
"""


@pytest.fixture
def noisy(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    install_distribution(site, "flux_plugin_noisy", {"plugin-noisy": "noisy_plugin:Plugin"}, {"noisy_plugin": NOISY})
    np.save(tmp_path / "v.npy", np.ones((4, 2), np.float32))
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_plugin_library_logging_at_info_does_not_flood_a_command(tmp_path: Path, noisy: dict[str, str]) -> None:
    command = ("build", str(tmp_path / "v.npy"), "--backend", "plugin-noisy")
    quiet = flux(*command, "--out", str(tmp_path / "a"), **noisy).stderr
    assert "noisy: Loading faiss" not in quiet
    assert "WARNING noisy_library: noisy: a warning worth seeing" in quiet
    assert "built " in quiet

    asked = flux(*command, "--out", str(tmp_path / "b"), FLUX_LIBRARY_LOG_LEVEL="INFO", **noisy).stderr
    assert asked.count("INFO noisy_library.loader: noisy: ") == 3

    listed = flux("backends", **noisy)
    assert "plugin-noisy: flux_plugin_noisy 1.2.3" in listed.stdout
    assert "noisy: Loading" not in listed.stderr


def log_lines(*configure: str, **env: str) -> str:
    """What a process writes after ``logs.configure(*configure)``: a library's INFO and WARNING, Flux's INFO."""
    code = (
        "import logging, sys; from flux import logs\n"
        f"logs.configure({', '.join(map(repr, configure))})\n"
        "logging.getLogger('some_library').info('library info')\n"
        "logging.getLogger('some_library').warning('library warning')\n"
        "logging.getLogger('flux.server').info('flux info')\n"
        "logging.getLogger('flux_core.storage.artifact').debug('flux debug')\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**ENV, **env})
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_the_server_logs_flux_at_its_level_and_libraries_at_warning() -> None:
    default = log_lines("text")
    assert "library info" not in default
    assert "library warning" in default
    assert "INFO flux.server: flux info" in default
    assert "flux debug" not in default

    debug = log_lines("json", "DEBUG")  # logging.level in the config: Flux's own records only
    assert '"message": "flux debug"' in debug
    assert "library info" not in debug

    asked = log_lines("text", FLUX_LIBRARY_LOG_LEVEL="info")
    assert "INFO some_library: library info" in asked
    assert "flux debug" not in asked

    quiet = log_lines("text", "WARNING")
    assert "flux info" not in quiet
    assert "library warning" in quiet
