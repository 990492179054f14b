"""``flux config check`` and ``flux token``: operator commands that need no running server."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from flux import config as flux_config
from flux.api.auth import hash_token
from flux_core.errors import FluxError


def add_parsers(commands: Any) -> None:
    config = commands.add_parser("config", help="check a config file", description="Config file commands.")
    actions = config.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help=_check.__doc__, description=_check.__doc__)
    check.add_argument("file", type=Path, help="YAML config file")
    check.set_defaults(run=_check)

    token = commands.add_parser("token", help="make bearer tokens and their hashes", description="Bearer tokens.")
    actions = token.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help=_new.__doc__, description=_new.__doc__)
    new.add_argument("--name", required=True, help="the token's name in logs and errors")
    new.add_argument("--role", required=True, choices=["reader", "writer", "admin"])
    new.set_defaults(run=_new)
    digest = actions.add_parser("hash", help=_hash.__doc__, description=_hash.__doc__)
    digest.set_defaults(run=_hash)


def _check(args: argparse.Namespace) -> int:
    """Validate a config file as `flux serve` would (environment overrides included), check that the
    index paths, versions and TLS files exist and stay in the data root, and that an index taking
    writes can take them (its path is a folder of versions, its backend is mutable), with the
    server's own checks; print a summary. Exit 1 on error."""
    try:
        config = flux_config.load(args.file)
        lines = _summary(config)
    except FluxError as exc:
        print(f"flux config check: {exc.message}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    for line in lines:
        print(f"  {line}")
    return 0


def _summary(config: flux_config.FluxConfig) -> list[str]:
    """What the server will do, after the checks that need the file system."""
    from flux.api.tls import server_credentials
    from flux.core.serving import versions
    from flux_core.errors import ConfigError
    from flux_core.storage import confine

    server, limits = config.server, config.limits
    if config.tls is not None:
        server_credentials(config.tls)  # reads and checks the PEM files
    tls = "plaintext" if config.tls is None else ("mutual TLS" if config.tls.client_ca_file else "TLS")
    tokens = ", ".join(f"{t.name} ({t.role})" for t in config.auth.tokens)
    lines = [
        f"listen        {server.host}:{server.port} ({tls}), {server.threads} threads, {server.workers} worker(s)",
        f"health port   {_port(server.health_port)}",
        f"metrics port  {_port(server.metrics_port)}",
        f"auth          {f'{len(config.auth.tokens)} tokens: {tokens}' if tokens else 'off: every caller may do all'}",
        f"limits        max_k {limits.max_k}, max_batch {limits.max_batch}, "
        f"max_message_bytes {limits.max_message_bytes:,}, "
        f"max_concurrent_calls {server.max_concurrent_calls or 'none'}, max_streams {server.stream_limit or 'none'}",
        f"data root     {server.data_root or 'not set'}",
        f"logging       {config.logging.format}, request records {'on' if config.logging.requests else 'off'}",
        f"tracing       {'on' if config.tracing.enabled else 'off'}",
        "indexes",
    ]
    for i, index in enumerate(config.indexes):
        if not index.path.exists():
            raise ConfigError(f"indexes[{i}].path: {index.path} does not exist")
        problem = _writes_problem(index)
        if problem:
            raise ConfigError(f"indexes[{i}].writes: {problem}")
        found = versions.scan(index.path)
        for path in found.values():
            if server.data_root is not None:
                confine.check_artifact(path, server.data_root)
        listed = ", ".join(str(v) for v in sorted(found)) or "none yet"
        lines.append(f"  {index.name:<12} {index.path}: versions {listed} ({index.versions.policy})")
        lines += [f"  {'':<12} {problem}" for problem in _folder_problems(index.path, found)]
    return lines


def _writes_problem(index: flux_config.IndexConfig) -> str:
    """Why the server would refuse the writes ``index`` is configured to take ("" when it would not).

    The server's own checks decide: the one its Writer makes at start (a path that is a bare
    artifact), and the message a write to an immutable backend gets. For an empty source the
    server creates version 1 from the config's backend, dimension and metric."""
    from flux.core.serving import versions
    from flux.core.writes.checks import immutable_message, writable_source_problem
    from flux_core.storage import artifact, registry

    settings = index.write_settings()
    if settings is None:
        return ""
    if refused := writable_source_problem(index.name, index.path):
        return refused
    found = versions.scan(index.path)
    backend = index.backend
    if found:
        backend = backend or artifact.read_manifest(found[max(found)]).backend  # the version writes go to
    if backend is not None and not registry.get(backend).capabilities.mutable:
        return immutable_message(index.name, backend)
    return ""


def _folder_problems(source: Path, found: dict[int, Path]) -> list[str]:
    """What the server would refuse or pass over in a source directory, one line each."""
    from flux.core.serving import versions
    from flux_core.errors import ArtifactError
    from flux_core.storage import artifact

    problems = [
        f"{path.name}/: no {artifact.MANIFEST}, refused"
        for version, path in sorted(versions.folders(source).items())
        if version not in found
    ]
    for version, path in sorted(found.items()):
        if path == source:
            continue
        try:
            built = artifact.read_manifest(path).version
        except ArtifactError:
            continue  # the server says why when it loads it
        if built != version:
            problems.append(f"{path.name}/: built as version {built}, refused (a folder holds its own version)")
    problems += [f"{path.name}: not a version folder, ignored" for path in versions.strays(source)]
    return problems


def _port(port: int | None) -> str:
    return "off" if port is None else ("any free port" if port == 0 else str(port))


def _new(args: argparse.Namespace) -> int:
    """Make a random token: print it once (for the client) and the config entry holding only its hash."""
    token = secrets.token_urlsafe(32)
    print(f"token: {token}")
    print(f"config entry (auth.tokens): {{name: {args.name}, role: {args.role}, sha256: {hash_token(token)}}}")
    return 0


def _hash(args: argparse.Namespace) -> int:
    """Read a token from standard input (not the command line, which shells keep) and print its SHA-256."""
    token = sys.stdin.readline().strip()
    if not token:
        print("flux token hash: no token on standard input", file=sys.stderr)
        return 1
    print(hash_token(token))
    return 0
