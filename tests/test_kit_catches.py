"""The conformance kit catches the bugs that serving would hit: each test below runs one kit test
against a backend with one deliberate bug (a subclass of an in-tree backend) and expects it to
fail saying what went wrong. The unbroken backends pass the same tests in test_conformance.py,
and the IVF example in test_example_plugin.py.

The kit runs in a pytest of its own (pytester), as a plugin author runs it.
"""

from __future__ import annotations

import pytest

# Imported here, so that the in-process runs below reuse them: pytester forgets the modules a run
# imported, and a compiled library (hnswlib) imported a second time aborts the process.
import flux_backends.exact
import flux_backends.hnsw
import flux_backends.voyager
from flux.testing import conformance_suite

pytest_plugins = ["pytester"]

BROKEN = '''
import contextlib
from collections.abc import Iterator, Mapping

import numpy as np

from flux.testing import conformance_suite
from flux_backends.exact import ExactBackend
from flux_backends.hnsw import HnswBackend
from flux_backends.voyager import VoyagerBackend
from flux_core.backend import Metric, ReadWriteGate, pad_results


class EfBelowK(HnswBackend):
    """faiss's IndexHNSW does not raise efSearch to k: it finds at most about ef neighbours."""

    def search(self, queries, k, params, *, threads=1):
        labels, distances = super().search(queries, min(k, int(params["ef"])), params, threads=threads)
        return pad_results(labels, distances, k)


class IgnoresEf(HnswBackend):
    def search(self, queries, k, params, *, threads=1):
        return super().search(queries, k, {**params, "ef": 64}, threads=threads)


class InvertedEf(HnswBackend):
    """Reads the param the wrong way round: a larger ef gives a smaller beam."""

    def search(self, queries, k, params, *, threads=1):
        return super().search(queries, k, {**params, "ef": 4097 - min(int(params["ef"]), 4096)}, threads=threads)


class IgnoresM(HnswBackend):
    @classmethod
    def build(cls, vectors, metric, params, *, threads=1, progress=None):
        return super().build(vectors, metric, {**params, "M": 16}, threads=threads, progress=progress)


class TrustsItsFiles(ExactBackend):
    """Loads however many items the files hold, whatever the manifest's count."""

    @classmethod
    def load(cls, directory, dimension, metric, count):
        stored = len(np.load(directory / "labels.npy"))
        return super().load(directory, dimension, metric, stored)


class RawVectors(ExactBackend):
    """Keeps raw arrays, and checks only the labels file against the manifest."""

    def save(self, directory):
        state = self._state
        np.asarray(state.vectors, np.float32).tofile(directory / "vectors.f32")
        np.asarray(state.labels, np.int64).tofile(directory / "labels.i64")
        return ["vectors.f32", "labels.i64"]

    @classmethod
    def load(cls, directory, dimension, metric, count):
        labels = np.fromfile(directory / "labels.i64", np.int64)
        if labels.shape != (count,):
            raise ValueError(f"labels.i64 holds {labels.shape}, expected ({count},)")
        path = directory / "vectors.f32"
        if not path.stat().st_size:
            return cls(dimension, metric, np.empty((0, dimension), np.float32), labels)
        vectors = np.memmap(path, np.float32, mode="r").reshape(-1, dimension)
        return cls(dimension, metric, vectors, labels)


class ChecksOnlyTheCount(ExactBackend):
    @classmethod
    def load(cls, directory, dimension, metric, count):
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        labels = np.load(directory / "labels.npy")
        if len(vectors) != count or len(labels) != count:
            raise ValueError(f"{len(vectors)} vectors and {len(labels)} labels, expected {count}")
        return cls(dimension, metric, vectors, labels)


class ChecksOnlyTheVectors(ExactBackend):
    @classmethod
    def load(cls, directory, dimension, metric, count):
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        if vectors.shape != (count, dimension):
            raise ValueError(f"vectors.npy holds {vectors.shape}, expected ({count}, {dimension})")
        return cls(dimension, metric, vectors, np.load(directory / "labels.npy"))


class _WritesDoNotWait(ReadWriteGate):
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        yield


class UnlockedWrites(VoyagerBackend):
    """Writes go straight to the library while searches read it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = _WritesDoNotWait()
'''

# (broken backend, kit test (a -k expression), what the failure must say)
CAUGHT = [
    pytest.param(
        "EfBelowK",
        "test_k_results_whenever_k_fits_even_at_the_smallest_search_params and l2",
        "*k=100, ef=64: query * got 64 results*a search budget below k (ef < k) must be raised to k*",
        id="a-ef-below-k",
    ),
    pytest.param(
        "IgnoresEf",
        "test_each_search_param_changes_results_without_lowering_recall",
        "*search param ef at 1, 8, 64, 512, 4096 gave identical results on 2,000 items: the backend ignores it*",
        id="b-ignored-search-param",
    ),
    pytest.param(
        "InvertedEf",
        "test_each_search_param_changes_results_without_lowering_recall",
        "*recall@10 fell from 1.000 at ef=512 to 0.* at ef=4096*more ef must not lower recall*",
        id="b-inverted-search-param",
    ),
    pytest.param(
        "IgnoresM",
        "test_each_build_param_is_honoured",
        "*build param M at 2, 16, 33 built indexes that answer alike and save the same bytes: the backend ignores it*",
        id="c-ignored-build-param",
    ),
    pytest.param(
        "TrustsItsFiles",
        "test_load_refuses_a_count_that_disagrees_with_the_files",
        "*load of 300 saved items as 299 (the manifest's count) succeeded (len 300)*",
        id="d-count-unchecked",
    ),
    pytest.param(
        "RawVectors",
        "test_load_refuses_a_truncated_file",
        "*load of vectors.f32 cut from 9600 to 4800 bytes succeeded (len 150)*",
        id="d-truncated-file",
    ),
    pytest.param(
        "ChecksOnlyTheCount",
        "test_load_refuses_another_dimension",
        "*load of 8-dimensional files as dimension 7 succeeded*",
        id="d-dimension-unchecked",
    ),
    pytest.param(
        "ChecksOnlyTheVectors",
        "test_load_refuses_a_file_of_another_index",
        "*load of labels.npy of a 200-item index among the files of a 300-item one succeeded*",
        id="d-mixed-files",
    ),
]


@pytest.mark.parametrize(("backend", "test", "message"), CAUGHT)
def test_the_kit_fails_a_backend_with_the_bug(pytester: pytest.Pytester, backend: str, test: str, message: str) -> None:
    pytester.makepyfile(test_broken=f"{BROKEN}\nTestBroken = conformance_suite({backend})\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", test)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])


def test_the_kit_fails_writes_that_do_not_lock_out_searches(pytester: pytest.Pytester) -> None:
    """A race shows in most runs, not all (a run takes about 2 s): up to five runs must catch it.
    Each runs in a process of its own, as a race in a library may crash the process."""
    pytester.makepyfile(test_broken=f"{BROKEN}\nTestBroken = conformance_suite(UnlockedWrites)\n")
    for _ in range(5):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "test_searches_beside_writes")
        if result.ret != 0:
            break
    assert result.ret == 1, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*a search beside writes failed: a search beside writes came back short*"])


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TypeError, match=r"unknown options \['min_recal'\]; it accepts \['build_param_values'"):
        conformance_suite(flux_backends.exact.ExactBackend, min_recal=1.0)
