"""The activation gate: a new version answers nobody until it has warmed up and proved its quality.

Warm-up queries touch the index's pages before real traffic does. The canary then
measures, on a sample of queries, recall@k against exact search over the new
version's own vectors, and overlap@k with the version being replaced. A version
below either threshold stays out of service and the reason is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flux.core.index import ServedIndex
from flux.core.quality import brute_force, overlap


@dataclass(frozen=True)
class GateConfig:
    warmup_queries: int = 32
    canary_queries: int = 0  # 0 turns the canary off
    k: int = 10
    min_recall: float = 0.0
    min_overlap: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class GateReport:
    passed: bool
    warmup_queries: int = 0
    canary_queries: int = 0
    k: int = 0
    recall: float = 0.0
    overlap: float = 0.0
    reason: str = ""


def run(candidate: ServedIndex, active: ServedIndex | None, config: GateConfig) -> GateReport:
    """Warm ``candidate`` up and, when configured, compare it with exact search and with ``active``."""
    count = len(candidate.backend)
    if count == 0:
        return GateReport(passed=True, reason="empty index: nothing to check")
    rng = np.random.default_rng(config.seed)
    k = min(config.k, count)
    warmup = _sample(candidate, rng, config.warmup_queries)
    if len(warmup):
        candidate.search(warmup, k, candidate.default_params, threads=candidate.batch_threads)
    if config.canary_queries <= 0:
        return GateReport(passed=True, warmup_queries=len(warmup), k=k)

    queries = _sample(candidate, rng, config.canary_queries)
    found = [h.ids for h in candidate.search(queries, k, candidate.default_params, threads=candidate.batch_threads)]
    live = candidate.ids.live()  # a snapshot of a writable index has labels without items
    everything = candidate.backend.get_vectors(live)
    truth, _ = brute_force(everything, queries, candidate.manifest.metric, k)
    expected = [candidate.ids.strings(live[row]) for row in truth]
    recall = overlap(found, expected, k)
    agreement = 1.0
    if active is not None and active.dimension == candidate.dimension:
        current = [h.ids for h in active.search(queries, k, active.default_params, threads=active.batch_threads)]
        agreement = overlap(found, current, k)
    reasons = []
    if recall < config.min_recall:
        reasons.append(f"recall@{k} {recall:.3f} is below {config.min_recall}")
    if active is not None and agreement < config.min_overlap:
        reasons.append(f"overlap@{k} with version {active.version} {agreement:.3f} is below {config.min_overlap}")
    return GateReport(
        passed=not reasons,
        warmup_queries=len(warmup),
        canary_queries=len(queries),
        k=k,
        recall=recall,
        overlap=agreement,
        reason="; ".join(reasons),
    )


def _sample(index: ServedIndex, rng: np.random.Generator, n: int) -> np.ndarray:
    """Stored vectors as queries, with a little noise so that no query is exactly an item."""
    live = index.ids.live()
    if n <= 0:
        return np.empty((0, index.dimension), np.float32)
    labels = rng.choice(live, size=n, replace=n > len(live))
    vectors = index.backend.get_vectors(labels.astype(np.int64))
    scale = float(np.std(vectors)) or 1.0
    noise = rng.standard_normal(vectors.shape).astype(np.float32) * 0.05 * scale
    return np.ascontiguousarray(vectors + noise, dtype=np.float32)
