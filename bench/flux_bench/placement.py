"""Where ``flux bench serving`` runs its processes: the servers' CPUs and the load clients', kept apart.

A server and the clients that load it compete for CPUs when they share them, so by default
each side gets CPUs of its own; ``Placement`` says which, and records each process's CPU set
as read back, so the results show that the pinning held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flux_bench.procs import format_cpus


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

    def describe(self) -> str:
        method = (
            "server CPU per call: user + sys of the server's whole process tree (/proc/PID/stat) over the "
            "loaded phase, over the calls answered in it"
        )
        if self.server is None or self.clients is None:
            return (
                f"shared CPUs: servers, the in-process library and the load clients all run on CPUs "
                f"{format_cpus(self.available)}; {method}"
            )
        return (
            f"pinned: servers and the in-process library on CPUs {format_cpus(self.server)} (the library shows "
            f"what a server could reach there), load clients on CPUs {format_cpus(self.clients)}; {method}"
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
