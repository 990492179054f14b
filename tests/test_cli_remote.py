"""The commands that call a server reach a secured one: TLS (and mutual TLS) with a bearer token.

Each command runs as `flux ...` in a subprocess, the way an operator runs it, against a real
server on 127.0.0.1 that speaks only TLS and refuses calls without a token of the right role.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flux.api.auth import hash_token
from flux.server import FluxServer
from tests import support
from tests.pki import SERVER_NAME

TOKEN = "admin-token-for-the-cli"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[FluxServer]:
    base, _ = support.dataset(n=200, dimension=8, queries=1)
    path = support.build_artifact(tmp_path_factory.mktemp("cli") / "small", base, backend="exact", metric="l2")
    tls = {"cert_file": str(pki["server"]), "key_file": str(pki["server.key"]), "client_ca_file": str(pki["ca"])}
    auth = {"tokens": [{"name": "ops", "role": "admin", "sha256": hash_token(TOKEN)}]}
    config = support.server_config([{"name": "small", "path": str(path)}], tls=tls, auth=auth)
    with support.running_server(config) as server:
        yield server


def flux(
    server: FluxServer, pki: dict[str, Path], *args: str, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    connection = [
        "--target",
        server.address,
        "--ca-file",
        str(pki["ca"]),
        "--cert-file",
        str(pki["client"]),
        "--key-file",
        str(pki["client.key"]),
        "--server-name",
        SERVER_NAME,
    ]
    env = {k: v for k, v in os.environ.items() if k != "FLUX_TOKEN"}
    if token is not None:
        env["FLUX_TOKEN"] = token
    command = [sys.executable, "-m", "flux", *args, *connection]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_health_query_and_versions_list_reach_a_server_with_tls_and_a_token(
    secured: FluxServer, pki: dict[str, Path]
) -> None:
    health = flux(secured, pki, "health", "--service", "flux.index.small")
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr

    query = flux(secured, pki, "query", "--index", "small", "--random", "-k", "3")
    assert query.returncode == 0, query.stderr
    assert "3 neighbours" in query.stdout

    versions = flux(secured, pki, "versions", "list", "--index", "small")
    assert versions.returncode == 0, versions.stderr
    assert "index small: active 1" in versions.stdout


def test_without_the_token_the_server_says_which_role_is_missing(secured: FluxServer, pki: dict[str, Path]) -> None:
    query = flux(secured, pki, "query", "--index", "small", "--vector", ",".join(["0.5"] * 8), token=None)
    assert query.returncode == 1
    assert "UNAUTHENTICATED" in query.stderr
    assert "reader role" in query.stderr


def test_a_token_file_works_like_the_environment(secured: FluxServer, pki: dict[str, Path], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    listed = flux(secured, pki, "versions", "list", "--index", "small", "--token-file", str(token_file), token=None)
    assert listed.returncode == 0, listed.stderr
