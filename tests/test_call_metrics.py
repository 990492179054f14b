"""The per-thread call tallies export what prometheus_client's own metrics would for the same calls."""

from __future__ import annotations

import random
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flux.call_metrics import CallMetrics, RowMetrics
from flux.core.query.model import Strategy
from flux.metrics import LATENCY_BUCKETS

HELP_SECONDS = "Time from the first interceptor to the answer, per method and index."
HELP_CALLS = "Calls answered, per method, index and status code."


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample line but the _created ones (timestamps), by name and labels."""
    found = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        name, value = line.rsplit(" ", 1)
        found[name] = float(value)
    return found


def test_the_tallies_of_several_threads_add_up_to_prometheus_clients_figures() -> None:
    rng = random.Random(7)
    bounds = [*LATENCY_BUCKETS, LATENCY_BUCKETS[-1] + 1]  # each bound exactly, and beyond the last
    calls = [
        (
            rng.choice(["flux_api.v1.VectorService/Search", "unknown"]),
            rng.choice(["tracks", ""]),
            rng.choice(["OK", "NOT_FOUND", "INVALID_ARGUMENT"]),
            rng.choice([*bounds, rng.random() / 100]),
        )
        for _ in range(4000)
    ]
    reference = CollectorRegistry()
    seconds = Histogram(
        "flux_request_seconds", HELP_SECONDS, ["method", "index"], buckets=LATENCY_BUCKETS, registry=reference
    )
    answered = Counter("flux_requests", HELP_CALLS, ["method", "index", "code"], registry=reference)
    in_flight = Gauge("flux_requests_in_flight", "Calls being handled now.", registry=reference)
    for method, index, code, took in calls:
        seconds.labels(method, index).observe(took)
        answered.labels(method, index, code).inc()
    in_flight.inc(3)

    tallied = CallMetrics(LATENCY_BUCKETS)
    registry = CollectorRegistry()
    registry.register(tallied)

    def count(part: list[tuple[str, str, str, float]]) -> None:
        for method, index, code, took in part:
            tallied.started()
            tallied.finished(method, index, code, took)

    threads = [threading.Thread(target=count, args=(calls[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(3):  # still running
        tallied.started()

    expected, got = _samples(reference), _samples(registry)
    assert got.keys() == expected.keys()
    for name, value in expected.items():  # sums add in another order: equal up to rounding
        assert got[name] == pytest.approx(value, rel=1e-12), name
    assert got["flux_requests_in_flight"] == 3


def test_each_series_has_its_created_time() -> None:
    tallied = CallMetrics(LATENCY_BUCKETS)
    registry = CollectorRegistry()
    registry.register(tallied)
    tallied.started()
    tallied.finished("m", "i", "OK", 0.001)
    labels = {"method": "m", "index": "i"}
    assert registry.get_sample_value("flux_request_seconds_created", labels)
    assert registry.get_sample_value("flux_requests_created", {**labels, "code": "OK"})
    assert registry.get_sample_value("flux_requests_in_flight") == 0


def test_the_rows_tallied_by_several_threads_add_up_to_a_counters_figures() -> None:
    rng = random.Random(11)
    answers = [
        (rng.choice(["tracks", "podcasts"]), [rng.choice(list(Strategy)) for _ in range(rng.randint(1, 5))])
        for _ in range(2000)
    ]
    reference = CollectorRegistry()
    rows = Counter(
        "flux_query_rows",
        "Query rows answered, per index and strategy: index (no filter), overfetch, native_filter, exact_scan.",
        ["index", "strategy"],
        registry=reference,
    )
    for index, strategies in answers:
        for strategy in strategies:
            rows.labels(index, strategy.value).inc()

    tallied = RowMetrics()
    registry = CollectorRegistry()
    registry.register(tallied)
    threads = [
        threading.Thread(target=lambda part: [tallied.answered(*answer) for answer in part], args=(answers[n::4],))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _samples(registry) == _samples(reference)
    assert registry.get_sample_value("flux_query_rows_total", {"index": "tracks", "strategy": "exact_scan"})
