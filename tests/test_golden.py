"""The golden examples of the contract (protos/examples/): every case replays against a real server with the Python
client's types, the committed files are what the recorder writes today, and a changed answer is reported.

tests/test_golden_java.py and tests/test_golden_go.py replay the same files with the Java and Go stubs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flux_core.errors import Reason
from tests.test_contract_release import released_methods
from tools import golden

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "protos" / "examples"


def cases(examples: Path = EXAMPLES) -> list[tuple[str, dict[str, Any]]]:
    """Every case with its file's name, in the order they are replayed."""
    return [
        (path.name, case)
        for path in golden.example_files(examples)
        for case in json.loads(path.read_text(encoding="utf-8"))["cases"]
    ]


#: What `altered` changes, by (file, case): a word each replay's report of the difference must name.
ALTERED = {
    ("vector_service.json", "search"): "nearest",  # a response field renamed
    ("vector_service.json", "search-dimension-mismatch"): "WRONG_DIMENSION",  # another error reason
    ("vector_service.json", "batch-search"): "16",  # another distance
    ("admin_service.json", "get-index-unknown"): "k_out_of_range",  # another field violation
    ("write_service.json", "upsert"): "log_seq",  # an ignored field that does not exist
    ("vector_service.json", "stream-search"): "2 answers",  # a stream's last answer missing from the example
    ("vector_service.json", "stream-search-message-errors"): "INDEX_GONE",  # another reason of a failed message
}


def altered(into: Path) -> Path:
    """A copy of the examples with the changes of ALTERED; every other case is left as it is."""
    copy = into / "examples"
    shutil.copytree(EXAMPLES, copy)
    for name in {file for file, _ in ALTERED}:
        path = copy / name
        content = json.loads(path.read_text(encoding="utf-8"))
        for case in content["cases"]:
            change = (name, case["name"])
            if change == ("vector_service.json", "search"):
                case["response"]["nearest"] = case["response"].pop("neighbors")
            elif change == ("vector_service.json", "search-dimension-mismatch"):
                case["error"]["reason"] = "WRONG_DIMENSION"
            elif change == ("vector_service.json", "batch-search"):
                case["response"]["results"][1]["distances"][0] = 16.0
            elif change == ("vector_service.json", "stream-search"):
                case["responses"].pop()
            elif change == ("vector_service.json", "stream-search-message-errors"):
                case["responses"][2]["error"]["reason"] = "INDEX_GONE"
            elif change == ("admin_service.json", "get-index-unknown"):
                case["error"]["field_violations"] = ["k_out_of_range"]
            elif change == ("write_service.json", "upsert"):
                case["ignore"] = ["log_seq"]
        path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return copy


def make(target: str) -> str:
    done = subprocess.run(["make", "-s", target], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def toolchain(kind: str, require: str) -> None:
    """Skip (or, with ``require`` set in the environment, fail) when `make <kind>-missing` lists packages."""
    missing = make(f"{kind}-missing")
    if missing:
        message = f"the {kind} toolchain is not installed (missing Debian packages: {missing}); run `make {kind}`"
        if os.environ.get(require):
            pytest.fail(message)
        pytest.skip(message)


def replay_with(program: list[str], examples: Path) -> tuple[int, list[list[str]]]:
    """Run a replay program (TARGET EXAMPLES) against a fresh server of the fixture; its exit code and lines."""
    with golden.serve(examples) as target:
        done = subprocess.run([*program, target, str(examples)], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), f"the replay did not run (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.returncode, [line.split("\t") for line in done.stdout.splitlines()]


def check_full_replay(code: int, lines: list[list[str]]) -> None:
    """A replay program's report over the committed examples: every case ok, in order, nothing else."""
    expected = [["ok", name, case["name"]] for name, case in cases()]
    assert lines[:-1] == expected, [line for line in lines if line[0] != "ok"]
    assert lines[-1] == [f"{len(expected)} passed, 0 failed"]
    assert code == 0


def check_altered_replay(code: int, lines: list[list[str]]) -> None:
    """A replay program's report over `altered`: exactly the altered cases differ, each named with what changed."""
    different = {(file, name): what for kind, file, name, what in (line for line in lines if line[0] == "different")}
    assert set(different) == set(ALTERED)
    for case, word in ALTERED.items():
        assert word in different[case], (case, different[case])
    assert lines[-1] == [f"{len(cases()) - len(ALTERED)} passed, {len(ALTERED)} failed"]
    assert code == 1


def test_every_example_replays_against_a_real_server() -> None:
    with golden.serve() as target:
        result = golden.replay(target)

    assert [str(d) for d in result.differences] == []
    assert result.passed == [f"{name}: {case['name']}" for name, case in cases()]


def test_the_committed_examples_are_what_the_recorder_writes_now() -> None:
    """`make golden` on an unchanged server changes nothing: the cases of tools/golden/ are the committed ones,
    and every answer comes out the same on every run (no timestamps, no ties, no background work)."""
    recorded = golden.record()

    assert list(recorded) == [path.name for path in golden.example_files()]
    for name, content in recorded.items():
        committed = (EXAMPLES / name).read_text(encoding="utf-8")
        assert golden.dumps(content) + "\n" == committed, f"{name} differs from a recording: run `make golden`"


def test_a_changed_answer_is_reported_case_by_case(tmp_path: Path) -> None:
    examples = altered(tmp_path)
    with golden.serve(examples) as target:
        result = golden.replay(target, examples)

    found = {(d.file, d.case): d.what for d in result.differences}
    assert set(found) == set(ALTERED)
    for case, word in ALTERED.items():
        assert word in found[case], (case, found[case])
    assert len(result.passed) == len(cases()) - len(ALTERED)


def test_every_rpc_of_the_released_contract_has_examples_and_the_errors_carry_listed_reasons() -> None:
    methods = {case["method"] for _, case in cases()}
    assert released_methods() <= methods, "RPCs of the newest release without a golden example"
    errors = [case["error"] for _, case in cases() if "error" in case]
    reasons = {error["reason"] for error in errors}
    assert reasons <= {reason.value for reason in Reason}
    assert {
        "DIMENSION_MISMATCH", "NOT_FINITE", "INDEX_NOT_FOUND", "K_OUT_OF_RANGE", "UNKNOWN_PARAM", "PARAM_OUT_OF_RANGE",
        "INVALID_FILTER", "BATCH_TOO_LARGE", "ITEM_NOT_FOUND", "VERSION_NOT_FOUND", "WRITES_DISABLED", "DUPLICATE_ID",
    } <= reasons  # fmt: skip
    for error in errors:
        if error["code"] == "INVALID_ARGUMENT":
            assert error["field_violations"] == [error["metadata"]["field"]], error


def test_the_recorded_distances_are_the_exact_l2_distances_over_the_fixture() -> None:
    """Independent of Flux: every unfiltered answer of tracks is numpy's nearest items, to the exact distance."""
    fixture = golden.load_fixture()
    items = fixture["items"]["tracks"]
    ids = np.array([item["id"] for item in items])
    base = np.array([item["vector"] for item in items], dtype=np.float64)
    checked = 0
    for _, case in cases():
        request, response = case.get("request", {}), case.get("response")
        if response is None or request.get("index") not in ("tracks", "tracks-live") or "filter" in request:
            continue
        if case["method"].endswith("/Search"):
            queries, answers = golden.decode_vectors(request["vector"]), [response["neighbors"]]
        elif case["method"].endswith("/BatchSearch") and "results" in response and "overrides" not in request:
            queries, answers = golden.decode_vectors(request["queries"]), response["results"]
        else:
            continue
        for query, answer in zip(queries, answers, strict=True):
            distances = ((base - np.array(query)) ** 2).sum(axis=1)
            order = np.argsort(distances, kind="stable")[: request["k"]]
            assert answer["ids"] == ids[order].tolist(), case["name"]
            assert answer["distances"] == distances[order].tolist(), case["name"]
            checked += 1
    assert checked >= 6
