"""The Prometheus endpoint: ``http://<server.host>:<server.metrics_port>/metrics``.

It serves the process's metric families (``flux.metrics``) plus values read from the
catalog at scrape time: items and bytes of each index's active version, versions held
in memory, whether the index serves, and the concurrency limit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flux.core.catalog import Catalog

log = logging.getLogger(__name__)


class ServerCollector(Collector):
    """Index sizes and states, read from the catalog when Prometheus scrapes."""

    def __init__(self, catalog: Catalog, max_concurrent_calls: int) -> None:
        self._catalog = catalog
        self._limit = max_concurrent_calls

    def collect(self) -> Iterator[Metric]:
        items = GaugeMetricFamily("flux_index_items", "Items in the active version of each index.", labels=["index"])
        size = GaugeMetricFamily(
            "flux_index_bytes", "Artifact bytes of the active version of each index.", labels=["index"]
        )
        held = GaugeMetricFamily(
            "flux_index_loaded_versions", "Versions of each index loaded in memory.", labels=["index"]
        )
        serving = GaugeMetricFamily(
            "flux_index_serving", "1 while the index has a version answering.", labels=["index"]
        )
        for name in self._catalog.names():
            manager = self._catalog.manager(name)
            slot = manager.active
            loaded = slot.loaded if slot is not None else None
            serving.add_metric([name], 1 if loaded is not None else 0)
            if slot is not None and loaded is not None:
                items.add_metric([name], len(loaded.index.backend))
                size.add_metric([name], slot.artifact_bytes)
            held.add_metric([name], sum(1 for s in manager.slots() if s.loaded is not None))
        yield from (items, size, held, serving)
        yield GaugeMetricFamily(
            "flux_max_concurrent_calls",
            "Calls admitted at once (server.max_concurrent_calls); 0: no limit.",
            value=self._limit,
        )


class _Process(Collector):
    """Everything registered in prometheus_client's default registry (the flux.metrics families)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class MetricsEndpoint:
    """An HTTP server of its own (a daemon thread), started and stopped with the gRPC server."""

    def __init__(self, host: str, port: int, catalog: Catalog, max_concurrent_calls: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Process())
        self.registry.register(ServerCollector(catalog, max_concurrent_calls))
        self._host, self._requested = host, port
        self._httpd: Any = None
        self.port = 0

    def start(self) -> None:
        self._httpd, _ = start_http_server(self._requested, self._host, self.registry)
        self.port = self._httpd.server_address[1]
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
