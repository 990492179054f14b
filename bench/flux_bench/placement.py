"""Where ``flux bench serving`` runs its processes: the servers' CPUs and the load clients', kept apart.

A server and the clients that load it compete for CPUs when they share them, so by default
each side gets CPUs of its own; ``Placement`` says which, and records each process's CPU set
as read back, so the results show that the pinning held.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from flux_bench.procs import format_cpus, parse_cpus

#: How ``flux bench serving`` reads the server's CPU per call.
LOADED_PHASE = (
    "user + sys of the server's whole process tree (/proc/PID/stat) over the loaded phase, "
    "over the calls answered in it"
)


@dataclass
class Placement:
    """Which CPUs the servers (and the in-process library) and the load clients may use; both
    None when every process shares every CPU. ``processes`` keeps each process's set as read back."""

    server: frozenset[int] | None
    clients: frozenset[int] | None
    available: frozenset[int]
    processes: list[dict[str, Any]] = field(default_factory=list)

    def record(self, role: str, name: str, cpu_sets: dict[int, list[int]]) -> None:
        """Note where each process of ``name`` may run, so the JSON shows the pinning held."""
        for pid, cpus in cpu_sets.items():
            self.processes.append({"role": role, "name": name, "pid": pid, "cpus": cpus})

    def summary(self) -> str:
        """Where the server and the clients run, in a few words."""
        if self.server is None or self.clients is None:
            return f"server and clients share CPUs {format_cpus(self.available)}"
        return f"server on CPUs {format_cpus(self.server)}, clients on CPUs {format_cpus(self.clients)}"

    def describe(self, clients: str = "load clients", method: str = LOADED_PHASE) -> str:
        """The placement in a sentence, naming the clients and how the server's CPU per call was read."""
        if self.server is None or self.clients is None:
            return (
                f"shared CPUs: servers, the in-process library and the {clients} all run on CPUs "
                f"{format_cpus(self.available)}; server CPU per call: {method}"
            )
        return (
            f"pinned: servers and the in-process library on CPUs {format_cpus(self.server)} (the library shows "
            f"what a server could reach there), {clients} on CPUs {format_cpus(self.clients)}; "
            f"server CPU per call: {method}"
        )

    def to_json(self) -> dict[str, Any]:
        pinned = self.server is not None and self.clients is not None
        return {
            "mode": "pinned" if pinned else "shared",
            "server_cpus": sorted(self.server) if self.server is not None else None,
            "client_cpus": sorted(self.clients) if self.clients is not None else None,
            "available_cpus": sorted(self.available),
            "processes": self.processes,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that place a benchmark's server and its load clients: ``from_arguments`` reads them."""
    parser.add_argument(
        "--server-cpus",
        metavar="LIST",
        help="CPUs for the servers and the in-process library, e.g. 0 or 0-1,3 (default: the first half of the "
        "CPUs this process may use; the rest if only --client-cpus is given)",
    )
    parser.add_argument(
        "--client-cpus",
        metavar="LIST",
        help="CPUs for the load clients, disjoint from --server-cpus (default: the CPUs the servers do not get)",
    )
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="pin nothing: servers, library and clients share every CPU (the only mode on one CPU)",
    )


def from_arguments(args: argparse.Namespace, command: str) -> Placement:
    """Server and client CPU sets from the flags; by default, disjoint halves of the CPUs this
    process may use, server first, or shared when there is only one. ``command`` names the
    benchmark in the errors."""
    available = frozenset(os.sched_getaffinity(0))
    if args.shared_cpus:
        if args.server_cpus or args.client_cpus:
            raise SystemExit(f"{command}: --shared-cpus pins nothing; leave out --server-cpus and --client-cpus")
        return Placement(None, None, available)
    try:
        server = parse_cpus(args.server_cpus) if args.server_cpus else None
        clients = parse_cpus(args.client_cpus) if args.client_cpus else None
    except ValueError as exc:
        raise SystemExit(f"{command}: {exc}") from None
    if server is None and clients is None:
        if len(available) < 2:
            return Placement(None, None, available)
        ordered = sorted(available)
        server, clients = frozenset(ordered[: len(ordered) // 2]), frozenset(ordered[len(ordered) // 2 :])
    server = server if server is not None else available - (clients or frozenset())
    clients = clients if clients is not None else available - server
    for flag, cpus in (("--server-cpus", server), ("--client-cpus", clients)):
        if not cpus:
            raise SystemExit(f"{command}: {flag} leaves no CPU (this process may use {format_cpus(available)})")
        if not cpus <= available:
            raise SystemExit(
                f"{command}: {flag} {format_cpus(cpus)} is not within the CPUs this process may use, "
                f"{format_cpus(available)}"
            )
    if server & clients:
        raise SystemExit(
            f"{command}: --server-cpus and --client-cpus share CPUs {format_cpus(server & clients)}; "
            "use --shared-cpus to share every CPU"
        )
    return Placement(server, clients, available)
