"""``faiss-ivf``: faiss's inverted file (``IndexIVFFlat``), with filters pushed down into the lists it scans."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import faiss
import numpy as np

from flux_backends.faiss import METRICS, FaissIndex, add, stored
from flux_backends.steps import silent_step
from flux_core.backend import Allowed, Capabilities, Labels, Matrix, Metric, Param, Progress

log = logging.getLogger(__name__)

#: faiss's k-means wants at least this many training vectors per list (it warns below).
_MIN_PER_LIST = 39
#: ``nprobe`` 0 scans sqrt(nlist) / ``_PROBES_PER_ROOT`` lists, at least ``_MIN_PROBES``.
#: Measured on the bench's clustered 64-d data (100 queries, recall@10 against the exact answer):
#: 8 lists found 0.993 / 0.976 / 0.953 at 0.2 / 1 / 5 million items (447 / 1,000 / 2,236 lists),
#: this rule's 8 / 13 / 19 lists 0.993 / 0.994 / 0.993 (backends/README.md).
_PROBES_PER_ROOT = 2.5
_MIN_PROBES = 8
#: A filtered search scans as many lists as hold this many times the ``depth`` it is asked for,
#: and ``nprobe`` lists more. Measured at 200,000 x 64 (clustered, 447 lists), each query's 1,000
#: or 10,000 nearest items left out (``flux bench filters``), lists holding 4x the depth found
#: 0.944 / 0.946 of the exact answer, 6x 0.987 / 0.988, 8x 0.996 / 0.998 (docs/filters.md).
COVER = 8
#: A filtered search that leaves items out by label (no mask) reads first, of those lists, the ones
#: nearest the query that hold this many times the depth, and past them only the lists where excluded
#: items lie beside items that are not: the answers lie just past the excluded items, at the edge of
#: the region they fill. At 200,000 x 64, each query's 10,000 nearest left out (100 queries, answers
#: by exact search), the lists so chosen held 0.992 of the answers (all the 8x lists: 0.998) in
#: 41,000 items not left out against 74,000 (medians); the 1,000 nearest: 0.998 in 5,800 against
#: 11,900. At 1 and 5 million items recall is unchanged and time the same or lower (docs/filters.md).
NEAR = 4
#: A filtered search whose answers came from the outer quarter of the lists it scanned (in nearness to
#: the query: lists read out of that order reach as far as the farthest of them) is run again over
#: twice the lists: the answers lie past items it looks beyond, and a query whose answers reach
#: that far likely has more of them further out (as the planner asks an over-fetch again deeper when
#: its k-th survivor lies past three quarters of it). At 5,000,000 x 64, each query's 1,000 nearest
#: left out, it took recall from 0.950 to 0.980 (backends/README.md).
FRONTIER = 0.75
_EMPTY = np.empty(0, np.int64)  # what an empty index places: its searches never ask


class FaissIvfBackend(FaissIndex):
    """faiss's inverted file over the vectors as given (``IndexIVFFlat``); label i is row i.

    k-means splits the vectors into ``nlist`` lists; a query scans the ``nprobe`` lists whose
    centroids are nearest and ranks what it finds there exactly. A search for k scans, past those,
    the further lists that ``COVER`` x k items fill on average, so that asking for hundreds of
    neighbours (the planner's over-fetch) does not read them from the lists that hold the first 10;
    one whose lists held fewer than k items is run again over twice the lists, until it scans them all.

    Filterable: ``search_filtered`` scans the query's nearest lists that hold ``COVER`` x ``depth``
    items, and ``nprobe`` lists more, with an ``IDSelectorBitmap`` over the labels that faiss reads
    inside each list's scan, so items not allowed never take a result. The answers lie past the
    items a filtered search must look beyond, where an unfiltered search's answers lie near the
    query: the lists that hold the depth, then as many more as the query's own neighbours need
    (taking the larger of the two lost recall as lists grow: 0.93 of the exact answer with each
    query's 1,000 nearest left out at 1,000,000 items, now 0.995). When items are left out by
    label (no mask), of those lists it reads first the nearest that hold ``NEAR`` x ``depth``
    items and, past them, only the lists where excluded items lie beside items that are not: the
    edge of the region the excluded items fill, where the answers are. A row whose answers came from
    the outer quarter of the lists it read is read again over twice the lists (``FRONTIER``): faiss
    reads the lists it has not read (``search_preassigned``, the lists named from the order the
    depth was counted in), and their answers merge with those it had. Its
    cost grows with the depth, not with the depth squared as a graph's beam does (faiss.py), which
    is what leaving out a user's thousands of nearest items needs.

    Immutable, like faiss.py's HNSW: build a new version for new data. ``search`` releases the
    GIL and runs on OpenMP threads bounded per call.
    """

    name = "faiss-ivf"
    kind = faiss.IndexIVFFlat
    capabilities = Capabilities(filterable=True, thread_safe_search=True)
    build_params: ClassVar[Mapping[str, Param]] = {
        "nlist": Param(0, 0, 1 << 20, doc="lists (k-means cells); 0 means the square root of the item count"),
        "seed": Param(1234, 0, 2**31 - 1, doc="random seed of k-means, for reproducible builds"),
    }
    search_params: ClassVar[Mapping[str, Param]] = {
        "nprobe": Param(
            0,
            0,
            1 << 20,
            doc="lists scanned per query, more when they hold under k; more: higher recall; 0 means "
            "the square root of nlist / 2.5, at least 8, which holds recall as the index grows",
        ),
    }

    def __init__(self, dimension: int, metric: Metric, index: Any) -> None:
        super().__init__(dimension, metric, index)
        # get_vectors reads items by label through faiss's direct map; the list numbers below come from it.
        if index.direct_map.type != faiss.DirectMap.Array:  # type: ignore[attr-defined]  # not in faiss's stubs
            index.set_direct_map_type(faiss.DirectMap.Array)  # type: ignore[attr-defined]
        self._nlist = int(index.nlist)
        # Each label's list number, which faiss's own array holds << 32 | the label's place there: a
        # filtered search counts its excluded items per list. Two bytes a label below 65,536 lists,
        # from which 10,000 excluded labels are gathered 0.05 ms sooner than from faiss's eight.
        placed = faiss.rev_swig_ptr(index.direct_map.array.data(), index.ntotal) if index.ntotal else _EMPTY
        self._list_of = (placed >> 32).astype(np.min_scalar_type(self._nlist))
        self._nprobe = default_nprobe(self._nlist)
        self._sizes = np.array([index.invlists.list_size(i) for i in range(self._nlist)], np.int64)

    @classmethod
    def build(
        cls,
        vectors: Matrix,
        metric: Metric,
        params: Mapping[str, float],
        *,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> FaissIvfBackend:
        n, dimension = vectors.shape
        faiss.omp_set_num_threads(max(1, threads))
        items = stored(vectors, metric)
        quantizer = faiss.IndexFlat(dimension, METRICS[metric])
        index = faiss.IndexIVFFlat(quantizer, dimension, _lists(n, int(params["nlist"])), METRICS[metric])
        index.own_fields = True  # the index frees its quantizer, which Python no longer does
        quantizer.this.disown()  # type: ignore[attr-defined]
        index.cp.seed = int(params["seed"])
        if n:
            _train(index, items, watched=progress is not None)
        else:  # nothing to cluster: one list, at the origin
            quantizer.add(np.zeros((1, dimension), np.float32))
            index.is_trained = True
        add(index, items, progress)
        return cls(dimension, metric, index)

    def search(
        self, queries: Matrix, k: int, params: Mapping[str, float], *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        # nprobe lists, and the lists past the first that COVER x k items fill on average: a search
        # for many candidates (the planner's over-fetch) is as thorough for its last ones as nprobe
        # makes it for the first 10, which one list holds.
        filled = -(-COVER * k * self._nlist // max(len(self), 1))
        lists = self._probes(params) + max(filled - 1, 0)
        probes = np.full(len(queries), min(lists, self._nlist), np.int64)
        return self._search(stored(queries, self.metric), k, probes, None, min(k, len(self)), threads)

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Allowed, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        bits, count = self.filter_bits(allowed)
        matrix = stored(queries, self.metric)
        excluded = None if allowed.mask is not None else allowed.excluded[allowed.excluded < len(self)]
        probes, coarse = self._covering(matrix, depth, self._probes(params), excluded)
        return self._search(matrix, k, probes, bits, min(k, count), threads, coarse)

    def _probes(self, params: Mapping[str, float]) -> int:
        """The ``nprobe`` asked for, or for 0 this index's default."""
        return int(params["nprobe"]) or self._nprobe

    def _covering(
        self, matrix: Matrix, depth: int, nprobe: int, excluded: Labels | None = None
    ) -> tuple[np.ndarray, _Coarse | None]:
        """Per query, how many lists to read first: its nearest that hold ``COVER`` x ``depth``
        items, plus ``nprobe``; and its lists in the order to read them, nearest first (None for an
        empty index). With ``excluded`` labels, only the lists ``_edge`` keeps of those come first."""
        if not len(matrix) or not len(self):
            return np.ones(len(matrix), np.int64), None
        distances, nearest = self._index.quantizer.search(matrix, self._nlist)
        held = np.cumsum(self._sizes[nearest], axis=1)
        probes: np.ndarray = np.minimum(np.count_nonzero(held < COVER * depth, axis=1) + 1 + nprobe, self._nlist)
        ranks = np.empty_like(nearest)
        np.put_along_axis(ranks, nearest, np.arange(self._nlist)[None, :], axis=1)
        if excluded is not None and len(excluded):
            near = np.count_nonzero(held < NEAR * depth, axis=1) + 1 + nprobe
            nearest, distances, probes = self._edge(nearest, distances, probes, near, excluded)
        # How far, in nearness, the lists read so far reach: as many lists as are read when they are
        # read nearest first; the nearest list past the ones read, when some were passed over.
        reach = np.maximum.accumulate(np.take_along_axis(ranks, nearest, axis=1), axis=1) + 1
        return probes.astype(np.int64), _Coarse(nearest, distances, ranks, reach)

    def _edge(
        self, nearest: np.ndarray, distances: Matrix, probes: np.ndarray, near: np.ndarray, excluded: Labels
    ) -> tuple[np.ndarray, Matrix, np.ndarray]:
        """Each query's lists reordered so that the ones to read first lead, nearest first: of its
        first ``probes``, the first ``near`` and, past them, those holding excluded items beside
        items that are not (``NEAR``). The others follow in their order, for a search read again
        over more lists. Returns the lists, their centroids' distances, and how many to read first."""
        left_out = np.bincount(self._list_of[excluded], minlength=self._nlist)
        edge = (left_out > 0) & (left_out < self._sizes)
        place = np.arange(self._nlist)[None, :]
        first = (place < probes[:, None]) & ((place < near[:, None]) | edge[nearest])
        order = np.argsort(~first, axis=1, kind="stable")
        return (
            np.take_along_axis(nearest, order, axis=1),
            np.take_along_axis(distances, order, axis=1),
            np.count_nonzero(first, axis=1),  # at least the nearest list: ``near`` counts it
        )

    def _search(
        self,
        matrix: Matrix,
        k: int,
        probes: np.ndarray,
        bits: np.ndarray | None,
        wanted: int,
        threads: int,
        coarse: _Coarse | None = None,
    ) -> tuple[Labels, Matrix]:
        """Every row with ``wanted`` results: rows whose lists held fewer are searched again over
        twice the lists, until they scan every list. With ``coarse`` (each row's lists in order), so
        are rows whose answers came from the outer ``1 - FRONTIER`` of the lists scanned, and a row
        searched again reads only the lists it has not read, its answers merged with those it had.
        Rows that scan as many lists share a call."""
        q = len(matrix)
        labels = np.full((q, k), -1, np.int64)
        distances = np.full((q, k), np.inf, np.float32)
        if not q or not len(self) or not wanted:
            return labels, distances
        faiss.omp_set_num_threads(max(1, threads))
        read = np.zeros(q, np.int64)  # lists each row has read (their first ones, with ``coarse``)
        pending = np.arange(q)
        while len(pending):
            short = []
            steps = read[pending] * (self._nlist + 1) + probes[pending]  # lists read so far, and to read
            for step in np.unique(steps).tolist():
                start, nprobe = divmod(step, self._nlist + 1)
                rows = pending[steps == step]
                if coarse is None:
                    params = faiss.SearchParametersIVF(nprobe=nprobe, sel=self.selector(bits))  # type: ignore[call-arg]
                    found_distances, found = self._index.search(matrix[rows], k, params=params)
                    labels[rows], distances[rows] = found, self.to_flux(found_distances)
                else:
                    found, found_distances = self._read(
                        matrix[rows], k, coarse.lists[rows, start:nprobe], coarse.distances[rows, start:nprobe], bits
                    )
                    if start:
                        found, found_distances = _merged(labels[rows], distances[rows], found, found_distances, k)
                    labels[rows], distances[rows] = found, found_distances
                read[rows] = nprobe
                if nprobe < self._nlist:
                    found = labels[rows]
                    again = (found >= 0).sum(axis=1) < wanted
                    if coarse is not None:
                        lists = self._list_of[np.maximum(found, 0)]
                        reach = np.where(found >= 0, coarse.ranks[rows[:, None], lists], -1).max(axis=1, initial=-1)
                        again |= reach >= FRONTIER * coarse.reach[rows, nprobe - 1]
                    short.append(rows[again])
            pending = np.concatenate(short) if short else np.empty(0, np.int64)
            probes[pending] = np.minimum(2 * probes[pending], self._nlist)
        distances[labels < 0] = np.inf
        return labels, distances

    def _read(
        self, matrix: Matrix, k: int, lists: np.ndarray, centroid_distances: Matrix, bits: np.ndarray | None
    ) -> tuple[Labels, Matrix]:
        """The k nearest allowed items of each query in the lists named for it (``lists``, with their
        centroids' distances), as Flux distances, +inf where fewer were found: faiss scans those
        lists without finding them again."""
        n, named = lists.shape
        queries = np.ascontiguousarray(matrix, np.float32)  # held here: faiss reads them through bare pointers
        lists = np.ascontiguousarray(lists, np.int64)
        centroid_distances = np.ascontiguousarray(centroid_distances, np.float32)
        found = np.empty((n, k), np.int64)
        found_distances = np.empty((n, k), np.float32)
        params = faiss.SearchParametersIVF(nprobe=named, sel=self.selector(bits))  # type: ignore[call-arg]
        self._index.search_preassigned_c(
            n,
            faiss.swig_ptr(queries),
            k,
            faiss.swig_ptr(lists),
            faiss.swig_ptr(centroid_distances),
            faiss.swig_ptr(found_distances),
            faiss.swig_ptr(found),
            False,
            params,
        )
        flux_distances = self.to_flux(found_distances)
        flux_distances[found < 0] = np.inf
        return found, flux_distances

    def stats(self) -> dict[str, Any]:
        return {
            "nlist": self._nlist,
            "nprobe_default": self._nprobe,
            "largest_list": int(self._sizes.max(initial=0)),
            "empty_lists": int(np.count_nonzero(self._sizes == 0)),
        }


@dataclass(frozen=True)
class _Coarse:
    """Each query's lists in the order to read them, their centroids' distances, each list's rank in
    nearness, and how far in nearness the lists up to each place reach (the largest rank, + 1)."""

    lists: np.ndarray
    distances: np.ndarray
    ranks: np.ndarray
    reach: np.ndarray


def _merged(labels: Labels, distances: Matrix, found: Labels, found_distances: Matrix, k: int) -> tuple[Labels, Matrix]:
    """The k nearest of two answers from lists apart (no item in both), nearest first."""
    both = np.concatenate((labels, found), axis=1)
    both_distances = np.concatenate((distances, found_distances), axis=1)
    order = np.argsort(both_distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(both, order, axis=1), np.take_along_axis(both_distances, order, axis=1)


def _train(index: Any, items: Matrix, *, watched: bool) -> None:
    """k-means over (a sample of) ``items``, before the first item is added and reported."""
    nlist, n = index.nlist, len(items)
    sample = min(n, nlist * index.cp.max_points_per_centroid)
    detail = f"{nlist:,} lists from {sample:,} of {n:,} vectors ({index.cp.niter} rounds); the items are added after it"
    with silent_step(log, "k-means", detail, watched=watched):
        index.train(items)


def default_nprobe(nlist: int) -> int:
    """The lists ``nprobe`` 0 scans: a share of an index's lists that keeps its recall as it grows,
    where a fixed count reads an ever smaller part of a larger index."""
    return min(nlist, max(_MIN_PROBES, round(math.sqrt(nlist) / _PROBES_PER_ROOT)))


def _lists(count: int, asked: int) -> int:
    """``asked`` lists (at most one per item), or for 0 the square root of ``count``, as far as
    k-means has enough items to train them."""
    if asked:
        return max(1, min(asked, count))
    return max(1, min(math.isqrt(count), count // _MIN_PER_LIST))
