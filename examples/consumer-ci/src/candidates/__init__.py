"""Candidate generation for a listener: the nearest tracks to their taste, minus what they played."""

from __future__ import annotations

from collections.abc import Collection

import numpy.typing as npt
from flux_client import Filter, FluxClient

INDEX = "tracks"


def candidates(
    client: FluxClient, taste: npt.ArrayLike, *, market: str, played: Collection[str] = (), k: int = 20
) -> list[str]:
    """Up to ``k`` track ids available in ``market`` that the listener has not played, nearest first.

    Flux pads an answer with fewer than ``k`` matches with empty ids; they are dropped here.
    """
    wanted = Filter(allow={"market": [market]}, exclude_ids=list(played))
    return [str(i) for i in client.search(INDEX, taste, k=k, filter=wanted).ids if i]
