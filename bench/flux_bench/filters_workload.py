"""What ``flux bench filters`` searches: items with attributes, a random filter per query, and exact answers.

Every item holds one of ``BUCKETS`` ``bucket`` tokens (so allowing s% of the tokens lets s% of
the items pass), one to three of ``MARKETS`` ``market`` tokens, an ``explicit`` flag and an
``artist`` crowding tag shared by nearby items. A ``Scenario`` is one filter family (a
selectivity, the ``mixed`` filter, or leaving out each query's own nearest items, as a user's
already-played tracks are); its exact answers are float64 brute force over the items that pass,
crowding applied in distance order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flux.core.query.filters import Filter
from flux_bench.data import Synthetic
from flux_core.backend import Labels, Matrix, Metric
from flux_core.storage import artifact, builder
from flux_core.storage.attribute_table import Mask
from flux_core.storage.attributes import ItemAttributes
from flux_core.storage.ids import id_hashes

SELECTIVITIES = (0.5, 0.1, 0.01, 0.001)
BUCKETS = 1000
MARKETS = 10
MIXED_EXCLUDED, MIXED_FROM, MIXED_CAP = 1000, 2000, 2
#: The exclusion scenarios leave out each query's this many nearest items (by exact search) of 200,000;
#: a smaller set leaves out as large a share, a larger one as many (a user's history does not grow with
#: the catalogue, and a query carries at most 10,000 ids).
EXCLUDED_NEAREST = (1000, 10_000)
EXCLUDED_OF = 200_000
#: The ``played`` scenario leaves out this many ids of 200,000 drawn from the whole catalogue: a
#: listening history spread over it, which a query's neighbourhood holds only a share of.
PLAYED = 10_000


@dataclass(frozen=True)
class Scenario:
    """A named filter family: one filter per query, and each filter's passing mask and crowding cap."""

    name: str
    selectivity: float  # share of the items that pass, measured
    filters: Sequence[Filter]  # one per query; built when read, for the large exclusion lists
    masks: Callable[[int], Mask]  # query -> the items its filter lets through
    cap: int = 0
    tags: np.ndarray | None = None  # each item's crowding tag, when ``cap`` is set
    hashed: bool = False  # the excluded ids go as their hashes (``Filter.exclude_id_hashes``)


@dataclass(frozen=True)
class Items:
    """Every item's attributes, and the same as arrays for building masks quickly."""

    attributes: list[ItemAttributes]
    bucket: np.ndarray  # (n,) int
    markets: np.ndarray  # (n, MARKETS) bool
    explicit: np.ndarray  # (n,) bool
    artist: np.ndarray  # (n,) int

    @classmethod
    def generate(cls, base: Matrix, seed: int) -> Items:
        rng = np.random.default_rng(seed + 1)
        n = len(base)
        bucket = rng.integers(0, BUCKETS, n)
        markets = np.zeros((n, MARKETS), np.bool_)
        for row, held in enumerate(rng.integers(1, 4, n)):
            markets[row, rng.choice(MARKETS, held, replace=False)] = True
        explicit = rng.random(n) < 0.1
        # Nearby items share an artist (a bucket of 12 random hyperplanes), so crowding bites.
        planes = rng.standard_normal((base.shape[1], 12)).astype(np.float32)
        centred = base - base.mean(axis=0)
        artist = ((centred @ planes) > 0).astype(np.int64) @ (1 << np.arange(12))
        attributes = [
            ItemAttributes(
                {
                    "bucket": (f"b{bucket[i]}",),
                    "market": tuple(f"m{m}" for m in np.flatnonzero(markets[i])),
                    "explicit": ("true" if explicit[i] else "false",),
                },
                f"artist:{artist[i]}",
            )
            for i in range(n)
        ]
        return cls(attributes, bucket, markets, explicit, artist)


def scenarios(items: Items, base: Matrix, queries: Matrix, seed: int) -> list[Scenario]:
    rng = np.random.default_rng(seed + 2)
    q = len(queries)
    out = []
    for selectivity in SELECTIVITIES:
        chosen = [rng.choice(BUCKETS, max(1, round(selectivity * BUCKETS)), replace=False) for _ in range(q)]
        filters = [Filter(allow={"bucket": tuple(f"b{b}" for b in c)}, deny={}) for c in chosen]

        def mask(row: int, chosen: list[np.ndarray] = chosen) -> Mask:
            passing: Mask = np.isin(items.bucket, chosen[row])
            return passing

        share = float(np.mean([mask(r).mean() for r in range(min(q, 50))]))
        out.append(Scenario(f"{selectivity:.1%}", share, filters, mask))

    near = _nearest(base, queries, MIXED_FROM)
    markets = [rng.choice(MARKETS, 2, replace=False) for _ in range(q)]
    excluded = [rng.choice(near[r], MIXED_EXCLUDED, replace=False) for r in range(q)]
    mixed = [
        Filter(
            allow={"market": tuple(f"m{m}" for m in markets[r])},
            deny={"explicit": ("true",)},
            exclude_ids=tuple(f"item:{i}" for i in excluded[r]),
            max_per_tag=MIXED_CAP,
        )
        for r in range(q)
    ]

    def mixed_mask(row: int) -> Mask:
        passing: Mask = items.markets[:, markets[row]].any(axis=1) & ~items.explicit
        passing[excluded[row]] = False
        return passing

    share = float(np.mean([mixed_mask(r).mean() for r in range(min(q, 50))]))
    out.append(Scenario("mixed", share, mixed, mixed_mask, cap=MIXED_CAP, tags=items.artist))
    counts = [_scaled(count, len(base)) for count in EXCLUDED_NEAREST]
    nearest = _nearest(base, queries, max(counts))
    distances = np.stack([_squared(base[row], queries[r]) for r, row in enumerate(nearest)])
    nearest = np.take_along_axis(nearest, np.argsort(distances, axis=1, kind="stable"), axis=1)  # nearest first
    played = _scaled(PLAYED, len(base))
    spread = np.stack([rng.choice(len(base), played, replace=False) for _ in range(q)])
    excluding = [(exclusion_name(count), nearest[:, :count]) for count in counts]
    excluding.append((exclusion_name(played, "played"), spread))
    for hashed in (False, True):  # each list as ids, then as their hashes
        out += [_excluding(name, labels, len(base), hashed) for name, labels in excluding]
    return out


def _scaled(count: int, n: int) -> int:
    """``count`` ids of 200,000 for a set of ``n``: as large a share of a smaller set, no more of a larger one."""
    return max(1, min(count, count * n // EXCLUDED_OF))


#: Ends the name of an exclusion scenario whose ids go as their hashes.
HASHED = "#"


def exclusion_name(count: int, kind: str = "excl") -> str:
    """``excl-1k`` for the scenario that leaves out each query's 1,000 nearest items, ``played-10k``
    for 10,000 items from anywhere (``excl-1k#``, ``played-10k#``: the same ids as hashes)."""
    return f"{kind}-{count // 1000}k" if count % 1000 == 0 else f"{kind}-{count}"


def _squared(rows: Matrix, query: Matrix) -> np.ndarray:
    diff = rows.astype(np.float64) - query.astype(np.float64)
    squared: np.ndarray = np.einsum("ij,ij->i", diff, diff)
    return squared


class _Excluding(Sequence[Filter]):
    """Per query, a filter that leaves out the given labels' ids and nothing else, as ids or as their
    hashes (built when read: 500 lists of 10,000 ids would take about 300 MB as strings)."""

    def __init__(self, labels: np.ndarray, hashed: bool) -> None:
        self.labels, self.hashed = labels, hashed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> Filter:  # type: ignore[override]
        ids = [f"item:{i}" for i in self.labels[row].tolist()]
        if self.hashed:
            return Filter(allow={}, deny={}, exclude_id_hashes=id_hashes(ids))
        return Filter(allow={}, deny={}, exclude_ids=tuple(ids))


def _excluding(name: str, labels: np.ndarray, n: int, hashed: bool) -> Scenario:
    def mask(row: int) -> Mask:
        passing: Mask = np.ones(n, np.bool_)
        passing[labels[row]] = False
        return passing

    named = name + HASHED if hashed else name
    return Scenario(named, 1 - labels.shape[1] / n, _Excluding(labels, hashed), mask, hashed=hashed)


def _scores(base: Matrix, queries: Matrix) -> Iterator[tuple[int, Matrix]]:
    """Squared distances up to a per-query constant, in float32, 64 queries at a time."""
    norms = np.einsum("ij,ij->i", base, base)
    for start in range(0, len(queries), 64):
        yield start, norms[None, :] - 2 * (queries[start : start + 64] @ base.T)


def _nearest(base: Matrix, queries: Matrix, count: int) -> np.ndarray:
    out = np.empty((len(queries), count), np.int64)
    for start, scores in _scores(base, queries):
        out[start : start + len(scores)] = np.argpartition(scores, count - 1, axis=1)[:, :count]
    return out


def truth(base: Matrix, queries: Matrix, scenario: Scenario, k: int) -> list[Labels]:
    """Exact filtered answers: a float32 shortlist, ranked on float64 distances, crowding applied in order."""
    truth: list[Labels] = []
    for start, scores in _scores(base, queries):
        for offset, row_scores in enumerate(scores):
            row = start + offset
            passing = np.flatnonzero(scenario.masks(row))
            wanted = min(len(passing), 2 * k + 8 if not scenario.cap else 50 * k)
            short = passing[np.argpartition(row_scores[passing], wanted - 1)[:wanted]] if wanted else passing
            diff = base[short].astype(np.float64) - queries[row].astype(np.float64)
            ranked = short[np.argsort(np.einsum("ij,ij->i", diff, diff), kind="stable")]
            if scenario.tags is not None:
                ranked = _crowded(ranked, scenario.tags, scenario.cap)
            truth.append(ranked[:k])
    return truth


def _crowded(ranked: Labels, tags: np.ndarray, cap: int) -> Labels:
    seen: dict[int, int] = {}
    keep = []
    for label in ranked.tolist():
        tag = int(tags[label])
        if seen.get(tag, 0) < cap:
            seen[tag] = seen.get(tag, 0) + 1
            keep.append(label)
    return np.array(keep, np.int64)


def build_index(
    work: Path,
    spec: Synthetic,
    backend: str,
    params: dict[str, float],
    base: Matrix,
    items: Items,
    progress: Callable[[str], None],
) -> Path:
    """The index with attributes, built once and kept in ``work``."""
    suffix = "-".join(f"{k}{v:g}" for k, v in sorted(params.items()))
    path = work / "filters" / f"{spec.key()}-{backend}{'-' + suffix if suffix else ''}"
    if (path / artifact.MANIFEST).exists():
        return path
    progress(f"building {backend} over {len(base):,} items with attributes (kept in {path})")
    ids = [f"item:{i}" for i in range(len(base))]
    builder.build(
        path,
        base,
        ids,
        backend=backend,
        metric=Metric.L2,
        name=backend,
        params=params,
        threads=os.cpu_count() or 1,
        attributes=items.attributes,
    )
    return path
