"""How the command line reaches a running server: through the client package, with TLS and a token.

Every command that talks to a server (``flux query``, ``health``, ``versions``, ``aliases``) takes
the same options and opens a ``flux_client.FluxClient``; its ``channel`` carries the TLS settings
and the token to the admin and health services too. The token comes from ``FLUX_TOKEN`` (or a
file), never from an option: a command line shows in ``ps`` and in shell history.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flux_client import FluxClient

TOKEN_ENV = "FLUX_TOKEN"


def add_options(parser: argparse.ArgumentParser, *, timeout: float) -> None:
    """The options of every command that calls a server."""
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address (default: 127.0.0.1:50051)")
    parser.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds (default: {timeout:g})")
    secure = parser.add_argument_group(
        "TLS and tokens", f"The token is read from ${TOKEN_ENV}, or from --token-file; it is sent as a bearer token."
    )
    secure.add_argument("--tls", action="store_true", help="speak TLS (implied by --ca-file and --cert-file)")
    secure.add_argument("--ca-file", type=Path, help="PEM CA that signed the server's certificate")
    secure.add_argument("--cert-file", type=Path, help="PEM client certificate, for mutual TLS (with --key-file)")
    secure.add_argument("--key-file", type=Path, help="PEM key of the client certificate")
    secure.add_argument("--server-name", help="name to check the server's certificate against (for IP targets)")
    secure.add_argument("--token-file", type=Path, help=f"file holding the bearer token (default: ${TOKEN_ENV})")


def connect(args: argparse.Namespace) -> FluxClient:
    """A client for the server the options name; raises ValueError or OSError on bad options or files."""
    from flux_client import TLS, FluxClient

    tls: TLS | bool = False
    if args.tls or args.ca_file or args.cert_file or args.server_name:
        tls = TLS.from_files(ca=args.ca_file, cert=args.cert_file, key=args.key_file, server_name=args.server_name)
    token = args.token_file.read_text(encoding="utf-8").strip() if args.token_file else os.environ.get(TOKEN_ENV)
    return FluxClient(args.target, timeout=args.timeout, retries=0, tls=tls, token=token or None)


def fail(command: str, error: Exception) -> int:
    """Print why ``command`` failed, in one line, and return its exit code."""
    print(f"flux {command}: {error}", file=sys.stderr)
    return 1
