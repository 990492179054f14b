"""How ``flux bench filters`` times each searcher on one query at a time, and scores what it found.

Three searchers answer the same queries: Flux's search path in-process (``Measure``), a Flux
server in another process through its Search RPC (``Grpc``), and the library in-process
(``library_rows``; for hnswlib also with its own ``filter`` callable, for faiss with its own
``IDSelectorBitmap`` at the default beam, and where that misses the recall target, at the smallest
beam or list count, doubling, that meets it). A query's filter is built untimed before its call.
Each filtered query is timed right after the same query unfiltered, so that the load of a shared
machine, which drifts during a run, weighs on both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flux.core.query.filters import Filter
from flux.core.serving.index import ServedIndex
from flux_api.v1 import types_pb2, vector_service_pb2_grpc
from flux_api.v1 import vector_service_pb2 as pb
from flux_bench.filters_workload import Scenario
from flux_bench.servers import ServerProcess, flux_server
from flux_core.backend import Labels, Matrix
from flux_core.storage import registry

WARMUP = 20
#: hnswlib's own filter takes ~0.1 s a query at 0.1% of 200,000 items: it is measured on this many.
LIBRARY_FILTER_QUERIES = 100
#: The library's own filter, where it misses the recall target at the backend's default beam or
#: lists, runs again with them doubled until it meets it (``library-tuned``): what the library
#: alone pays for the answer Flux gives. The beam (hnswlib's ``ef``, faiss's ``efSearch``) stops
#: here: faiss's HNSW needed 16,384 (about 70 ms a query) for 0.997 with each query's 10,000 nearest left out.
DEEPEST_BEAM = 16_384

#: The recall a filter's answers must reach on a backend (backend, filter name) -> bound.
RecallTarget = Callable[[str, str], float]


@dataclass
class Row:
    backend: str
    scenario: str
    who: str  # flux | flux-grpc | library | library-filter | library-tuned
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
    #: flux-grpc rows: the server's CPU (user + system, from /proc) per call, over a second pass of
    #: the same calls one after another: what a query costs the CPUs that serve it.
    server_cpu_ms: float | None = None


class Measure:
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

        current: list[Filter] = []

        def prepare(row: int) -> None:
            current[:] = [scenario.filters[row]]  # the caller's work, not timed

        def one(row: int) -> tuple[Labels, str]:
            query = self.queries[row : row + 1]
            answer = self.index.planner.search(query, [self.k], [self.params], current)[0]
            return answer.labels, answer.strategy.value

        timed = _timed(len(self.queries), one, prepare, paired=self._unfiltered)
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


def library_rows(
    backend: str,
    path: Path,
    dimension: int,
    queries: Matrix,
    k: int,
    scenarios: list[Scenario],
    truths: dict[str, list[Labels]],
    unfiltered_truth: Labels,
    recall_target: RecallTarget,
    progress: Callable[[str], None],
) -> list[Row]:
    """The library in-process on the artifact's own index file; for hnswlib also its filter callable,
    and for hnswlib and faiss their own filter at the smallest beam or lists that meet ``recall_target``."""
    progress(f"{backend}: the library in-process")
    if backend == "hnsw":
        import hnswlib

        index = hnswlib.Index(space="l2", dim=dimension)
        index.load_index(str(path / "index.hnsw"))
        default_ef = int(registry.get(backend).search_params["ef"].default)  # as Flux uses it
        filter_ef = [default_ef]

        def search(row: int) -> tuple[Labels, str]:
            index.set_ef(default_ef)  # the beam is the index's state: each call sets its own
            labels, _ = index.knn_query(queries[row : row + 1], k=k, num_threads=1)
            return np.asarray(labels[0], np.int64), "index"

        rows = [_row(backend, "none", "library", 1.0, _timed(len(queries), search), list(unfiltered_truth))]
        allowed: list[set[int]] = [set()]
        current: list[Scenario] = []

        def prepare(row: int) -> None:
            allowed[0] = set(np.flatnonzero(current[0].masks(row)).tolist())  # the caller's work, not timed

        def filtered(row: int) -> tuple[Labels, str]:
            index.set_ef(filter_ef[0])
            try:
                labels, _ = index.knn_query(queries[row : row + 1], k=k, num_threads=1, filter=allowed[0].__contains__)
            except RuntimeError:  # hnswlib raises when fewer than k pass among what it visits
                return np.empty(0, np.int64), "failed"
            return np.asarray(labels[0], np.int64), "filter"

        def hnsw_at(ef: int) -> Timed:
            filter_ef[0] = ef
            return _timed(min(len(queries), LIBRARY_FILTER_QUERIES), filtered, prepare, paired=search)

        for scenario in scenarios:
            progress(f"{backend}: hnswlib's own filter, {scenario.name}, {LIBRARY_FILTER_QUERIES} queries")
            current[:] = [scenario]
            tuning = _Tuning(backend, scenario, truths[scenario.name], recall_target(backend, scenario.name))
            rows.extend(tuning.rows(hnsw_at, "ef", default_ef, DEEPEST_BEAM, progress))
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
    if backend in FAISS_PARAMS:
        return _faiss_rows(backend, path, queries, k, scenarios, truths, unfiltered_truth, recall_target, progress)
    return []


#: Per faiss backend: faiss's search parameters class, and its field that the backend's search
#: param of the same meaning sets (the library rows run at that param's default).
FAISS_PARAMS = {
    "faiss": ("SearchParametersHNSW", "efSearch", "ef"),
    "faiss-ivf": ("SearchParametersIVF", "nprobe", "nprobe"),
}


def _faiss_rows(
    backend: str,
    path: Path,
    queries: Matrix,
    k: int,
    scenarios: list[Scenario],
    truths: dict[str, list[Labels]],
    unfiltered_truth: Labels,
    recall_target: RecallTarget,
    progress: Callable[[str], None],
) -> list[Row]:
    """faiss in-process on the artifact's index file: unfiltered, and with its own IDSelectorBitmap
    at the backend's default search parameters (its `ef` or `nprobe`): the filter pushed down
    without a depth; then, where that misses ``recall_target``, with the parameter doubled until
    it meets it (every list, or ``DEEPEST_BEAM``, at most)."""
    import faiss

    from flux_backends.faiss_ivf import default_nprobe

    index = faiss.read_index(str(path / "index.faiss"))
    faiss.omp_set_num_threads(1)
    kind, field_name, param = FAISS_PARAMS[backend]
    default = int(registry.get(backend).search_params[param].default)
    if param == "nprobe" and not default:  # 0: the lists faiss-ivf scans by default for this index
        default = default_nprobe(index.nlist)  # type: ignore[attr-defined]  # read_index gives the IndexIVF
    parameters = getattr(faiss, kind)
    plain = parameters(**{field_name: default})

    def search(row: int) -> tuple[Labels, str]:
        _, labels = index.search(queries[row : row + 1], k, params=plain)
        return np.asarray(labels[0], np.int64), "index"

    rows = [_row(backend, "none", "library", 1.0, _timed(len(queries), search), list(unfiltered_truth))]
    bits: list[np.ndarray] = []
    current: list[Scenario] = []

    def prepare(row: int) -> None:  # the caller's work, not timed
        bits[:] = [np.packbits(current[0].masks(row), bitorder="little")]

    setting = [default]  # the filtered search's, which ``faiss_at`` sets

    def filtered(row: int) -> tuple[Labels, str]:
        selector = faiss.IDSelectorBitmap(index.ntotal, faiss.swig_ptr(bits[0]))
        _, labels = index.search(queries[row : row + 1], k, params=parameters(**{field_name: setting[0]}, sel=selector))
        found = np.asarray(labels[0], np.int64)
        return found[found >= 0], "filter"

    def faiss_at(value: int) -> Timed:
        setting[0] = value
        return _timed(min(len(queries), LIBRARY_FILTER_QUERIES), filtered, prepare, paired=search)

    deepest = int(index.nlist) if param == "nprobe" else DEEPEST_BEAM  # type: ignore[attr-defined]
    for scenario in scenarios:
        progress(f"{backend}: its own IDSelectorBitmap, {scenario.name}, {LIBRARY_FILTER_QUERIES} queries")
        current[:] = [scenario]
        tuning = _Tuning(backend, scenario, truths[scenario.name], recall_target(backend, scenario.name))
        rows.extend(tuning.rows(faiss_at, field_name, default, deepest, progress))
    return rows


@dataclass(frozen=True)
class _Tuning:
    """One filter run by the library's own filter: at the default setting (``library-filter``) and,
    if that misses the recall target, at the default doubled until it meets it or reaches the
    deepest setting (``library-tuned``; its strategies column names the setting). A filter with a
    crowding cap is not tuned: the library has no cap, so recall against the capped answer cannot rise."""

    backend: str
    scenario: Scenario
    truth: list[Labels]
    target: float

    def rows(
        self, run_at: Callable[[int], Timed], setting: str, default: int, deepest: int, progress: Callable[[str], None]
    ) -> list[Row]:
        first = self._row("library-filter", run_at(default))
        if first.recall >= self.target or self.scenario.cap or default >= deepest:
            return [first]
        value, tuned = default, first
        while tuned.recall < self.target and value < deepest:
            value = min(2 * value, deepest)
            progress(f"{self.backend}: its own filter at {setting} {value}, {self.scenario.name}")
            tuned = self._row("library-tuned", run_at(value))
        named = f"{setting} {value}"  # in place of "filter"; a library that gave up stays counted ("failed")
        tuned.strategies = {named if name == "filter" else name: count for name, count in tuned.strategies.items()}
        return [first, tuned]

    def _row(self, who: str, timed: Timed) -> Row:
        return _row(self.backend, self.scenario.name, who, self.scenario.selectivity, timed, self.truth)


@contextmanager
def serve(
    backend: str, path: Path, cpus: Collection[int] | None = None
) -> Iterator[tuple[vector_service_pb2_grpc.VectorServiceStub, ServerProcess]]:
    import grpc

    server = flux_server({"indexes": [{"name": backend, "path": str(path)}]}, cpus=cpus)
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield vector_service_pb2_grpc.VectorServiceStub(channel), server
    finally:
        server.close()


class Grpc:
    """One client, one query per Search call, against a Flux server in another process."""

    def __init__(
        self,
        served: tuple[vector_service_pb2_grpc.VectorServiceStub, ServerProcess],
        backend: str,
        queries: Matrix,
        k: int,
        progress: Callable[[str], None],
    ) -> None:
        (self.stub, self.server), self.backend, self.k, self.progress = served, backend, k, progress
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
        row = _row(self.backend, "none", "flux-grpc", 1.0, _timed(len(self.vectors), self._unfiltered), list(truth))
        row.server_cpu_ms = self._server_cpu(self._unfiltered)
        return row

    def filtered(self, scenario: Scenario, truth: list[Labels]) -> Row:
        self.progress(f"{self.backend}: filter {scenario.name} through gRPC")
        current: list[pb.SearchRequest] = []

        def prepare(row: int) -> None:  # the caller's work, not timed
            message = _message(scenario.filters[row])
            current[:] = [pb.SearchRequest(index=self.backend, vector=self.vectors[row], k=self.k, filter=message)]

        def one(row: int) -> tuple[Labels, str]:
            response = self.stub.Search(current[0])
            return self._labels(response), _strategy(response)

        timed = _timed(len(self.vectors), one, prepare, paired=self._unfiltered)
        row = _row(self.backend, scenario.name, "flux-grpc", scenario.selectivity, timed, truth)
        row.server_cpu_ms = self._server_cpu(one, prepare)
        return row

    def _server_cpu(self, search: Search, prepare: Callable[[int], None] | None = None) -> float:
        """The server's CPU ms per call over every query once more, one after another: /proc counts
        in clock ticks, so the whole pass is read at once (an idle server spends next to nothing
        while the next request is built)."""
        before = self.server.cpu_seconds()
        for row in range(len(self.vectors)):
            if prepare:
                prepare(row)
            search(row)
        return round((self.server.cpu_seconds() - before) / max(len(self.vectors), 1) * 1e3, 4)


def _strategy(response: pb.SearchResponse) -> str:
    return types_pb2.SearchStrategy.Name(response.neighbors.strategy).lower().removeprefix("search_strategy_")


def _message(query_filter: Filter) -> types_pb2.Filter:
    return types_pb2.Filter(
        allow=[types_pb2.Restrict(namespace=ns, tokens=t) for ns, t in query_filter.allow.items()],
        deny=[types_pb2.Restrict(namespace=ns, tokens=t) for ns, t in query_filter.deny.items()],
        exclude_ids=query_filter.exclude_ids,
        max_per_crowding_tag=query_filter.max_per_tag,
        exclude_id_hashes=query_filter.exclude_id_hashes.tolist(),
    )
