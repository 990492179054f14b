"""Recording the golden examples: every case answered by a fresh server of the fixture, checked for
answers that would not come out the same on every run, and written as the example files (protobuf JSON
with sorted maps, lists of numbers on one line) that `make golden` commits for review."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from flux_api.v1 import vector_service_pb2 as vpb

from .calls import DOMAIN, Method, clear, error_of, failed_message, message_error_of
from .cases import CASES, Case
from .fixture import EXAMPLES, FIXTURE, load_fixture, serve


def record(examples: Path = EXAMPLES) -> dict[str, Any]:
    """Answer every case on a fresh server; the files' contents by name (written by ``write``)."""
    files = load_fixture(examples)["files"]
    if list(CASES) != files:
        raise ValueError(f"{FIXTURE} replays {files}, tools/golden/cases.py defines {list(CASES)}")
    recorded: dict[str, Any] = {}
    with serve(examples) as address, grpc.insecure_channel(address) as channel:
        for name in files:
            cases = [record_case(channel, case) for case in CASES[name]()]
            names = [c["name"] for c in cases]
            if len(set(names)) != len(names):
                raise ValueError(f"{name}: case names repeat")
            recorded[name] = {"cases": cases}
    return recorded


def record_case(channel: grpc.Channel, case: Case) -> dict[str, Any]:
    method = Method.named(case.method)
    requests = list(case.request) if isinstance(case.request, Sequence) else [case.request]
    entry: dict[str, Any] = {"name": case.name, "comment": case.comment, "method": case.method}
    as_json = [as_dict(r) for r in requests]
    if method.client_streaming:
        entry["requests"] = as_json
    else:
        entry["request"] = as_json[0]
    if method.server_streaming:
        return _record_stream(channel, method, requests, case, entry)
    try:
        answer = method.call(channel, requests)
    except grpc.RpcError as failure:
        said = error_of(failure)
        if "domain" in said:
            raise ValueError(f"{case.name}: the error names the domain {said['domain']!r}, not {DOMAIN!r}") from None
        entry["error"] = said  # an error's message is never compared: nothing to ignore
        return entry
    _check_no_ties(case.name, answer)
    if case.ignore:
        entry["ignore"] = list(case.ignore)
    for path in case.ignore:
        clear(answer, path)
    entry["response"] = as_dict(answer)
    return entry


def _record_stream(
    channel: grpc.Channel, method: Method, requests: Sequence[Message], case: Case, entry: dict[str, Any]
) -> dict[str, Any]:
    """A stream's answers, in order, and the error it ended with, if any."""
    answers, failure = method.answers(channel, requests)
    if case.ignore:
        entry["ignore"] = list(case.ignore)
    entry["responses"] = []
    for answer in answers:
        if failed_message(answer):
            written = message_error_of(answer)
            if "domain" in written["error"]:
                raise ValueError(f"{case.name}: an answer's error names the domain {written['error']['domain']!r}")
            entry["responses"].append(written)
            continue
        _check_no_ties(case.name, answer)
        for path in case.ignore:
            clear(answer, path)
        entry["responses"].append(as_dict(answer))
    if failure is not None:
        said = error_of(failure)
        if "domain" in said:
            raise ValueError(f"{case.name}: the error names the domain {said['domain']!r}, not {DOMAIN!r}")
        entry["error"] = said
    return entry


def as_dict(message: Message) -> dict[str, Any]:
    """``message`` in protobuf JSON, with the keys of maps and Structs sorted (the server's order may vary)."""
    value: dict[str, Any] = _sort_maps(json_format.MessageToDict(message), message.DESCRIPTOR)
    return value


def _sort_maps(value: Any, kind: Any) -> Any:
    if kind.full_name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        return json.loads(json.dumps(value, sort_keys=True))
    for found in kind.fields:
        if found.json_name not in value or found.message_type is None:
            continue
        inner = value[found.json_name]
        if found.message_type.GetOptions().map_entry:
            entry_value = found.message_type.fields_by_name["value"].message_type
            value[found.json_name] = {
                key: inner[key] if entry_value is None else _sort_maps(inner[key], entry_value) for key in sorted(inner)
            }
        elif found.is_repeated:
            value[found.json_name] = [_sort_maps(element, found.message_type) for element in inner]
        else:
            value[found.json_name] = _sort_maps(inner, found.message_type)
    return value


def _check_no_ties(name: str, answer: Message) -> None:
    """Equal distances in one answer would make it depend on how ties are broken: pick other data."""
    answers: list[list[float]] = []
    if isinstance(answer, vpb.StreamSearchResponse):
        answer = answer.search
    if isinstance(answer, vpb.SearchResponse | vpb.SearchByIdResponse):
        answers = [list(answer.neighbors.distances)]
    elif isinstance(answer, vpb.BatchSearchResponse):
        answers = [list(n.distances) for n in answer.results]
        start = 0
        for count in answer.packed.counts:
            answers.append(list(answer.packed.distances[start : start + count]))
            start += count
    for distances in answers:
        if len(set(distances)) != len(distances):
            raise ValueError(f"{name}: equal distances in one answer {distances}; choose another query")


def write(recorded: Mapping[str, Any], examples: Path = EXAMPLES) -> list[Path]:
    written = []
    for name, content in recorded.items():
        path = examples / name
        path.write_text(dumps(content) + "\n", encoding="utf-8")
        written.append(path)
    return written


def dumps(value: Any, depth: int = 0) -> str:
    """JSON indented by two spaces, with lists of numbers or strings on one line."""
    pad = "  " * depth
    if isinstance(value, dict) and value:
        inner = [f"{pad}  {json.dumps(k, ensure_ascii=False)}: {dumps(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(inner) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(f"{pad}  {dumps(v, depth + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
