"""Builds an index artifact from vectors and ids with a named backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from flux_core.backend import Matrix, Metric, Progress, defaults, resolve_params
from flux_core.errors import InvalidArgument
from flux_core.storage import artifact, canary, registry
from flux_core.storage.attributes import AttributeStore, ItemAttributes
from flux_core.vectors import check_vectors


def build(
    out: Path,
    vectors: Matrix,
    ids: Sequence[str] | None,
    *,
    backend: str,
    metric: Metric,
    name: str,
    version: int = 1,
    params: Mapping[str, float] | None = None,
    threads: int = 1,
    progress: Progress | None = None,
    attributes: Sequence[ItemAttributes] | None = None,
) -> artifact.Manifest:
    """Build with ``backend`` and write the artifact to ``out``; ids default to the row numbers.

    With ``attributes`` (one per vector) the artifact can answer filtered searches: it then
    also holds a float32 copy of the vectors, which exact filtered scans read (docs/filters.md).
    """
    backend_cls = registry.get(backend)
    resolved = resolve_params(backend_cls.build_params, defaults(backend_cls.build_params), params or {}, "params")
    if vectors.ndim != 2 or vectors.shape[1] < 1:
        raise InvalidArgument(f"vectors must be a 2-D matrix with at least one column, got shape {vectors.shape}")
    id_list = [str(i) for i in range(len(vectors))] if ids is None else list(ids)
    if len(id_list) != len(vectors):
        raise InvalidArgument(f"{len(id_list)} ids for {len(vectors)} vectors; give one id per vector")
    if len(set(id_list)) != len(id_list):
        seen: set[str] = set()
        duplicate = next(i for i in id_list if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise InvalidArgument(f"id {duplicate!r} appears more than once; ids must be unique")
    check_vectors(vectors, "vectors")  # the rule queries and upserts follow: no backend builds on NaN
    if attributes is not None and len(attributes) != len(vectors):
        raise InvalidArgument(f"{len(attributes)} attribute sets for {len(vectors)} vectors; give one per vector")
    index = backend_cls.build(vectors, metric, resolved, threads=threads, progress=progress)
    store = AttributeStore.build(attributes) if attributes is not None else None
    return artifact.write(
        out,
        index,
        id_list,
        name=name,
        version=version,
        build_params=resolved,
        attributes=store,
        vectors=vectors if store is not None else None,
        canary=canary.compute(vectors, metric) if len(vectors) else None,
    )
