"""The ``flux bench`` command and its modes, added to ``flux`` through the ``flux.commands`` entry point.

Each mode lives in its own module exposing ``add_parser(modes)``, which adds one
sub-command to ``modes`` (an argparse sub-parsers object) and sets ``run``. Nothing here
is imported by ``flux serve``: the server and its wheel carry no benchmark code.
"""

from __future__ import annotations

import argparse
import importlib

from flux.cli import run_command

#: Modules that each add one ``flux bench MODE`` sub-command.
MODES: tuple[str, ...] = (
    "flux_bench.serving",
    "flux_bench.build",
    "flux_bench.client",
    "flux_bench.swap",
    "flux_bench.filters",
    "flux_bench.writes",
    "flux_bench.overload",
    "flux_bench.router",
)


def main(argv: list[str]) -> int:
    """``flux bench MODE ...``: the ``flux`` command hands over the arguments after ``bench``."""
    parser = argparse.ArgumentParser(
        prog="flux bench",
        description="Benchmarks that compare Flux with the in-process library in the same run.",
    )
    modes = parser.add_subparsers(dest="bench_mode", required=True, metavar="MODE")
    for module in MODES:
        importlib.import_module(module).add_parser(modes)
    args = parser.parse_args(argv)
    return run_command(args, f"flux bench {args.bench_mode}")
