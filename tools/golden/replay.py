"""Replaying the golden examples against a fresh server of the fixture: each case's requests and
expected answer read into the Python client's generated types, the answer compared message by message
(an error by code, reason, metadata and field violations), and every difference reported by case."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from .calls import DOMAIN, Method, clear, error_of, failed_message, message_error_of
from .fixture import EXAMPLES, example_files


@dataclass(frozen=True)
class Difference:
    """A case whose answer is not the example's."""

    file: str
    case: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}: {self.case}: {self.what}"


@dataclass
class Replay:
    """What one replay found: the cases that matched, and the differences."""

    passed: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)


def replay(target: str, examples: Path = EXAMPLES) -> Replay:
    """Replay every case of ``examples``, in order, against the fresh fixture server at ``target``."""
    result = Replay()
    with grpc.insecure_channel(target) as channel:
        for path in example_files(examples):
            for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
                what = replay_case(channel, case)
                if what is None:
                    result.passed.append(f"{path.name}: {case.get('name')}")
                else:
                    result.differences.append(Difference(path.name, str(case.get("name")), what))
    return result


def replay_case(channel: grpc.Channel, case: Mapping[str, Any]) -> str | None:
    """None when the server answers ``case`` as the example says, else what differs."""
    try:
        method = Method.named(case["method"])
        raw_requests = case["requests"] if method.client_streaming else [case["request"]]
        requests = [json_format.ParseDict(r, method.request()) for r in raw_requests]
        if method.server_streaming:
            return replay_stream(channel, method, requests, case)
        expected: Message | None = None
        if "response" in case:
            expected = json_format.ParseDict(case["response"], method.response())
        elif "error" not in case:
            return "the case has neither a response nor an error"
    except (KeyError, ValueError, json_format.ParseError) as exc:
        return f"the example does not read as the contract's messages: {exc}"
    try:
        answer = method.call(channel, requests)
    except grpc.RpcError as failure:
        said = error_of(failure)
        if expected is not None:
            return f"expected a response, got the error {json.dumps(said)}"
        return compare_errors(case["error"], said)
    if expected is None:
        return f"expected the error {json.dumps(case['error'])}, got a response: {_json(answer)}"
    return _compare_messages(expected, answer, case.get("ignore", []))


def replay_stream(
    channel: grpc.Channel, method: Method, requests: list[Message], case: Mapping[str, Any]
) -> str | None:
    """A stream's answers compared one by one, in order, then the error it ended with (or that it ended OK)."""
    try:
        written = list(case["responses"])
        expected = [None if "error" in r else json_format.ParseDict(r, method.response()) for r in written]
    except (KeyError, TypeError, json_format.ParseError) as exc:
        return f"the example does not read as the contract's messages: {exc}"
    answers, failure = method.answers(channel, requests)
    for position, (wanted, got) in enumerate(zip(expected, answers, strict=False)):  # counts compared below
        what = _compare_answer(written[position], wanted, got, case.get("ignore", []))
        if what is not None:
            return f"answer {position}: {what}"
    if len(answers) != len(expected):
        return f"expected {len(expected)} answers, got {len(answers)}"
    if failure is None:
        return f"expected the stream to end with the error {json.dumps(case['error'])}" if "error" in case else None
    said = error_of(failure)
    if "error" not in case:
        return f"expected the stream to end OK, it ended with the error {json.dumps(said)}"
    return compare_errors(case["error"], said)


def _compare_answer(written: Mapping[str, Any], wanted: Message | None, got: Message, ignore: list[str]) -> str | None:
    """One answer of a stream against the example's: a failed message's by its request id and error (as
    a unary call's error is compared), any other message by its fields, those ``ignore`` names cleared."""
    if wanted is None:
        if not failed_message(got):
            return f"expected the error {json.dumps(written['error'])}, got {_json(got)}"
        said = message_error_of(got)
        if said["requestId"] != written.get("requestId", "0"):
            return f"expected request id {written.get('requestId')}, got {said['requestId']}"
        return compare_errors(written["error"], said["error"])
    if failed_message(got):
        return f"expected {_json(wanted)}, got the error {json.dumps(message_error_of(got))}"
    return _compare_messages(wanted, got, ignore)


def _compare_messages(wanted: Message, got: Message, ignore: list[str]) -> str | None:
    """None when the messages are equal once the fields ``ignore`` names are cleared in both."""
    try:
        for path in ignore:
            clear(wanted, path)
            clear(got, path)
    except ValueError as exc:
        return str(exc)
    return None if wanted == got else f"expected {_json(wanted)}, got {_json(got)}"


def compare_errors(expected: Mapping[str, Any], said: Mapping[str, Any]) -> str | None:
    wanted = {
        "code": expected.get("code"),
        "reason": expected.get("reason"),
        "metadata": expected.get("metadata", {}),
        "field_violations": expected.get("field_violations", []),
    }
    got = {
        "code": said["code"],
        "reason": said["reason"],
        "metadata": said.get("metadata", {}),
        "field_violations": said.get("field_violations", []),
    }
    problems = [f"{key} {wanted[key]!r}, got {got[key]!r}" for key in wanted if wanted[key] != got[key]]
    if "domain" in said:
        problems.append(f"ErrorInfo domain {DOMAIN!r}, got {said['domain']!r}")
    return "expected " + "; ".join(problems) if problems else None


def _json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), sort_keys=True)
