"""``flux bench filters``: filtered recall and latency at 50%, 10%, 1% and 0.1% selectivity.

For each backend it builds an index whose items carry attributes: one of 1,000 ``bucket``
tokens (so allowing s% of the tokens lets s% of the items pass), one to three of ten
``market`` tokens, an ``explicit`` flag and an ``artist`` crowding tag shared by nearby
items. Every query then gets its own random filter, and is answered one per call by:

* ``flux``: Flux's search path in-process (``ServedIndex``, the planner included), and
* ``flux-grpc``: a Flux server in another process, through its Search RPC, and
* ``library``: the library in-process, for hnswlib also with its own ``filter`` callable.

Recall@k is measured against exact filtered search (float64 brute force over the items
that pass, crowding applied in distance order). Latency is compared with the same queries
unfiltered on the same index, each timed right before its filtered call, so that the load
of a shared machine, which drifts during a run, weighs on both alike. A ``mixed`` filter
(two markets allowed, explicit denied, 1,000 of the query's 2,000 nearest items excluded,
at most 2 per artist) shows every part at once. Prints a table and the targets with
PASS/FAIL, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flux.core.query.filters import Filter
from flux.core.serving.index import ServedIndex
from flux_api.v1 import types_pb2, vector_service_pb2_grpc
from flux_api.v1 import vector_service_pb2 as pb
from flux_bench.data import Synthetic, ground_truth
from flux_bench.servers import flux_server
from flux_core.backend import Labels, Matrix, Metric
from flux_core.storage import artifact, builder
from flux_core.storage.attributes import ItemAttributes, Mask

TARGET_RECALL = 0.95
#: Filtered latency at 1% selectivity may be at most this many times the unfiltered latency.
TARGET_SLOWDOWN = 3.0
SELECTIVITIES = (0.5, 0.1, 0.01, 0.001)
BUCKETS = 1000
MARKETS = 10
MIXED_EXCLUDED, MIXED_FROM, MIXED_CAP = 1000, 2000, 2
WARMUP = 20
#: hnswlib's own filter takes ~0.1 s a query at 0.1% of 200,000 items: it is measured on this many.
LIBRARY_FILTER_QUERIES = 100


@dataclass(frozen=True)
class Preset:
    data: Synthetic
    build: dict[str, dict[str, float]]


PRESETS = {
    "quick": Preset(Synthetic("quick-20k-32d", 20_000, 32, latent=8, queries=200), {"annoy": {"n_trees": 16.0}}),
    "full": Preset(Synthetic("embeddings-200k-128d", 200_000, 128, latent=16, queries=500), {}),
}


@dataclass(frozen=True)
class Scenario:
    """A named filter family: one filter per query, and each filter's passing mask and crowding cap."""

    name: str
    selectivity: float  # share of the items that pass, measured
    filters: list[Filter]
    masks: Callable[[int], Mask]  # query -> the items its filter lets through
    cap: int = 0
    tags: np.ndarray | None = None  # each item's crowding tag, when ``cap`` is set


@dataclass
class Row:
    backend: str
    scenario: str
    who: str  # flux | flux-grpc | library | library-filter
    selectivity: float
    queries: int
    recall: float
    p50_ms: float
    p95_ms: float
    #: The same queries unfiltered, each timed right before its filtered call (so that the
    #: machine's load, which drifts during a run, weighs on both alike), and the ratio of p50s.
    unfiltered_p50_ms: float | None = None
    slowdown: float | None = None
    strategies: dict[str, int] = field(default_factory=dict)


@dataclass
class Target:
    backend: str
    name: str
    measured: float
    bound: str
    passed: bool


def add_parser(modes: Any) -> None:
    parser = modes.add_parser(
        "filters",
        help="filtered recall and latency at 50/10/1/0.1%% selectivity, vs unfiltered and the library",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="full: 200,000 x 128 (default)")
    parser.add_argument("--count", type=int, help="base vectors (overrides the preset)")
    parser.add_argument("--queries", type=int, help="queries per filter (overrides the preset)")
    parser.add_argument("--backends", default="hnsw,annoy", help="comma-separated (default: hnsw,annoy)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--no-grpc", action="store_true", help="skip the measurements through a Flux server")
    parser.add_argument("--work-dir", type=Path, default=Path("var/bench"), help="built indexes are kept here")
    parser.add_argument("--json", type=Path, help="results file (default: WORK_DIR/filters.json)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    spec = preset.data
    if args.count:
        spec = Synthetic(**{**asdict(spec), "count": args.count})
    if args.queries:
        spec = Synthetic(**{**asdict(spec), "queries": args.queries})
    progress = _Progress()
    progress(f"generating {spec.count:,} x {spec.dimension} vectors, {spec.queries} queries, and attributes")
    base, queries = spec.generate()
    items = Items.generate(base, seed=spec.seed)
    scenarios = _scenarios(items, base, queries, seed=spec.seed)
    progress("exact filtered ground truth")
    truths = {s.name: _truth(base, queries, s, args.k) for s in scenarios}
    unfiltered_truth = ground_truth(base, queries, Metric.L2, args.k)

    rows: list[Row] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        path = _artifact(args.work_dir, spec, backend, preset.build.get(backend, {}), base, items, progress)
        index = ServedIndex(backend, artifact.load(path))
        measured = _Measure(index, queries, args.k, progress)
        rows.append(measured.unfiltered(unfiltered_truth))
        rows.extend(measured.filtered(s, truths[s.name]) for s in scenarios)
        library = _library(
            backend, path, spec.dimension, queries, args.k, scenarios, truths, unfiltered_truth, progress
        )
        rows.extend(library)
        if not args.no_grpc:
            with _server(backend, path) as stub:
                grpc_rows = _Grpc(stub, backend, queries, args.k, progress)
                rows.append(grpc_rows.unfiltered(unfiltered_truth))
                rows.extend(grpc_rows.filtered(s, truths[s.name]) for s in scenarios)
        index.artifact.backend.close()
    targets = _targets(rows)
    command = "flux " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _print(rows, targets, spec, args.k, command)
    out = args.json or args.work_dir / "filters.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command,
        "data": asdict(spec),
        "k": args.k,
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "rows": [asdict(r) for r in rows],
        "targets": [asdict(t) for t in targets],
    }
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0 if all(t.passed for t in targets) else 1


# -- data -----------------------------------------------------------------------------------


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


def _scenarios(items: Items, base: Matrix, queries: Matrix, seed: int) -> list[Scenario]:
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
    return out


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


def _truth(base: Matrix, queries: Matrix, scenario: Scenario, k: int) -> list[Labels]:
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


def _artifact(
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


# -- measuring ------------------------------------------------------------------------------


class _Measure:
    """Flux's search path in-process: what the Search RPC runs, minus gRPC."""

    def __init__(self, index: ServedIndex, queries: Matrix, k: int, progress: Callable[[str], None]) -> None:
        self.index, self.queries, self.k, self.progress = index, queries, k, progress
        self.params = index.default_params

    def _unfiltered(self, row: int) -> tuple[Labels, str]:
        labels, _ = self.index.nearest(self.queries[row : row + 1], self.k, self.params)
        return labels[0], "index"

    def unfiltered(self, truth: Labels) -> Row:
        self.progress(f"{self.index.name}: unfiltered")
        return _row(self.index.name, "none", "flux", 1.0, _timed(len(self.queries), self._unfiltered), list(truth))

    def filtered(self, scenario: Scenario, truth: list[Labels]) -> Row:
        self.progress(f"{self.index.name}: filter {scenario.name}")

        def one(row: int) -> tuple[Labels, str]:
            query = self.queries[row : row + 1]
            answer = self.index.planner.search(query, [self.k], [self.params], [scenario.filters[row]])[0]
            return answer.labels, answer.strategy.value

        timed = _timed(len(self.queries), one, paired=self._unfiltered)
        return _row(self.index.name, scenario.name, "flux", scenario.selectivity, timed, truth)


#: Answers one query (by row number): the labels found, and the strategy that found them.
Search = Callable[[int], tuple[Labels, str]]


@dataclass
class Timed:
    found: list[Labels]
    latencies_ms: np.ndarray
    strategies: dict[str, int]
    paired_ms: np.ndarray | None  # the unfiltered call timed right before each


def _timed(
    count: int, search: Search, prepare: Callable[[int], None] | None = None, paired: Search | None = None
) -> Timed:
    """Each query once, one at a time, after a warm-up; ``prepare(row)`` runs untimed before each,
    ``paired(row)`` (the same query unfiltered) is timed right before each."""
    for row in range(min(WARMUP, count)):
        if prepare:
            prepare(row)
        if paired:
            paired(row)
        search(row)
    found: list[Labels] = []
    latencies: list[int] = []
    before: list[int] = []
    strategies: dict[str, int] = {}
    clock = time.perf_counter_ns
    for row in range(count):
        if prepare:
            prepare(row)
        if paired:
            started = clock()
            paired(row)
            before.append(clock() - started)
        started = clock()
        labels, strategy = search(row)
        latencies.append(clock() - started)
        found.append(labels)
        strategies[strategy] = strategies.get(strategy, 0) + 1
    to_ms = np.float64(1e6)
    return Timed(found, np.array(latencies) / to_ms, strategies, np.array(before) / to_ms if paired else None)


def _row(backend: str, scenario: str, who: str, selectivity: float, timed: Timed, truth: Sequence[Labels]) -> Row:
    found = timed.found
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth[: len(found)], strict=True))
    wanted = sum(len(t) for t in truth[: len(found)])
    p50 = float(np.percentile(timed.latencies_ms, 50))
    paired = None if timed.paired_ms is None else float(np.percentile(timed.paired_ms, 50))
    strategies = {name: count for name, count in timed.strategies.items() if name}
    return Row(
        backend,
        scenario,
        who,
        round(selectivity, 5),
        len(found),
        round(hits / max(wanted, 1), 4),
        round(p50, 4),
        round(float(np.percentile(timed.latencies_ms, 95)), 4),
        None if paired is None else round(paired, 4),
        None if paired is None else round(p50 / paired, 2),
        strategies,
    )


def _library(
    backend: str,
    path: Path,
    dimension: int,
    queries: Matrix,
    k: int,
    scenarios: list[Scenario],
    truths: dict[str, list[Labels]],
    unfiltered_truth: Labels,
    progress: Callable[[str], None],
) -> list[Row]:
    """The library in-process on the artifact's own index file; for hnswlib also its filter callable."""
    progress(f"{backend}: the library in-process")
    if backend == "hnsw":
        import hnswlib

        index = hnswlib.Index(space="l2", dim=dimension)
        index.load_index(str(path / "index.hnsw"))
        index.set_ef(64)  # the hnsw backend's default ef, as Flux used

        def search(row: int) -> tuple[Labels, str]:
            labels, _ = index.knn_query(queries[row : row + 1], k=k, num_threads=1)
            return np.asarray(labels[0], np.int64), "index"

        rows = [_row(backend, "none", "library", 1.0, _timed(len(queries), search), list(unfiltered_truth))]
        allowed: list[set[int]] = [set()]
        current: list[Scenario] = []

        def prepare(row: int) -> None:
            allowed[0] = set(np.flatnonzero(current[0].masks(row)).tolist())  # the caller's work, not timed

        def filtered(row: int) -> tuple[Labels, str]:
            try:
                labels, _ = index.knn_query(queries[row : row + 1], k=k, num_threads=1, filter=allowed[0].__contains__)
            except RuntimeError:  # hnswlib raises when fewer than k pass among what it visits
                return np.empty(0, np.int64), "failed"
            return np.asarray(labels[0], np.int64), "filter"

        for scenario in scenarios:
            progress(f"{backend}: hnswlib's own filter, {scenario.name}, {LIBRARY_FILTER_QUERIES} queries")
            current[:] = [scenario]
            timed = _timed(min(len(queries), LIBRARY_FILTER_QUERIES), filtered, prepare, paired=search)
            rows.append(
                _row(backend, scenario.name, "library-filter", scenario.selectivity, timed, truths[scenario.name])
            )
        return rows
    if backend == "annoy":
        from annoy import AnnoyIndex

        annoy = AnnoyIndex(dimension, "euclidean")
        annoy.load(str(path / "index.ann"))
        search_k = 10 * annoy.get_n_trees() * k  # the annoy backend's default, as Flux used

        def nearest(row: int) -> tuple[Labels, str]:
            return np.asarray(annoy.get_nns_by_vector(queries[row], k, search_k), np.int64), "index"

        timed = _timed(len(queries), nearest)
        annoy.unload()
        return [_row(backend, "none", "library", 1.0, timed, list(unfiltered_truth))]
    return []


@contextmanager
def _server(backend: str, path: Path) -> Iterator[vector_service_pb2_grpc.VectorServiceStub]:
    import grpc

    server = flux_server({"indexes": [{"name": backend, "path": str(path)}]})
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield vector_service_pb2_grpc.VectorServiceStub(channel)
    finally:
        server.close()


class _Grpc:
    """One client, one query per Search call, against a Flux server in another process."""

    def __init__(
        self,
        stub: vector_service_pb2_grpc.VectorServiceStub,
        backend: str,
        queries: Matrix,
        k: int,
        progress: Callable[[str], None],
    ) -> None:
        self.stub, self.backend, self.k, self.progress = stub, backend, k, progress
        self.vectors = [
            types_pb2.FloatVectors(dimension=queries.shape[1], data=q.astype("<f4").tobytes()) for q in queries
        ]

    def _labels(self, response: pb.SearchResponse) -> Labels:
        return np.array([int(i.split(":")[1]) for i in response.neighbors.ids], np.int64)

    def _unfiltered(self, row: int) -> tuple[Labels, str]:
        response = self.stub.Search(pb.SearchRequest(index=self.backend, vector=self.vectors[row], k=self.k))
        return self._labels(response), _strategy(response)

    def unfiltered(self, truth: Labels) -> Row:
        self.progress(f"{self.backend}: unfiltered through gRPC")
        return _row(self.backend, "none", "flux-grpc", 1.0, _timed(len(self.vectors), self._unfiltered), list(truth))

    def filtered(self, scenario: Scenario, truth: list[Labels]) -> Row:
        self.progress(f"{self.backend}: filter {scenario.name} through gRPC")
        messages = [_message(f) for f in scenario.filters]

        def one(row: int) -> tuple[Labels, str]:
            request = pb.SearchRequest(index=self.backend, vector=self.vectors[row], k=self.k, filter=messages[row])
            response = self.stub.Search(request)
            return self._labels(response), _strategy(response)

        timed = _timed(len(self.vectors), one, paired=self._unfiltered)
        return _row(self.backend, scenario.name, "flux-grpc", scenario.selectivity, timed, truth)


def _strategy(response: pb.SearchResponse) -> str:
    return types_pb2.SearchStrategy.Name(response.neighbors.strategy).lower().removeprefix("search_strategy_")


def _message(query_filter: Filter) -> types_pb2.Filter:
    return types_pb2.Filter(
        allow=[types_pb2.Restrict(namespace=ns, tokens=t) for ns, t in query_filter.allow.items()],
        deny=[types_pb2.Restrict(namespace=ns, tokens=t) for ns, t in query_filter.deny.items()],
        exclude_ids=query_filter.exclude_ids,
        max_per_crowding_tag=query_filter.max_per_tag,
    )


# -- targets and output -----------------------------------------------------------------------


def _targets(rows: list[Row]) -> list[Target]:
    out = []
    for r in rows:
        if r.who == "flux" and r.scenario != "none":
            passed = r.recall >= TARGET_RECALL
            out.append(Target(r.backend, f"recall@k, filter {r.scenario}", r.recall, f">= {TARGET_RECALL}", passed))
    for r in rows:
        if r.who in ("flux", "flux-grpc") and r.scenario == f"{0.01:.1%}" and r.slowdown is not None:
            passed = r.slowdown <= TARGET_SLOWDOWN
            name = f"p50 at 1% / unfiltered ({r.who})"
            out.append(Target(r.backend, name, r.slowdown, f"<= {TARGET_SLOWDOWN:g}x", passed))
    return out


def _print(rows: list[Row], targets: list[Target], spec: Synthetic, k: int, command: str) -> None:
    print(f"\n{command}")
    print(f"filtered search: {spec.name}, {spec.count:,} x {spec.dimension}, k={k}, {spec.queries} queries per filter")
    header = f"{'backend':<7} {'filter':<7} {'passing':>8} {'who':<15} {'queries':>7} {'recall':>6}"
    print(f"{header} {'p50 ms':>7} {'p95 ms':>7} {'unf p50':>7} {'x unf':>6}  strategies")
    for r in rows:
        unfiltered = f"{r.unfiltered_p50_ms:.3f}" if r.unfiltered_p50_ms is not None else "-"
        slowdown = f"{r.slowdown:.2f}" if r.slowdown is not None else "-"
        strategies = ", ".join(f"{name} {count}" for name, count in sorted(r.strategies.items()))
        print(
            f"{r.backend:<7} {r.scenario:<7} {r.selectivity:>8.2%} {r.who:<15} {r.queries:>7} {r.recall:>6.3f} "
            f"{r.p50_ms:>7.3f} {r.p95_ms:>7.3f} {unfiltered:>7} {slowdown:>6}  {strategies}"
        )
    print("unf p50: the same queries unfiltered, each timed right before its filtered call; x unf: p50 / unf p50")
    print("\ntargets (each from this one run)")
    for t in targets:
        print(f"  {t.backend:<7} {t.name:<40} {t.measured:>7.3f} {t.bound:<8} {'PASS' if t.passed else 'FAIL'}")


class _Progress:
    def __init__(self) -> None:
        self._started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self._started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)
