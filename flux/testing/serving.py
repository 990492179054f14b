"""The kit's tests through Flux's own build, artifact and serving path: string ids survive, and
searches from many threads at once agree with serial ones. Every backend gets them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flux.core.serving.index import ServedIndex
from flux.testing.harness import Harness, vectors_and_queries
from flux_core.backend import Metric
from flux_core.storage import artifact, builder, registry


class ServingTests(Harness):
    """Through Flux's own build, artifact and serving path, as a server would use the backend."""

    @pytest.fixture
    def registered(self) -> Iterator[None]:
        name = self.backend.name
        if name in registry.names() and registry.get(name) is self.backend:
            yield
            return
        registry.register(name, self.backend, replace=True)
        try:
            yield
        finally:
            registry.unregister(name)

    def serve(self, path: Path, vectors: np.ndarray, ids: list[str], metric: Metric = Metric.L2) -> ServedIndex:
        builder.build(path, vectors, ids, backend=self.backend.name, metric=metric, name="kit", threads=2)
        return ServedIndex("kit", artifact.load(path))

    @pytest.mark.usefixtures("registered")
    def test_string_ids_survive_build_and_load(self, tmp_path: Path) -> None:
        base, _ = vectors_and_queries(3000, 8)
        ids = [f"item:{i}" for i in range(3000)]
        ids[0], ids[1], ids[2] = "トラック:一", "🎵 " * 10, "x" * 2000
        index = self.serve(tmp_path / "a", base, ids)
        for row in (0, 1, 2, 2999):
            found = index.search(base[row : row + 1], 1, index.default_params)[0]
            assert found == [ids[row]], f"searching item {row}'s own vector found {found}, not {ids[row]!r}"
            assert index.label_of(ids[row]) == row, f"{ids[row]!r} maps to label {index.label_of(ids[row])}, not {row}"

    @pytest.mark.usefixtures("registered")
    def test_concurrent_searches_agree_with_serial_ones(self, tmp_path: Path) -> None:
        base, queries = vectors_and_queries(2000, 16, queries=200)
        index = self.serve(tmp_path / "a", base, [str(i) for i in range(2000)])
        serial = [index.search(q[None], 10, index.default_params)[0] for q in queries]
        results: dict[int, list[str]] = {}
        errors: list[BaseException] = []

        def work(rows: range) -> None:
            try:
                for row in rows:
                    results[row] = index.search(queries[row : row + 1], 10, index.default_params)[0]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(range(i, 200, 8),)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, f"searches from 8 threads at once raised: {errors[0]!r}"
        differ = [r for r in range(200) if results[r] != serial[r]]
        assert not differ, f"{len(differ)} of 200 searches run from 8 threads differ from serial ones (row {differ[0]})"
