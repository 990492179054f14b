"""The kit's ``filterable`` tests catch a backend that declares the capability but does not honour it.

Each backend below is faiss's with one deliberate bug; the unbroken one passes the same tests
in test_conformance.py. The tests run in this process (a second import of a compiled library
aborts it, which a pytester run would risk).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from flux.testing import conformance_suite
from flux_backends.faiss import FaissBackend
from flux_core.backend import Allowed, Capabilities, Labels, Matrix, Metric


class IgnoresTheMask(FaissBackend):
    """Declares filterable, and searches as if every item were allowed."""

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Allowed, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        return self.search(queries, k, {**params, "ef": max(params["ef"], depth)}, threads=threads)


class IgnoresTheDepth(FaissBackend):
    """Filters, but with its default beam whatever depth is asked: it cannot walk past excluded items."""

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Allowed, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        return super().search_filtered(queries, k, {**params, "ef": 16}, allowed, k, threads=threads)


class IgnoresTheExcluded(FaissBackend):
    """Filters by a mask, and takes no mask to mean that every item is allowed."""

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Allowed, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        everything = Allowed(allowed.mask) if allowed.mask is not None else Allowed()
        return super().search_filtered(queries, k, params, everything, depth, threads=threads)


class FiltersWithoutDeclaring(FaissBackend):
    capabilities = Capabilities(filterable=False)


@pytest.mark.parametrize(
    ("backend", "test", "message"),
    [
        (IgnoresTheMask, "test_filtered_search_keeps_to_the_mask_with_recall", "which the mask leaves out"),
        (IgnoresTheMask, "test_leaving_out_each_querys_nearest_items", "which the mask leaves out"),
        (IgnoresTheMask, "test_empty_full_short_and_tiny_masks", "must give label -1"),
        (IgnoresTheDepth, "test_leaving_out_each_querys_nearest_items", "recall@10 against exact filtered search"),
        (IgnoresTheDepth, "test_a_depth_covering_the_index_gives_the_exact_answer", "must be the exact"),
        (IgnoresTheExcluded, "test_leaving_out_each_querys_nearest_items", "which the mask leaves out"),
        (IgnoresTheExcluded, "test_excluded_labels_without_a_mask", "must give label -1"),
    ],
)
def test_the_filterable_tests_fail_a_backend_that_does_not_filter(backend: type, test: str, message: str) -> None:
    suite = conformance_suite(backend)
    method = getattr(suite(), test)
    arguments = (Metric.L2,) if test == "test_filtered_search_keeps_to_the_mask_with_recall" else ()
    with pytest.raises(AssertionError, match=message):
        method(*arguments)


def test_a_backend_that_does_not_declare_filterable_must_refuse_search_filtered() -> None:
    suite = conformance_suite(FiltersWithoutDeclaring)
    with pytest.raises(pytest.fail.Exception, match="NotImplementedError"):
        suite().test_search_filtered_is_refused()


def test_the_suite_holds_the_filterable_tests_exactly_when_declared() -> None:
    assert hasattr(conformance_suite(FaissBackend), "test_leaving_out_each_querys_nearest_items")
    assert not hasattr(conformance_suite(FiltersWithoutDeclaring), "test_leaving_out_each_querys_nearest_items")
    assert hasattr(conformance_suite(FiltersWithoutDeclaring), "test_search_filtered_is_refused")


def test_allowed_flags_gives_either_form_as_a_mask_of_the_size_asked() -> None:
    """What a backend that takes only masks gets from ``Allowed.flags``: a short mask padded with
    False, a long one cut, excluded labels cleared and those past the size ignored."""
    import numpy as np

    short = Allowed(np.array([True, False, True]))
    assert short.flags(5).tolist() == [True, False, True, False, False]
    assert short.flags(2).tolist() == [True, False]
    excluded = Allowed(excluded=np.array([1, 3, 7], np.int64))
    assert excluded.flags(5).tolist() == [True, False, True, False, True]
    assert Allowed().flags(3).tolist() == [True, True, True]
    flags = excluded.flags(5)
    flags[0] = False  # a new array each time: the caller may write to it
    assert excluded.flags(5)[0]
