"""The Java stubs replay the golden examples (protos/examples/) against a live server: clients/java/golden reads each
case with JsonFormat into the generated types, so Java is checked against the same answers as Python and Go.

``make java`` installs the Debian packages (CI runs it and sets FLUX_REQUIRE_JAVA=1, so there this fails rather than
skips when Java is missing); the replay program is built here by ``make java-golden``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_golden import EXAMPLES, altered, check_altered_replay, check_full_replay, make, replay_with, toolchain


@pytest.fixture(scope="module")
def replay() -> list[str]:
    """The Java replay program, built here and now from the current protos."""
    toolchain("java", "FLUX_REQUIRE_JAVA")
    make("java-golden")
    return ["java", "-cp", make("java-golden-classpath"), "io.flux.golden.GoldenReplay"]


def test_the_java_stubs_replay_every_example(replay: list[str]) -> None:
    check_full_replay(*replay_with(replay, EXAMPLES))


def test_the_java_replay_reports_a_changed_answer(replay: list[str], tmp_path: Path) -> None:
    check_altered_replay(*replay_with(replay, altered(tmp_path)))
