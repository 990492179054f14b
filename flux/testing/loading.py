"""The kit's tests of ``load``: it refuses files that do not hold what the manifest says (another
count or dimension, a truncated file, a file of another index), and memory-maps when it says it does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flux.testing.harness import Harness, vectors_and_queries
from flux_core.backend import Metric

#: What ``load`` may raise for files it cannot use; Flux turns these into an error naming the artifact.
LOAD_ERRORS = (OSError, ValueError, RuntimeError)


class LoadTests(Harness):
    """``load`` refuses files that do not hold what the manifest says, rather than serving garbage."""

    count = 300
    dimension = 8

    @pytest.fixture
    def saved(self, tmp_path: Path) -> Path:
        base, _ = vectors_and_queries(self.count, self.dimension)
        folder = tmp_path / "saved"
        folder.mkdir()
        self.build(base).save(folder)
        return folder

    def refused(self, folder: Path, what: str, *, dimension: int | None = None, count: int | None = None) -> None:
        dimension = self.dimension if dimension is None else dimension
        count = self.count if count is None else count
        try:
            loaded = self.backend.load(folder, dimension, Metric.L2, count)
        except LOAD_ERRORS:
            return
        except Exception as exc:
            raise AssertionError(
                f"load of {what} raised {exc!r}; raise OSError, ValueError or RuntimeError for files it cannot use, "
                "so that Flux refuses the artifact naming it"
            ) from exc
        raise AssertionError(
            f"load of {what} succeeded (len {len(loaded)}); it must raise OSError, ValueError or RuntimeError "
            f"(asked for {count} items of dimension {dimension})"
        )

    def test_load_refuses_a_count_that_disagrees_with_the_files(self, saved: Path) -> None:
        assert len(self.backend.load(saved, self.dimension, Metric.L2, self.count)) == self.count, (
            f"an index of {self.count} items saved and loaded again must have len {self.count}"
        )
        for count in (self.count - 1, self.count + 1):
            self.refused(saved, f"{self.count} saved items as {count} (the manifest's count)", count=count)

    def test_load_refuses_another_dimension(self, saved: Path) -> None:
        for dimension in (self.dimension - 1, self.dimension + 1, 2 * self.dimension):
            self.refused(saved, f"{self.dimension}-dimensional files as dimension {dimension}", dimension=dimension)

    def test_load_refuses_a_truncated_file(self, saved: Path, tmp_path: Path) -> None:
        for name in sorted(p.name for p in saved.iterdir()):
            size = (saved / name).stat().st_size
            for keep in (size // 2, 0):
                copy = tmp_path / f"{name}-{keep}"
                shutil.copytree(saved, copy)
                with (copy / name).open("r+b") as fh:
                    fh.truncate(keep)
                self.refused(copy, f"{name} cut from {size} to {keep} bytes")

    def test_load_refuses_a_file_of_another_index(self, saved: Path, tmp_path: Path) -> None:
        base, _ = vectors_and_queries(self.count - 100, self.dimension, seed=1)
        other = tmp_path / "other"
        other.mkdir()
        self.build(base).save(other)
        for name in sorted(p.name for p in saved.iterdir()):
            if not (other / name).is_file() or (other / name).read_bytes() == (saved / name).read_bytes():
                continue
            copy = tmp_path / f"mixed-{name}"
            shutil.copytree(saved, copy)
            shutil.copyfile(other / name, copy / name)
            self.refused(copy, f"{name} of a {self.count - 100}-item index among the files of a {self.count}-item one")


class MmapTests(Harness):
    def test_load_memory_maps_the_files(self, tmp_path: Path) -> None:
        base, _ = vectors_and_queries(500, 8)
        self.build(base).save(tmp_path)
        loaded = self.backend.load(tmp_path, 8, Metric.L2, 500)
        maps = Path("/proc/self/maps").read_text()
        assert str(tmp_path.resolve()) in maps, "capabilities.mmap_load is declared but no file is memory-mapped"
        assert len(loaded) == 500, f"500 items saved: len after load is {len(loaded)}"
