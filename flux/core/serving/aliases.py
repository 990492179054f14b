"""Aliases: stable names that route each request to one of their arms, by weight, sticky per key.

The arm of a request with a routing key is a hash of the key, so a user (or whatever
the key stands for) stays in one arm of an experiment for as long as the weights stand.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass

from flux import metrics


@dataclass(frozen=True)
class Arm:
    index: str
    weight: float
    version: int = 0  # 0: the index's active version

    @property
    def label(self) -> str:
        return f"{self.index}@{self.version}" if self.version else self.index


class Alias:
    def __init__(self, name: str, arms: list[Arm]) -> None:
        if not arms:
            raise ValueError(f"alias {name!r} needs at least one arm")
        self.name = name
        self.arms = arms
        total = sum(a.weight for a in arms)
        self._bounds = []  # cumulative share of [0, 1) where each arm ends
        running = 0.0
        for arm in arms:
            running += arm.weight / total
            self._bounds.append(running)
        self._lock = threading.Lock()
        self._requests = [0] * len(arms)
        self._seconds = [0.0] * len(arms)

    def route(self, key: str = "") -> int:
        """The arm (by position) for a request: a hash of ``key``, or a random draw without one."""
        if len(self.arms) == 1:
            return 0
        point = _unit_interval(key) if key else random.random()
        return next((i for i, bound in enumerate(self._bounds) if point < bound), len(self.arms) - 1)

    def record(self, arm: int, seconds: float) -> None:
        with self._lock:
            self._requests[arm] += 1
            self._seconds[arm] += seconds
        label = self.arms[arm].label
        metrics.ALIAS_REQUESTS.labels(self.name, label).inc()
        metrics.ALIAS_LATENCY.labels(self.name, label).observe(seconds)

    def traffic(self) -> list[tuple[Arm, int, float]]:
        """Per arm: the arm, its requests so far and their mean latency in seconds."""
        with self._lock:
            return [
                (arm, n, (s / n if n else 0.0))
                for arm, n, s in zip(self.arms, self._requests, self._seconds, strict=True)
            ]


def _unit_interval(key: str) -> float:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
