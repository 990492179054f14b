"""Ports are checked before gRPC binds them: one that cannot be bound is one line naming the address and
the config key (``CannotBind``), and ``flux serve`` exits with ``EXIT_CANNOT_BIND`` instead of a traceback.
"""

from __future__ import annotations

import socket

from flux_core.errors import Code, FluxError

#: ``flux serve``'s exit code when a port cannot be bound (in use, not a local address, privileged).
EXIT_CANNOT_BIND = 3


class CannotBind(FluxError):
    """A port in the config cannot be bound; the message names the address and why."""

    code = Code.UNAVAILABLE


def check_bindable(host: str, port: int, key: str, *, reuse_port: bool = False) -> None:
    """Raise CannotBind naming ``host:port`` and the reason when it cannot be bound right now.

    Asked before gRPC binds, because gRPC's own failure is a bare RuntimeError (and a log line from
    its C core) that says neither why nor which key to change.
    """
    address = f"{host}:{port}"
    try:
        found = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise CannotBind(f"cannot listen on {address} ({key}): {reason(exc)}") from None
    problems = []
    for family, kind, protocol, _, where in found:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(where)
                return  # gRPC listens on every address it can; one is enough for it to start
            except OSError as exc:
                problems.append(exc)
    raise CannotBind(f"cannot listen on {address} ({key}): {reason(problems[0])}")


def reason(exc: OSError) -> str:
    """The operating system's reason, to follow a colon in a message: "address already in use"."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
