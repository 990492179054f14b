"""Prometheus metrics, defined once here so that every module records into the same families.

Names follow Prometheus conventions (``flux_`` prefix, base units, ``_total`` counters).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from flux.call_metrics import CallMetrics, RowMetrics

#: Latency buckets for queries: 0.1 ms to 10 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

VERSION_TRANSITIONS = Counter(
    "flux_version_transitions_total",
    "Index version state changes; reason says why a version failed (artifact, gate, memory, error).",
    ["index", "state", "reason"],
)
VERSION_LOAD_SECONDS = Histogram(
    "flux_version_load_seconds",
    "Time to verify, load, warm up and gate a version.",
    ["index"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
INDEX_VERSION = Gauge("flux_index_active_version", "The version each index answers from.", ["index"])
ALIAS_REQUESTS = Counter("flux_alias_requests_total", "Requests routed through an alias, per arm.", ["alias", "arm"])
ALIAS_LATENCY = Histogram(
    "flux_alias_request_seconds",
    "Latency of requests routed through an alias, per arm.",
    ["alias", "arm"],
    buckets=LATENCY_BUCKETS,
)
WAL_SYNC_SECONDS = Histogram(
    "flux_wal_sync_seconds",
    "Time to write and fdatasync one group of write-ahead log records.",
    ["index"],
    buckets=LATENCY_BUCKETS,
)
WAL_GROUP_RECORDS = Histogram(
    "flux_wal_group_records",
    "Records made durable by one fdatasync (group commit).",
    ["index"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
WRITES = Counter("flux_writes_total", "Upserted and deleted items applied, per index.", ["index", "op"])
SNAPSHOT_SECONDS = Histogram(
    "flux_snapshot_seconds",
    "Time to write a writable index's snapshot as a new version, writes paused.",
    ["index"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
VERSION_SWAP_SECONDS = Histogram(
    "flux_version_swap_seconds",
    "Time to make a loaded version the active one (a writable index catches up its log meanwhile).",
    ["index"],
    buckets=LATENCY_BUCKETS,
)
# Calls, recorded by flux.api.observability: flux_requests_total, flux_request_seconds and
# flux_requests_in_flight (flux.call_metrics). method: "flux_api.v1.VectorService/Search" or
# "unknown"; index: a configured index or alias, else "".
CALLS = CallMetrics(LATENCY_BUCKETS)
REGISTRY.register(CALLS)
# Query rows answered, recorded by flux.core.serving.catalog: flux_query_rows_total. index: the
# configured index that answered (an alias's arm, not the alias); strategy: one of four.
ROWS = RowMetrics()
REGISTRY.register(ROWS)
# The router (flux.router.metrics). index: a logical index of the router's config; shard: the shard's
# name in answers and errors (shard-00002-of-00004); code: a status code name. All bounded by the config.
ROUTER_SHARD_SECONDS = Histogram(
    "flux_router_shard_seconds",
    "Time from the router sending a call to a shard to the shard's answer or error, hedge included.",
    ["index", "shard"],
    buckets=LATENCY_BUCKETS,
)
ROUTER_SHARD_CALLS = Counter(
    "flux_router_shard_calls_total",
    "Calls the router made to a shard, per status code once gRPC's retries and the router's hedge are spent.",
    ["index", "shard", "code"],
)
ROUTER_HEDGES = Counter(
    "flux_router_hedges_total",
    "Second calls the router sent to a shard whose first call had not answered within the hedging delay.",
    ["index", "shard"],
)
ROUTER_HEDGE_WINS = Counter(
    "flux_router_hedge_wins_total",
    "Shard calls whose answer came from the hedge, not the first call.",
    ["index", "shard"],
)
ROUTER_PARTIAL_ANSWERS = Counter(
    "flux_router_partial_answers_total",
    "Answers the router gave without some shards (missing_shards set; on_missing_shards: partial).",
    ["index"],
)
ROUTER_MISSING_SHARDS = Counter(
    "flux_router_missing_shards_total", "Shards left out of the router's partial answers.", ["index", "shard"]
)
