"""The pipeline's Beam metrics, in namespace ``flux``: ``items_read``, ``items_indexed`` (as each
shard's build reports its progress: a runner's UI shows it grow), ``shards_built``, ``bytes_written``
(counters), ``shard_items``, ``shard_build_seconds``, ``shard_peak_rss_bytes`` (the worker process's
peak RSS while it built the shard) and ``shard_added_rss_bytes`` (that peak less the process's RSS
when the shard's items had arrived) (distributions). Each step updates its own; the command line
reports them.
"""

from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "flux"
ITEMS_READ = Metrics.counter(NAMESPACE, "items_read")
ITEMS_INDEXED = Metrics.counter(NAMESPACE, "items_indexed")
SHARDS_BUILT = Metrics.counter(NAMESPACE, "shards_built")
BYTES_WRITTEN = Metrics.counter(NAMESPACE, "bytes_written")
SHARD_ITEMS = Metrics.distribution(NAMESPACE, "shard_items")
SHARD_SECONDS = Metrics.distribution(NAMESPACE, "shard_build_seconds")
PEAK_RSS = Metrics.distribution(NAMESPACE, "shard_peak_rss_bytes")
ADDED_RSS = Metrics.distribution(NAMESPACE, "shard_added_rss_bytes")
