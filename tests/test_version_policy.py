"""The version policy is a pure function: a table of situations and the steps it answers with."""

from __future__ import annotations

import pytest

from flux.core.serving.versions import Policy, State, Step, plan

A, L, R, ACT, F = State.AVAILABLE, State.LOADING, State.READY, State.ACTIVE, State.FAILED
LATEST, KEEP2 = Policy(), Policy(keep=2)


@pytest.mark.parametrize(
    ("available", "states", "policy", "pinned", "steps"),
    [
        # A first start: load the newest.
        ({1, 2}, {1: A, 2: A}, LATEST, None, [Step("load", 2)]),
        # Loaded: activate it.
        ({1, 2}, {1: A, 2: R}, LATEST, None, [Step("activate", 2)]),
        # A new version appears: load it while the old one serves (availability first).
        ({1, 2}, {1: ACT, 2: A}, LATEST, None, [Step("load", 2)]),
        # It is ready: swap, then unload the old one.
        ({1, 2}, {1: ACT, 2: R}, LATEST, None, [Step("activate", 2), Step("unload", 1)]),
        # Keep two: the previous version stays loaded for a fast rollback.
        ({1, 2}, {1: ACT, 2: R}, KEEP2, None, [Step("activate", 2)]),
        ({1, 2, 3}, {1: R, 2: ACT, 3: R}, KEEP2, None, [Step("activate", 3), Step("unload", 1)]),
        # A failed new version is not retried and the old one keeps serving.
        ({1, 2}, {1: ACT, 2: F}, LATEST, None, []),
        # ...but a newer one still gets its chance.
        ({1, 2, 3}, {1: ACT, 2: F, 3: A}, LATEST, None, [Step("load", 3)]),
        # Still loading: nothing to do until it is ready.
        ({1, 2}, {1: ACT, 2: L}, LATEST, None, []),
        # A new version loads while the kept one stays loaded: a load that then fails takes nothing away...
        ({3, 6, 7}, {3: R, 6: ACT, 7: A}, KEEP2, None, [Step("load", 7)]),
        ({3, 6, 7}, {3: R, 6: ACT, 7: L}, KEEP2, None, []),
        ({3, 6, 7}, {3: R, 6: ACT, 7: F}, KEEP2, None, []),
        # ...and once it answers, the oldest is released.
        ({3, 6, 7}, {3: R, 6: ACT, 7: R}, KEEP2, None, [Step("activate", 7), Step("unload", 3)]),
        # A ready version newer than the active one answers while a still newer one loads.
        ({1, 2, 3}, {1: ACT, 2: R, 3: A}, KEEP2, None, [Step("activate", 2), Step("load", 3)]),
        ({1, 2, 3}, {1: ACT, 2: R, 3: L}, KEEP2, None, [Step("activate", 2)]),
        ({1, 2, 3}, {1: ACT, 2: R, 3: A}, LATEST, None, [Step("load", 3)]),  # keep 1: 2 is not wanted
        # The version that is to answer loads first and is activated before older kept ones load again.
        ({3, 6}, {3: A, 6: A}, KEEP2, None, [Step("load", 6), Step("load", 3)]),
        ({3, 6}, {3: A, 6: R}, KEEP2, None, [Step("activate", 6), Step("load", 3)]),
        # Pinned to an older version: it is loaded, activated, and the newer one released (keep 1).
        ({1, 2}, {1: A, 2: ACT}, LATEST, 1, [Step("load", 1)]),
        ({1, 2}, {1: R, 2: ACT}, LATEST, 1, [Step("activate", 1), Step("unload", 2)]),
        # With keep 2 a pin takes the place of the older kept version: the newest stays loaded,
        # so that both the rollback and the unpin are pointer swaps.
        ({3, 6}, {3: R, 6: ACT}, KEEP2, 3, [Step("activate", 3)]),
        ({3, 6}, {3: ACT, 6: R}, KEEP2, None, [Step("activate", 6)]),
        ({1, 2, 3}, {1: A, 2: ACT, 3: R}, KEEP2, 1, [Step("load", 1)]),
        ({1, 2, 3}, {1: R, 2: ACT, 3: R}, KEEP2, 1, [Step("activate", 1), Step("unload", 2)]),
        # Specific versions: load them all, the newest of them is active.
        ({1, 2, 3}, {1: A, 2: A, 3: A}, Policy("specific", versions=(1, 2)), None, [Step("load", 2), Step("load", 1)]),
        ({1, 2, 3}, {1: R, 2: R, 3: A}, Policy("specific", versions=(1, 2)), None, [Step("activate", 2)]),
        # A version that vanished from the source keeps serving until something replaces it.
        (set(), {1: ACT}, LATEST, None, []),
        # Nothing anywhere: nothing to do.
        (set(), {}, LATEST, None, []),
    ],
)
def test_plan(
    available: set[int], states: dict[int, State], policy: Policy, pinned: int | None, steps: list[Step]
) -> None:
    assert plan(available, states, policy, pinned) == steps


def test_plan_is_idempotent_once_settled() -> None:
    assert plan({1, 2}, {1: A, 2: ACT}, LATEST) == []
