"""The Prometheus endpoint: ``http://<server.host>:<server.metrics_port>/metrics``.

It serves the process's metric families (``flux.metrics``) plus values read from the
catalog at scrape time: items and bytes of each index's active version, versions held
in memory, whether the index serves, and the concurrency limit.

Only ``/metrics`` answers; any other path is 404 (prometheus_client's own server answers
every path with the metrics).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flux.core.serving.catalog import Catalog

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


PATH = "/metrics"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricsEndpoint:
    """An HTTP server of its own (a daemon thread), started and stopped with the gRPC server.

    The port is bound at construction, so a busy port is an error before anything starts.
    """

    def __init__(self, host: str, port: int, catalog: Catalog, max_concurrent_calls: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Process())
        self.registry.register(ServerCollector(catalog, max_concurrent_calls))
        self._host = host
        app = only_metrics(make_wsgi_app(self.registry))
        server = _Server6 if ":" in host else _Server
        self._httpd: WSGIServer = make_server(host.strip("[]"), port, app, server, handler_class=_Quiet)
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A short poll interval: stop() waits for the loop to notice, and shutdown has a deadline.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="flux-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d%s", self._host, self.port, PATH)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()


def only_metrics(app: WSGIApp) -> WSGIApp:
    """``app`` on ``/metrics`` (any query string), 404 on every other path."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found; metrics are at {PATH}\n".encode()]
        return app(environ, start_response)

    return guarded


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line per scrape would drown the server's own records."""
