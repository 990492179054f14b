"""The flux_server fixture that consumers' tests get from flux-server[testing] (the pytest11 plugin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flux.pytest_plugin import ServerTLS, TestIndex, serve
from flux_client import Filter, InvalidArgument, Unauthenticated
from flux_core.storage.attributes import ItemAttributes
from tests.pki import SERVER_NAME

pytest_plugins = ["pytester"]

CONSUMER_TESTS = """
import numpy as np
import pytest

from flux.pytest_plugin import TestIndex
from flux_client import Filter, InvalidArgument


def test_the_demo_index_answers(flux_server):
    result = flux_server.client.search("demo", np.ones(16, dtype=np.float32), k=5)
    assert len(result.ids) == 5 and all(i.startswith("track:") for i in result.ids)
    with pytest.raises(InvalidArgument):
        flux_server.client.search("demo", np.ones(3, dtype=np.float32), k=5)


class TestOwnIndex:
    @pytest.fixture
    def flux_indexes(self):
        vectors = np.eye(4, dtype=np.float32)
        return {"tracks": TestIndex(vectors, ids=["a", "b", "c", "d"], backend="exact", metric="l2")}

    def test_nearest_is_itself(self, flux_server):
        assert flux_server.client.search("tracks", [0, 0, 1, 0], k=1).ids.tolist() == ["c"]
"""


def test_a_consumer_test_file_gets_the_fixture_without_importing_it(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    pytester.makepyfile(test_consumer=CONSUMER_TESTS)
    monkeypatch.setenv("TMPDIR", str(temp))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert list(temp.iterdir()) == [], "the fixture left files behind"


def test_attributes_tokens_and_tls(pki: dict[str, Path]) -> None:
    tls = ServerTLS(pki["server"], pki["server.key"], pki["ca"], server_name=SERVER_NAME)
    vectors = np.random.default_rng(1).standard_normal((200, 8), dtype=np.float32)
    attributes = [ItemAttributes.create({"market": ["SE" if i % 2 else "NO"]}) for i in range(200)]
    index = TestIndex(vectors, ids=[f"t{i}" for i in range(200)], attributes=attributes)
    with serve({"tracks": index}, tokens={"reader-secret": "reader"}, tls=tls) as flux:
        result = flux.client.search("tracks", vectors[0], k=10, filter=Filter(allow={"market": ["SE"]}))
        assert len(result.ids) == 10
        assert all(int(i[1:]) % 2 == 1 for i in result.ids)
        with pytest.raises(Unauthenticated):
            flux.connect(token=None).search("tracks", vectors[0], k=1)
        with pytest.raises(InvalidArgument):
            flux.client.search("tracks", vectors[0], k=0)
