"""Reads the ``google.rpc.Status`` that Flux puts in the ``grpc-status-details-bin`` trailer.

The few message types involved are declared here, in a private descriptor pool, so the
client needs protobuf alone rather than googleapis-common-protos: only the wire format
(field numbers and types) has to match, and a private pool cannot clash with the real
``google.rpc`` types when both are loaded in one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

DETAILS_KEY = "grpc-status-details-bin"
#: Trailer in which the server also names the cause of an error (the ErrorInfo reason),
#: for clients that do not read the status details.
REASON_KEY = "flux-error-reason"

_F = descriptor_pb2.FieldDescriptorProto


def _declare() -> dict[str, Any]:
    """Wire-compatible copies of google.rpc.Status, ErrorInfo and BadRequest (and protobuf.Any)."""
    proto = descriptor_pb2.FileDescriptorProto(name="flux_client/rpc_status.proto", package="flux_client.rpc")
    proto.syntax = "proto3"

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        added = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = added.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Any", ("type_url", 1, _F.TYPE_STRING, one, ""), ("value", 2, _F.TYPE_BYTES, one, ""))
    message(
        "Status",
        ("code", 1, _F.TYPE_INT32, one, ""),
        ("message", 2, _F.TYPE_STRING, one, ""),
        ("details", 3, _F.TYPE_MESSAGE, many, ".flux_client.rpc.Any"),
    )
    message("ErrorInfo", ("reason", 1, _F.TYPE_STRING, one, ""), ("domain", 2, _F.TYPE_STRING, one, ""))
    message("FieldViolation", ("field", 1, _F.TYPE_STRING, one, ""), ("description", 2, _F.TYPE_STRING, one, ""))
    message("BadRequest", ("field_violations", 1, _F.TYPE_MESSAGE, many, ".flux_client.rpc.FieldViolation"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = ("Status", "ErrorInfo", "BadRequest")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"flux_client.rpc.{n}")) for n in names}


_MESSAGES = _declare()


@dataclass(frozen=True)
class Details:
    """What the server said beyond the code and message: why (``reason``) and which field (``field``)."""

    reason: str = ""
    field: str = ""


def details(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> Details:
    """The ErrorInfo reason and first BadRequest field of a failed call; empty when absent or unreadable."""
    trailers = dict(trailing_metadata or ())
    reason, field = "", ""
    raw = trailers.get(DETAILS_KEY)
    if isinstance(raw, bytes):
        try:
            status = _MESSAGES["Status"].FromString(raw)
            for detail in status.details:
                kind = detail.type_url.rpartition("/")[2]
                if kind == "google.rpc.ErrorInfo":
                    reason = reason or _MESSAGES["ErrorInfo"].FromString(detail.value).reason
                elif kind == "google.rpc.BadRequest":
                    violations = _MESSAGES["BadRequest"].FromString(detail.value).field_violations
                    field = field or (violations[0].field if violations else "")
        except DecodeError:
            pass  # a malformed trailer must not hide the status itself
    fallback = trailers.get(REASON_KEY)
    return Details(reason=reason or (fallback if isinstance(fallback, str) else ""), field=field)
