"""A plaintext port that answers only ``grpc.health.v1.Health``, for probes.

Kubelet's gRPC probe speaks plaintext and sends no token, so with TLS on the main port it
cannot reach the health service there. This second port shares the main server's health
servicer (the same SERVING / NOT_SERVING states) and has its own threads, so probes are
answered even while the main port is refusing calls beyond ``server.max_concurrent_calls``.
Being the same servicer, it applies the same rule to one index's health (``flux.index.<name>``):
with auth on, that needs a token unless ``auth.open_index_health`` is set.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc


class HealthPort:
    def __init__(self, servicer: health.HealthServicer, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="flux-health"),
            maximum_concurrent_rpcs=32,
            options=[("grpc.so_reuseport", int(reuse_port))],  # server.workers share the health port too
        )
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind the health port {host}:{port}")

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()
