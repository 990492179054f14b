"""The Go stubs replay the golden examples (protos/examples/) against a live server: clients/go/golden reads each case
with protojson into the generated types, so Go is checked against the same answers as Python and Java.

``make go`` installs the Debian packages (CI runs it and sets FLUX_REQUIRE_GO=1, so there this fails rather than skips
when Go is missing); the replay program is built here by ``make go-golden``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_golden import EXAMPLES, altered, check_altered_replay, check_full_replay, make, replay_with, toolchain


@pytest.fixture(scope="module")
def replay() -> list[str]:
    """The Go replay program, built here and now from the current protos."""
    toolchain("go", "FLUX_REQUIRE_GO")
    make("go-golden")
    return [make("go-golden-program")]


def test_the_go_stubs_replay_every_example(replay: list[str]) -> None:
    check_full_replay(*replay_with(replay, EXAMPLES))


def test_the_go_replay_reports_a_changed_answer(replay: list[str], tmp_path: Path) -> None:
    check_altered_replay(*replay_with(replay, altered(tmp_path)))
