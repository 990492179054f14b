"""``python -m flux_beam build ...``: the same command as ``flux-build-sharded ...``."""

from __future__ import annotations

import sys

from flux_beam.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["build"]:
        print("usage: python -m flux_beam build INPUT --out SOURCE --version N --shards N [...]", file=sys.stderr)
        print("       (python -m flux_beam build --help lists the options)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[2:]))
