"""The Python client's writes (upsert, upsert_stream, delete, snapshot), sync and asyncio, against a real
server with writes enabled: numpy in, the write visible to the next search, typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flux.server import FluxServer
from flux_client import (
    AsyncFluxClient,
    Attributes,
    DimensionMismatch,
    Filter,
    FluxClient,
    IndexNotFound,
    InvalidArgument,
    WriteResult,
    WritesRefused,
)
from tests import support

DIM = 8


def writable(name: str, root: Path) -> dict[str, Any]:
    """An exact index that Flux creates empty on first start and that takes writes."""
    return {
        "name": name,
        "path": str(root / name),
        "backend": "exact",
        "dimension": DIM,
        "metric": "l2",
        "poll_seconds": 0,
        "writes": {"enabled": True, "snapshot_every": 0},
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FluxServer]:
    base, _ = support.dataset(n=20, dimension=DIM, queries=1)
    frozen = support.build_artifact(tmp_path / "frozen", base, backend="annoy", metric="l2", name="frozen")
    indexes = [writable("songs", tmp_path), {"name": "frozen", "path": str(frozen)}]
    with support.running_server(support.server_config(indexes, limits={"max_batch": 64})) as running:
        yield running


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


def nearest(flux: FluxClient, vector: np.ndarray, **options: Any) -> str:
    return str(flux.search("songs", vector, k=1, **options).ids[0])


def test_upsert_delete_and_snapshot_are_seen_by_the_next_search(server: FluxServer) -> None:
    base = rows(10, seed=1)
    ids = [f"song:{i}" for i in range(10)]
    with FluxClient(server.address) as flux:
        first = flux.upsert("songs", ids, base)
        assert first == WriteResult(index="songs", version=1, log_sequence=1, inserted=10, updated=0)
        assert [nearest(flux, v) for v in base] == ids

        moved = base[3] + 5.0
        second = flux.upsert("songs", ["song:3"], moved)  # one id, one 1-D vector
        assert (second.inserted, second.updated, second.log_sequence) == (0, 1, 2)
        assert nearest(flux, moved) == "song:3"

        gone = flux.delete("songs", ["song:4", "song:404"])
        assert (gone.deleted, gone.not_found, gone.log_sequence) == (1, 1, 3)
        assert "song:4" not in flux.search("songs", base[4], k=9).ids.tolist()

        snap = flux.snapshot("songs")
        assert (snap.index, snap.version, snap.log_sequence) == ("songs", 2, 3)
        assert flux.describe_index("songs").version == 2
        assert flux.describe_index("songs").count == 9


def test_attributes_written_with_the_items_are_what_filters_match(server: FluxServer) -> None:
    base = rows(4, seed=2)
    with FluxClient(server.address) as flux:
        flux.upsert(
            "songs",
            ["a", "b", "c", "d"],
            base,
            attributes=[Attributes({"market": ["SE"]}), Attributes({"market": ["US"]}, crowding_tag="x"), None, None],
        )
        swedish = flux.search("songs", base[1], k=4, filter=Filter(allow={"market": ["SE"]}))
        assert swedish.ids.tolist() == ["a", "", "", ""]


def test_upsert_stream_sends_batches_as_a_generator_yields_them(server: FluxServer) -> None:
    base = rows(100, seed=3)
    ids = [f"bulk:{i}" for i in range(100)]
    sent: list[int] = []

    def batches() -> Iterator[tuple[list[str], np.ndarray]]:
        for start in range(0, 100, 30):
            sent.append(start)
            yield ids[start : start + 30], base[start : start + 30]

    with FluxClient(server.address) as flux:
        done = flux.upsert_stream("songs", batches())
        assert (done.index, done.messages, done.inserted, done.updated) == ("songs", 4, 100, 0)
        assert sent == [0, 30, 60, 90]
        assert [nearest(flux, base[i]) for i in (0, 31, 99)] == ["bulk:0", "bulk:31", "bulk:99"]


def test_a_refused_batch_ends_the_stream_with_its_typed_error(server: FluxServer) -> None:
    base = rows(4, seed=4)
    with FluxClient(server.address) as flux:
        with pytest.raises(DimensionMismatch) as server_side:  # refused by the server: its field names
            flux.upsert_stream("songs", [(["s1"], base[:1]), (["s2"], np.ones((1, DIM + 1)))])
        assert server_side.value.field == "messages[1].vectors.dimension"
        # (the batch before it may have been applied: the server answers without waiting for it)

        with pytest.raises(InvalidArgument) as client_side:  # refused here, before it is sent
            flux.upsert_stream("songs", iter([(["s3"], base[2:3]), (["s4", "s5"], base[3:4])]))
        assert (client_side.value.field, client_side.value.reason) == ("batches[1].vectors", "COUNT_MISMATCH")
        assert nearest(flux, base[2]) == "s3"  # the stream ended there, so the server applied what it got
        assert not {"s4", "s5"} & set(flux.search("songs", base[3], k=3).ids.tolist())  # never left


def test_write_errors_are_typed(server: FluxServer) -> None:
    with FluxClient(server.address) as flux:
        with pytest.raises(WritesRefused) as frozen:
            flux.upsert("frozen", ["x"], np.ones(DIM))
        assert frozen.value.reason == "INDEX_IMMUTABLE"
        with pytest.raises(IndexNotFound):
            flux.delete("nope", ["x"])
        with pytest.raises(DimensionMismatch) as wrong:
            flux.upsert("songs", ["x"], np.ones(DIM + 1))
        assert wrong.value.metadata["index"] == "songs"
        with pytest.raises(InvalidArgument) as one_string:
            flux.delete("songs", "song:1")
        assert one_string.value.field == "ids"


def test_the_asyncio_client_writes_alike(server: FluxServer) -> None:
    base = rows(6, seed=5)
    ids = [f"aio:{i}" for i in range(6)]

    async def batches() -> Any:
        for start in (2, 4):
            yield ids[start : start + 2], base[start : start + 2]

    async def run() -> tuple[WriteResult, ...]:
        async with AsyncFluxClient(server.address) as flux:
            upserted = await flux.upsert("songs", ids[:2], base[:2])
            streamed = await flux.upsert_stream("songs", batches())
            deleted = await flux.delete("songs", ["aio:5"])
            snapshot = await flux.snapshot("songs")
            with pytest.raises(WritesRefused):
                await flux.upsert("frozen", ["x"], np.ones(DIM))
            return upserted, streamed, deleted, snapshot

    upserted, streamed, deleted, snapshot = asyncio.run(run())
    assert (upserted.inserted, streamed.messages, streamed.inserted, deleted.deleted) == (2, 2, 4, 1)
    assert (snapshot.version, snapshot.log_sequence) == (2, 4)
    with FluxClient(server.address) as flux:
        assert [nearest(flux, base[i]) for i in range(5)] == ids[:5]
        assert flux.describe_index("songs").count == 5
