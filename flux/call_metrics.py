"""The per-call metrics, tallied by each handler thread on its own and summed when scraped.

prometheus_client's metrics take a lock for every increment (four per call here: in flight up
and down, the latency histogram, the status counter) and walk the histogram's buckets in
Python: about 8 us of a ~240 us unary Search on a server pinned to one CPU (measured by turning
them off, 20 alternating rounds). Here each thread writes only its own tally, so a call takes no
lock; a scrape reads every thread's numbers (which only grow) and adds them up into the same
families prometheus_client would export: ``flux_requests_total``, ``flux_request_seconds`` and
``flux_requests_in_flight`` (``CallMetrics``), and ``flux_query_rows_total``, the query rows
answered per index and strategy (``RowMetrics``).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from flux.core.query.model import Strategy

T = TypeVar("T")
_STRATEGIES = tuple(Strategy)


class _PerThread(Generic[T]):
    """Each thread's own ``T``, made on its first use and kept, with every other thread's (also
    once the thread ends: counters never go back), for a scrape to add up."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._local = threading.local()
        self._every: list[T] = []
        self._joining = threading.Lock()  # taken once per thread, on its first use, and by scrapes

    def mine(self) -> T:
        try:
            value: T = self._local.value
        except AttributeError:
            value = self._local.value = self._make()
            with self._joining:
                self._every.append(value)
        return value

    def every(self) -> list[T]:
        with self._joining:
            return list(self._every)


class _Series:
    """One thread's calls of one method on one index: latency buckets, their sum, and counts by code."""

    __slots__ = ("buckets", "codes", "created", "seconds")

    def __init__(self, buckets: int) -> None:
        self.buckets = [0] * buckets
        self.seconds = 0.0
        self.codes: dict[str, int] = {}
        self.created = time.time()


class _Tally:
    """What one thread has counted: calls started, calls finished, and a series per (method, index)."""

    __slots__ = ("finished", "series", "started")

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.series: dict[tuple[str, str], _Series] = {}


class CallMetrics(Collector):
    """Calls by method, index and status code, with their latency; ``started`` and ``finished``
    bracket each call (``finished`` may run on another thread than ``started``)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = [*sorted(buckets), float("inf")]
        self._les: list[str] = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._tallies = _PerThread(_Tally)

    def started(self) -> None:
        self._tallies.mine().started += 1

    def finished(self, method: str, index: str, code: str, seconds: float) -> None:
        tally = self._tallies.mine()
        tally.finished += 1
        series = tally.series.get((method, index))
        if series is None:
            series = tally.series[(method, index)] = _Series(len(self._bounds))
        series.buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        series.seconds += seconds
        series.codes[code] = series.codes.get(code, 0) + 1

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        tallies = self._tallies.every()
        in_flight = GaugeMetricFamily("flux_requests_in_flight", "Calls being handled now.")
        # Finished first, then started: a call that starts or ends between the two readings counts as in flight.
        finished = sum(t.finished for t in tallies)
        in_flight.add_metric([], max(0, sum(t.started for t in tallies) - finished))
        latency: dict[tuple[str, str], tuple[list[int], float, float]] = {}
        codes: dict[tuple[str, str, str], tuple[int, float]] = {}
        for tally in tallies:
            for key, series in list(tally.series.items()):
                buckets, seconds, created = latency.get(key, ([0] * len(self._bounds), 0.0, series.created))
                latency[key] = (
                    [a + b for a, b in zip(buckets, series.buckets, strict=True)],
                    seconds + series.seconds,
                    min(created, series.created),
                )
                for code, count in list(series.codes.items()):
                    total, first = codes.get((*key, code), (0, series.created))
                    codes[(*key, code)] = (total + count, min(first, series.created))
        histogram = HistogramMetricFamily(
            "flux_request_seconds",
            "Time from the first interceptor to the answer, per method and index.",
            labels=["method", "index"],
        )
        for (method, index), (buckets, seconds, created) in latency.items():
            cumulative, running = [], 0
            for le, count in zip(self._les, buckets, strict=True):
                running += count
                cumulative.append((le, running))
            histogram.add_metric([method, index], cumulative, seconds)
            labels = {"method": method, "index": index}
            histogram.samples.append(Sample("flux_request_seconds_created", labels, created))
        requests = CounterMetricFamily(
            "flux_requests", "Calls answered, per method, index and status code.", labels=["method", "index", "code"]
        )
        for series_key, (count, first) in codes.items():
            requests.add_metric(list(series_key), count, created=first)
        yield from (in_flight, histogram, requests)


class RowMetrics(Collector):
    """Query rows answered, per index and strategy (``flux.core.query.model.Strategy``): how many
    filtered rows each way answers, the exact scans above all, which cost the most as an index
    grows. A BatchSearch counts each of its rows."""

    def __init__(self) -> None:
        self._counts: _PerThread[dict[tuple[str, Strategy], int]] = _PerThread(dict)

    def answered(self, index: str, strategies: Sequence[Strategy]) -> None:
        counts = self._counts.mine()
        for strategy in _STRATEGIES:  # a count per strategy compares in C; hashing each row's enum runs Python
            if rows := strategies.count(strategy):
                key = (index, strategy)
                counts[key] = counts.get(key, 0) + rows

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals: dict[tuple[str, Strategy], int] = {}
        for counts in self._counts.every():
            for key, count in list(counts.items()):
                totals[key] = totals.get(key, 0) + count
        rows = CounterMetricFamily(
            "flux_query_rows",
            "Query rows answered, per index and strategy: index (no filter), overfetch, native_filter, exact_scan.",
            labels=["index", "strategy"],
        )
        for (index, strategy), count in sorted(totals.items(), key=lambda item: (item[0][0], item[0][1].value)):
            rows.add_metric([index, strategy.value], count)
        yield rows
