"""Golden examples of the wire contract: record them from a real server, replay them against one.

The command line, ``python -m tools.golden record|replay|serve``; tools/golden/__init__.py says more.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from .fixture import EXAMPLES, ROOT, serve
from .record import record, write
from .replay import replay


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.golden", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("record", help="answer every case on a fresh server and rewrite the example files")
    play = commands.add_parser("replay", help="replay the examples against a server; exit 1 on any difference")
    play.add_argument("--target", help="a fresh server of the fixture (default: start one here)")
    play.add_argument("--examples", type=Path, default=EXAMPLES, help="the folder of the examples")
    commands.add_parser("serve", help="serve the fixture, print its address, stop at the end of standard input")
    args = parser.parse_args(argv)

    if args.command == "record":
        for path in write(record()):
            print(f"wrote {path.relative_to(ROOT)}")
        print("review the diff of protos/examples/: every change in it is a change clients see")
        return 0
    if args.command == "serve":
        with serve() as address:
            print(address, flush=True)
            sys.stdin.read()
        return 0
    with ExitStack() as stack:
        target = args.target or stack.enter_context(serve(args.examples))
        result = replay(target, args.examples)
    for difference in result.differences:
        print(f"DIFFERENT {difference}")
    print(f"{len(result.passed)} passed, {len(result.differences)} failed")
    return 1 if result.differences else 0


if __name__ == "__main__":
    sys.exit(main())
