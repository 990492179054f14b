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
from flux_core.backend import Capabilities, Labels, Mask, Matrix, Metric


class IgnoresTheMask(FaissBackend):
    """Declares filterable, and searches as if every item were allowed."""

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Mask, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        return self.search(queries, k, {**params, "ef": max(params["ef"], depth)}, threads=threads)


class IgnoresTheDepth(FaissBackend):
    """Filters, but with its default beam whatever depth is asked: it cannot walk past excluded items."""

    def search_filtered(
        self, queries: Matrix, k: int, params: Mapping[str, float], allowed: Mask, depth: int, *, threads: int = 1
    ) -> tuple[Labels, Matrix]:
        return super().search_filtered(queries, k, {**params, "ef": 16}, allowed, k, threads=threads)


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
