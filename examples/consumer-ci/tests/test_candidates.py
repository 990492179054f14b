"""Contract tests: the candidates function against a real Flux server, not a mock of one."""

from __future__ import annotations

import numpy as np
import pytest
from flux.pytest_plugin import TestIndex
from flux_client import IndexNotFound, InvalidArgument
from flux_core.storage.attributes import ItemAttributes

from candidates import candidates

RNG = np.random.default_rng(3)
TRACKS = RNG.standard_normal((300, 8), dtype=np.float32)
IDS = [f"track:{i:03d}" for i in range(300)]
MARKETS = ["SE" if i % 3 else "NO" for i in range(300)]


@pytest.fixture
def flux_indexes() -> dict[str, TestIndex]:
    """The catalogue the flux_server fixture serves: 300 tracks, each sold in one market."""
    attributes = [ItemAttributes.create({"market": [market]}) for market in MARKETS]
    return {"tracks": TestIndex(TRACKS, ids=IDS, attributes=attributes, metric="cosine")}


def test_candidates_are_in_the_market_and_not_played(flux_server) -> None:
    played = candidates(flux_server.client, TRACKS[0], market="SE", k=5)
    fresh = candidates(flux_server.client, TRACKS[0], market="SE", played=played, k=20)
    assert len(fresh) == 20
    assert not set(fresh) & set(played)
    assert all(MARKETS[IDS.index(track)] == "SE" for track in fresh + played)


def test_a_market_with_no_tracks_gives_no_candidates(flux_server) -> None:
    # A mock that answers [] here hides what the server does: it pads short answers with "".
    assert candidates(flux_server.client, TRACKS[0], market="DK") == []


def test_the_real_server_refuses_what_a_mock_might_accept(flux_server) -> None:
    with pytest.raises(InvalidArgument):
        candidates(flux_server.client, TRACKS[0][:4], market="SE")  # a taste vector of the wrong dimension
    with pytest.raises(IndexNotFound):
        flux_server.client.search("podcasts", TRACKS[0], k=1)
