"""What the filter planner expects each way of answering a filtered query to cost, fixed per index.

The planner chooses between an exact scan of the items that pass, fetching more candidates from
the index (over-fetch), and the backend's own filtered search (push-down) by comparing these
estimates. They are computed from counts (items scanned, candidates fetched, the index's size and
dimension) and constants measured on the development machine (2 CPUs) with
``flux bench filters`` workloads, 200,000 x 64 and x 128: never from timings of the searches being
served. So the same request against the same index version takes the same path, and gets the same
answer, whatever ran before it, on any worker process (docs/filters.md, "Deterministic answers").

Scans are modelled on scans of every size, 256 items to the whole index, because their cost per
item is not constant: a few thousand rows stay in the CPU caches (about 1 ns per value), scattered
rows of a larger scan do not (2 to 4 ns), and one large matrix product woke OpenBLAS's threads,
which on a loaded machine cost 10 to 30 times a single-threaded product (a learnt median of small
scans predicted 2 ms for a 20 ms full scan). The planner scores in blocks that OpenBLAS runs in the
calling thread, and a scan of more than ``sweep / gather`` of the index reads every row in order
instead of gathering the passing ones, which is what ``scan`` assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Per backend: seconds per fetch, per candidate and dimension, per candidate squared, and per
#: index item and dimension (a backend whose every search reads the whole index). Measured at
#: 200,000 x 64, one query per call, on one thread: hnswlib fetches 1,280 candidates (ef 1,280)
#: in 1.0 ms and 20,480 in 19 ms; faiss's bounded beam costs 1.2 ms at ef 1,000 and 84 ms at
#: 20,000 (its candidate heap counts below the current distance at each step, quadratic in ef);
#: Annoy inspects 10 x n_trees nodes per candidate (25 ms for 200 at 128 dimensions); faiss's
#: inverted file scans lists holding 8 candidates per item of depth (1.3 ms at a depth of 10,000).
FETCH: dict[str, tuple[float, float, float, float]] = {
    "hnsw": (5e-5, 1.4e-8, 0.0, 0.0),
    "voyager": (5e-5, 1.4e-8, 0.0, 0.0),
    "faiss": (5e-5, 1.6e-8, 1.6e-10, 0.0),
    "faiss-ivf": (1e-4, 2e-9, 0.0, 0.0),
    "annoy": (1e-4, 1e-6, 0.0, 0.0),
    "exact": (5e-5, 0.0, 0.0, 1e-9),
}
#: A backend Flux has no measurements of is expected to cost what hnswlib does.
DEFAULT_FETCH = FETCH["hnsw"]
#: A scan's fixed part (planning, the shortlist's exact distances) in seconds.
SCAN_FIXED = 3e-5
#: Seconds per scanned item and dimension, gathering scattered rows of the vector copy.
GATHER = 2.5e-9
#: Seconds per index item and dimension, reading every row of the copy in order.
SWEEP = 1.0e-9
#: Without a vector copy, each item is read through ``Backend.get_vectors``: about 20 us an item
#: for hnswlib at 128 dimensions.
BACKEND_GATHER = 2e-7
#: Push-down builds a bit per label for the library: seconds per index item.
MASK_PER_ITEM = 2e-9


@dataclass(frozen=True)
class Costs:
    """Expected seconds of each way of answering one query at one index, from counts alone."""

    dimension: int
    gather: float = GATHER  # per scanned item and dimension
    sweep: float | None = SWEEP  # per index item and dimension; None: no vector copy to sweep
    scan_fixed: float = SCAN_FIXED
    fetch_fixed: float = DEFAULT_FETCH[0]
    fetch_per_value: float = DEFAULT_FETCH[1]  # per candidate and dimension
    fetch_squared: float = DEFAULT_FETCH[2]  # per candidate squared
    fetch_per_item: float = DEFAULT_FETCH[3]  # per index item and dimension

    @classmethod
    def of(cls, backend: str, dimension: int, *, copy: bool) -> Costs:
        """The model of an index served by ``backend``; ``copy``: exact scans read the artifact's vector copy."""
        fixed, per_value, squared, per_item = FETCH.get(backend, DEFAULT_FETCH)
        return cls(
            dimension,
            gather=GATHER if copy else BACKEND_GATHER,
            sweep=SWEEP if copy else None,
            fetch_fixed=fixed,
            fetch_per_value=per_value,
            fetch_squared=squared,
            fetch_per_item=per_item,
        )

    def sweeps(self, items: int, size: int) -> bool:
        """Whether a scan of ``items`` of an index of ``size`` reads every row in order (cheaper than gathering)."""
        return self.sweep is not None and size * self.sweep < items * self.gather

    def scan(self, items: int, size: int) -> float:
        """An exact scan of ``items`` passing items, in an index of ``size`` labels."""
        per_value = size * self.sweep if self.sweeps(items, size) and self.sweep is not None else items * self.gather
        return self.scan_fixed + self.dimension * per_value

    def fetch(self, candidates: int, size: int) -> float:
        """The index's own search for ``candidates`` neighbours (a beam as wide), in an index of ``size`` items."""
        return (
            self.fetch_fixed
            + self.dimension * (candidates * self.fetch_per_value + size * self.fetch_per_item)
            + candidates * candidates * self.fetch_squared
        )

    def native(self, depth: int, size: int, *, masked: bool = True) -> float:
        """The backend's filtered search taking in ``depth`` items, with its mask over ``size`` labels
        (``masked``), or given only the labels left out (``flux_core.backend.Allowed``)."""
        return self.fetch(depth, size) + (size * MASK_PER_ITEM if masked else 0.0)
