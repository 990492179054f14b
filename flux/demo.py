"""The built-in demo: a small index Flux builds for itself, so `make run` needs no data."""

from __future__ import annotations

import logging
from pathlib import Path

from flux import config as flux_config
from flux.datasets import clustered
from flux_core.backend import Metric
from flux_core.storage import artifact, builder

log = logging.getLogger(__name__)

NAME = "demo"
COUNT = 10_000
DIMENSION = 64


def ensure_artifact(data_dir: Path) -> Path:
    """Return the demo artifact under ``data_dir``, building it first if it is not there."""
    path = data_dir / NAME
    if (path / artifact.MANIFEST).exists():
        return path
    log.info("building the demo index (%d x %d, hnsw, cosine) into %s", COUNT, DIMENSION, path)
    vectors = clustered(COUNT, DIMENSION, seed=7)
    ids = [f"track:{i:05d}" for i in range(COUNT)]
    builder.build(path, vectors, ids, backend="hnsw", metric=Metric.COSINE, name=NAME, version=1, threads=2)
    return path


def config(data_dir: Path, host: str = "127.0.0.1", port: int = 50051) -> flux_config.FluxConfig:
    """A config serving only the demo index."""
    return flux_config.parse(
        {
            "server": {"host": host, "port": port},
            "indexes": [{"name": NAME, "path": str(ensure_artifact(data_dir))}],
        },
        source="built-in demo config",
    )
