"""Reads the ``google.rpc.Status`` that Flux puts in the ``grpc-status-details-bin`` trailer.

The few message types involved are declared here, in a private descriptor pool, so the
client needs protobuf alone rather than googleapis-common-protos: only the wire format
(field numbers and types) has to match, and a private pool cannot clash with the real
``google.rpc`` types when both are loaded in one process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

DETAILS_KEY = "grpc-status-details-bin"
#: Trailer in which the server also names the cause of an error (the ErrorInfo reason),
#: for clients that do not read the status details.
REASON_KEY = "flux-error-reason"
#: ``ErrorInfo.domain`` of the errors Flux answers.
DOMAIN = "flux.vectors"

_F = descriptor_pb2.FieldDescriptorProto


def _declare() -> dict[str, Any]:
    """Wire-compatible copies of google.rpc.Status, ErrorInfo and BadRequest (and protobuf.Any)."""
    proto = descriptor_pb2.FileDescriptorProto(name="flux_client/rpc_status.proto", package="flux_client.rpc")
    proto.syntax = "proto3"

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> descriptor_pb2.DescriptorProto:
        added = proto.message_type.add(name=name)
        _fields(added, fields)
        return added

    def _fields(into: descriptor_pb2.DescriptorProto, fields: Iterable[tuple[str, int, int, int, str]]) -> None:
        for field_name, number, kind, label, type_name in fields:
            added = into.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Any", ("type_url", 1, _F.TYPE_STRING, one, ""), ("value", 2, _F.TYPE_BYTES, one, ""))
    message(
        "Status",
        ("code", 1, _F.TYPE_INT32, one, ""),
        ("message", 2, _F.TYPE_STRING, one, ""),
        ("details", 3, _F.TYPE_MESSAGE, many, ".flux_client.rpc.Any"),
    )
    info = message(
        "ErrorInfo",
        ("reason", 1, _F.TYPE_STRING, one, ""),
        ("domain", 2, _F.TYPE_STRING, one, ""),
        ("metadata", 3, _F.TYPE_MESSAGE, many, ".flux_client.rpc.ErrorInfo.MetadataEntry"),
    )
    entry = info.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    _fields(entry, [("key", 1, _F.TYPE_STRING, one, ""), ("value", 2, _F.TYPE_STRING, one, "")])
    message("FieldViolation", ("field", 1, _F.TYPE_STRING, one, ""), ("description", 2, _F.TYPE_STRING, one, ""))
    message("BadRequest", ("field_violations", 1, _F.TYPE_MESSAGE, many, ".flux_client.rpc.FieldViolation"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = ("Status", "ErrorInfo", "BadRequest")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"flux_client.rpc.{n}")) for n in names}


_MESSAGES = _declare()


@dataclass(frozen=True)
class FieldViolation:
    """One ``google.rpc.BadRequest`` field violation: the request field at fault and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True)
class Details:
    """What the server said beyond the code and message: why (``reason``, in ``domain``, with
    ``metadata``) and which fields (``violations``)."""

    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[FieldViolation, ...] = ()


def details(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> Details:
    """The ErrorInfo and BadRequest of a failed call; empty when absent or unreadable."""
    trailers = dict(trailing_metadata or ())
    raw = trailers.get(DETAILS_KEY)
    said = status_details(raw) if isinstance(raw, bytes) else Details()
    if not said.reason:  # a server that sent the reason in the trailer only
        fallback = trailers.get(REASON_KEY)
        said = Details(fallback if isinstance(fallback, str) else "", said.domain, said.metadata, said.violations)
    return said


def status_details(raw: bytes) -> Details:
    """The ErrorInfo and BadRequest in the bytes of a ``google.rpc.Status`` (a call's trailer, or the
    ``error`` of one StreamSearch answer, which is one field for field); empty when unreadable."""
    reason, domain, metadata, violations = "", "", {}, []
    try:
        status = _MESSAGES["Status"].FromString(raw)
        for detail in status.details:
            kind = detail.type_url.rpartition("/")[2]
            if kind == "google.rpc.ErrorInfo" and not reason:
                info = _MESSAGES["ErrorInfo"].FromString(detail.value)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif kind == "google.rpc.BadRequest":
                found = _MESSAGES["BadRequest"].FromString(detail.value).field_violations
                violations += [FieldViolation(v.field, v.description) for v in found]
    except DecodeError:
        pass  # malformed details must not hide the status itself
    return Details(reason=reason, domain=domain, metadata=metadata, violations=tuple(violations))
