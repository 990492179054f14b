"""The kit's tests of declared parameters: each search param changes results without lowering recall
as it rises, and each build param builds a different index. Added for the params a backend declares.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from flux.testing.harness import Harness, vectors_and_queries
from flux.testing.oracle import brute_force, recall
from flux_core.backend import Metric, Param, defaults

#: How far recall@10 (over 200 queries) may dip between two rising values of a search param: graph
#: searches are not strictly monotone query by query, an inverted or broken param drops far more.
RECALL_NOISE = 0.01


def ladder(param: Param) -> list[float]:
    """Rising values of a search param: from max(minimum, 1) by factors of 8 up to 4,096 (or the
    maximum), plus the default; a float param gets five even steps across its bounds."""
    if not param.integer:
        return sorted({float(v) for v in np.linspace(param.minimum, param.maximum, 5)})
    low = max(param.minimum, 1)
    top = min(param.maximum, 4096)
    values = {low, *itertools.takewhile(lambda v: v <= top, (low * 8**i for i in itertools.count()))}
    if param.default >= low:
        values.add(param.default)
    return sorted(values)


def build_values(param: Param) -> list[float]:
    """Values of a build param that should build different indexes: the minimum, the default, and
    twice the default plus one (or halfway to the maximum for a float param), within bounds."""
    upper = min(param.maximum, 2 * param.default + 1) if param.integer else (param.default + param.maximum) / 2
    return sorted({param.minimum, param.default, upper})


class SearchParamTests(Harness):
    """Declared search params: each one changes results, and more of it does not lower recall."""

    def test_each_search_param_changes_results_without_lowering_recall(self) -> None:
        base, queries = vectors_and_queries(2000, 16, queries=200)
        truth, _ = brute_force(base, queries, Metric.L2, 10)
        index = self.build(base)
        for name, param in self.backend.search_params.items():
            values = [param.coerce(name, v) for v in self.search_param_values.get(name, ladder(param))]
            if len(values) < 2:
                continue  # a param with one allowed value cannot change anything
            answers = [
                self.search(index, queries, 10, {**defaults(self.backend.search_params), name: v}) for v in values
            ]
            recalls = [recall(labels, truth) for labels, _ in answers]
            shown = ", ".join(f"{value:g}: {r:.3f}" for value, r in zip(values, recalls, strict=True))
            assert any(not np.array_equal(answers[0][0], labels) for labels, _ in answers[1:]), (
                f"search param {name} at {', '.join(f'{v:g}' for v in values)} gave identical results on "
                f"2,000 items: the backend ignores it (recall@10 {shown})"
            )
            for (low, before), (high, after) in itertools.pairwise(zip(values, recalls, strict=True)):
                assert after >= before - RECALL_NOISE, (
                    f"recall@10 fell from {before:.3f} at {name}={low:g} to {after:.3f} at {name}={high:g} "
                    f"(recall@10 by {name}: {shown}); more {name} must not lower recall. A param where less is "
                    f"better passes its values in the order that raises recall: search_param_values={{{name!r}: [...]}}"
                )


class BuildParamTests(Harness):
    """Declared build params: different values build different indexes."""

    def outcome(
        self, base: np.ndarray, queries: np.ndarray, params: Mapping[str, float], folder: Path
    ) -> tuple[list[np.ndarray], dict[str, bytes]]:
        """What an index built with ``params`` answers (at the smallest and default search params) and saves."""
        index = self.backend.build(base, Metric.L2, params, threads=1)
        low = {n: p.coerce(n, min(max(p.minimum, 1), p.maximum)) for n, p in self.backend.search_params.items()}
        answers = [
            array for p in (low, defaults(self.backend.search_params)) for array in self.search(index, queries, 10, p)
        ]
        folder.mkdir()
        files = {name: (folder / name).read_bytes() for name in index.save(folder)}
        return answers, files

    def test_each_build_param_is_honoured(self, tmp_path: Path) -> None:
        base, queries = vectors_and_queries(1000, 16, queries=100)
        spec = self.backend.build_params
        reference = self.outcome(base, queries, defaults(spec), tmp_path / "default")
        again = self.outcome(base, queries, defaults(spec), tmp_path / "default-again")
        assert all(np.array_equal(a, b) for a, b in zip(reference[0], again[0], strict=True)), (
            "two builds with the same params and threads=1 answer differently: the kit cannot tell whether build "
            "params are honoured; make builds reproducible (take a seed param and pass it to the library)"
        )
        files_reproducible = reference[1] == again[1]
        for name, param in spec.items():
            values = [param.coerce(name, v) for v in self.build_param_values.get(name, build_values(param))]
            outcomes = [
                self.outcome(base, queries, {**defaults(spec), name: value}, tmp_path / f"{name}-{value:g}")
                for value in values
            ]
            answers_differ = any(
                not all(np.array_equal(a, b) for a, b in zip(outcomes[0][0], o[0], strict=True)) for o in outcomes[1:]
            )
            files_differ = files_reproducible and any(outcomes[0][1] != o[1] for o in outcomes[1:])
            assert answers_differ or files_differ, (
                f"build param {name} at {', '.join(f'{v:g}' for v in values)} built indexes that answer alike"
                f"{' and save the same bytes' if files_reproducible else ''}: the backend ignores it"
            )
