"""Registers the ``flux bench`` command and its modes.

Each mode lives in its own module exposing ``add_parser(modes)``, which adds one
sub-command to ``modes`` (an argparse sub-parsers object) and sets ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

#: Modules that each add one ``flux bench MODE`` sub-command.
MODES: tuple[str, ...] = (
    "flux.bench.serving",
    "flux.bench.build",
    "flux.bench.client",
    "flux.bench.swap",
    "flux.bench.filters",
    "flux.bench.writes",
    "flux.bench.overload",
)


def add_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure Flux against the in-process library (prints a table, writes JSON)",
        description="Benchmarks that compare Flux with the in-process library in the same run.",
    )
    modes = bench.add_subparsers(dest="bench_mode", required=True, metavar="MODE")
    for module in MODES:
        importlib.import_module(module).add_parser(modes)
    bench.set_defaults(run=_missing_mode)


def _missing_mode(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires a mode
    return 2
