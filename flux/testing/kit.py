"""The conformance suite. ``conformance_suite`` picks the mixins a backend's capabilities call for.

The mixins live beside this module, one concern each (``search``, ``loading``, ``params``,
``serving``, ``writes``, ``filterable``), all on ``harness``; this one composes them.

Every test builds real indexes with the backend under test and checks them against a
float64 brute-force oracle. Capabilities select tests: a mutable backend gets the add
tests, a Hypothesis state machine and searches beside writes, an immutable one gets a test
that ``add`` is refused; declared parameters get tests that each one is honoured. Nothing
is skipped. Every failure says what the backend did and what the contract asks.
"""

from __future__ import annotations

from typing import Any

from flux.testing.filterable import FilterableTests, NotFilterableTests
from flux.testing.harness import Harness
from flux.testing.loading import LoadTests, MmapTests
from flux.testing.params import BuildParamTests, SearchParamTests
from flux.testing.search import SearchTests
from flux.testing.serving import ServingTests
from flux.testing.writes import DeleteTests, ImmutableTests, MutableTests, NoDeleteTests
from flux_core.backend import Backend
from flux_core.storage import registry

#: The options ``conformance_suite`` accepts: class attributes of the generated test class.
OPTIONS = frozenset({"min_recall", "search_param_values", "build_param_values"})


class PluginTests(Harness):
    def test_is_a_valid_plugin(self) -> None:
        registry.validate(self.backend.name, self.backend, origin=f"backend {self.backend.name!r}")
        for name, param in {**self.backend.build_params, **self.backend.search_params}.items():
            assert param.coerce(name, param.default) == param.default, f"default of {name} is outside its bounds"
        version = self.backend.library_version()
        assert ":" in version or " " in version, (
            f"library_version() returned {version!r}; it must name the library and its version, e.g. 'hnswlib 0.8.0'"
        )

    def test_declares_only_capabilities_the_kit_can_check(self) -> None:
        if self.backend.capabilities.supports_delete:
            assert self.backend.capabilities.mutable, "supports_delete needs mutable"


def conformance_suite(backend: type[Backend], *, min_recall: float = 0.9, **options: Any) -> type:
    """A pytest test class that checks ``backend`` against Flux's backend contract.

    Bind it to a ``Test*`` name in a test module::

        TestMyBackend = conformance_suite(MyBackend)

    Options (keywords; any other name raises TypeError):

    * ``min_recall``: the recall@10 the backend must reach with default params (an exact one: 1.0).
    * ``search_param_values={"name": [v1, v2, ...]}``: the values a search param is tried at, in the
      order that must not lower recall, at least two of which must change results. Default: from
      max(minimum, 1) by factors of 8 up to 4,096 or the maximum, plus the default (``ladder``).
      Give it for a param where less means higher recall, listing values from high to low.
    * ``build_param_values={"name": [v1, v2, ...]}``: build param values that must not all build the
      same index. Default: the minimum, the default and twice the default plus one (``build_values``).
    """
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(f"conformance_suite got unknown options {unknown}; it accepts {sorted(OPTIONS)}")
    caps = backend.capabilities
    mixins: list[type] = [PluginTests, SearchTests, LoadTests, ServingTests]
    if backend.search_params:
        mixins.append(SearchParamTests)
    if backend.build_params:
        mixins.append(BuildParamTests)
    mixins.append(MutableTests if caps.mutable else ImmutableTests)
    mixins.append(DeleteTests if caps.supports_delete else NoDeleteTests)
    mixins.append(FilterableTests if caps.filterable else NotFilterableTests)
    if caps.mmap_load:
        mixins.append(MmapTests)
    attributes = {"backend": backend, "min_recall": min_recall, "__test__": True, **options}
    return type(f"Test{backend.__name__}Conformance", tuple(mixins), attributes)
