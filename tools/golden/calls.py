"""Calling any RPC of the contract by its full name, and reading its answer as the examples write it:
an error by code, ErrorInfo reason and metadata and BadRequest fields; a response with the fields a case
ignores cleared. Recording and replaying both go through here, so they read answers the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import descriptor, descriptor_pool, message_factory
from google.protobuf.message import Message

DOMAIN = "flux.vectors"
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Method:
    """One RPC of the contract, found by its full name (``flux_api.v1.VectorService/Search``)."""

    name: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool = False

    @classmethod
    def named(cls, name: str) -> Method:
        service_name, _, method_name = name.partition("/")
        try:
            service = descriptor_pool.Default().FindServiceByName(service_name)
        except KeyError:
            raise ValueError(f"no service {service_name!r} in the contract") from None
        method = service.methods_by_name.get(method_name)
        if method is None:
            raise ValueError(f"{service_name} has no method {method_name!r}")
        return cls(
            name,
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
            bool(method.client_streaming),
            bool(method.server_streaming),
        )

    def call(self, channel: grpc.Channel, requests: Sequence[Message]) -> Message:
        """Call the method: with the one request, or with the stream of them (client streaming)."""
        path = f"/{self.name}"
        if self.server_streaming:
            raise ValueError(f"{self.name} answers with a stream: use answers()")
        if self.client_streaming:
            stream = channel.stream_unary(
                path, request_serializer=_serialize, response_deserializer=self.response.FromString
            )
            answer: Message = stream(iter(requests), timeout=TIMEOUT_SECONDS)
            return answer
        [request] = requests
        unary = channel.unary_unary(path, request_serializer=_serialize, response_deserializer=self.response.FromString)
        answer = unary(request, timeout=TIMEOUT_SECONDS)
        return answer

    def answers(self, channel: grpc.Channel, requests: Sequence[Message]) -> tuple[list[Message], grpc.RpcError | None]:
        """Call a method that answers with a stream (StreamSearch): every request sent, then half-closed;
        the answers in order, and the error the stream ended with (None when it ended OK)."""
        path = f"/{self.name}"
        received: list[Message] = []
        if self.client_streaming:
            call = channel.stream_stream(
                path, request_serializer=_serialize, response_deserializer=self.response.FromString
            )
            stream = call(iter(requests), timeout=TIMEOUT_SECONDS)
        else:
            [request] = requests
            call = channel.unary_stream(
                path, request_serializer=_serialize, response_deserializer=self.response.FromString
            )
            stream = call(request, timeout=TIMEOUT_SECONDS)
        try:
            received.extend(stream)
        except grpc.RpcError as failure:
            return received, failure
        return received, None


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def error_of(failure: grpc.RpcError) -> dict[str, Any]:
    """A failed call as the examples write it: code, ErrorInfo reason and metadata, BadRequest fields.

    The Python client's own decoding of status details reads them (``flux_client``), so the
    replay checks what its users get."""
    from flux_client._errors import from_rpc_error

    return _as_written(from_rpc_error(failure))


def failed_message(answer: Message) -> bool:
    """Whether a stream's answer is a failed message's status (StreamSearchResponse's ``error``)."""
    return "result" in answer.DESCRIPTOR.oneofs_by_name and answer.WhichOneof("result") == "error"


def message_error_of(answer: Message) -> dict[str, Any]:
    """A failed message's answer as the examples write it: its request id, and its status as ``error_of``
    writes the same failure of a unary call (never its text)."""
    from flux_client._errors import from_status

    typed = cast(Any, answer)  # a StreamSearchResponse, read as any message here
    status = typed.error
    error = from_status(status.code, status.message, status.SerializeToString())
    return {"requestId": str(typed.request_id), "error": _as_written(error)}


def _as_written(error: Any) -> dict[str, Any]:
    said: dict[str, Any] = {"code": error.code.name, "reason": error.reason}
    if error.domain != DOMAIN:
        said["domain"] = error.domain  # never in an example: every Flux error names its domain
    if error.metadata:
        said["metadata"] = dict(sorted(error.metadata.items()))
    if error.field_violations:
        said["field_violations"] = [v.field for v in error.field_violations]
    return said


# -- clearing the fields a case ignores ---------------------------------------------------------------


def clear(message: Message, path: str, whole: str = "") -> None:
    """Clear the field at ``path`` (proto field names joined by dots) in ``message``, in every element of
    the repeated messages on the way. Raises ValueError when a name is no field of its message."""
    whole = whole or path
    head, _, rest = path.partition(".")
    fields = message.DESCRIPTOR.fields_by_name
    if head not in fields:
        raise ValueError(f"{message.DESCRIPTOR.full_name} has no field {head!r} (ignore: {whole!r})")
    if not rest:
        message.ClearField(head)
        return
    found = fields[head]
    if found.message_type is None or found.message_type.GetOptions().map_entry:
        raise ValueError(f"{found.full_name} holds no message fields (ignore: {whole!r})")
    present = list(getattr(message, head)) if found.is_repeated else [getattr(message, head)]
    if not found.is_repeated and not message.HasField(head):
        present = []
    for element in present:
        clear(element, rest, whole)
    if not present:  # still check that the names exist
        clear(message_factory.GetMessageClass(cast(descriptor.Descriptor, found.message_type))(), rest, whole)
