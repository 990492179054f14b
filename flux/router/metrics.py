"""The router's own metrics (``flux.metrics``): each shard call, the hedges it sends, the answers that lack shards.

A shard call is counted once, when the router has its outcome: the shard's answer, or the error it
ended with once the channel's retries (and the router's hedge, when on) were spent. Its latency runs
from the router sending it to that outcome. The retries themselves are gRPC's (the channel's
service config ``retryPolicy``): gRPC makes them inside the call and tells the caller nothing of
them, so the router counts no retries. Hedges it does count, as it sends them itself
(``flux.router.channels.hedged``): each second call, and each call the second one answered.

The router's own calls (method, index, code, latency) are counted by the interceptors a server
has (``flux_requests_total``, ``flux_request_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc

from flux import metrics


class ShardMeter:
    """The series of one shard of one logical index, created with the router (so they start at 0)."""

    def __init__(self, index: str, shard: str) -> None:
        self._index, self._shard = index, shard
        self._seconds = metrics.ROUTER_SHARD_SECONDS.labels(index, shard)
        self._hedges = metrics.ROUTER_HEDGES.labels(index, shard)
        self._hedge_wins = metrics.ROUTER_HEDGE_WINS.labels(index, shard)
        metrics.ROUTER_MISSING_SHARDS.labels(index, shard)
        metrics.ROUTER_PARTIAL_ANSWERS.labels(index)

    def ended(self, outcome: Any, started: float, *, by_hedge: bool = False) -> Any:
        """Record a call sent at ``started`` (``time.perf_counter``) that ended with ``outcome`` (an answer or
        a ``grpc.RpcError``); returns ``outcome``. Called before the router reads the outcome, so a caller
        that has the router's answer finds the call counted."""
        self._seconds.observe(time.perf_counter() - started)
        code = outcome.code() if isinstance(outcome, grpc.RpcError) else grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN.name
        metrics.ROUTER_SHARD_CALLS.labels(self._index, self._shard, name).inc()
        if by_hedge:
            self._hedge_wins.inc()
        return outcome

    def hedge(self) -> None:
        """The router sent a second call, the first not having answered within the hedging delay."""
        self._hedges.inc()


def partial_answer(index: str, missing: Iterable[str]) -> None:
    """An answer of logical index ``index`` sent without the shards named in ``missing`` (none: not partial)."""
    missing = list(missing)
    if not missing:
        return
    metrics.ROUTER_PARTIAL_ANSWERS.labels(index).inc()
    for shard in missing:
        metrics.ROUTER_MISSING_SHARDS.labels(index, shard).inc()
