"""A Hypothesis state machine drives upserts, deletes, searches, snapshots and restarts through gRPC
and checks every answer against a dict of vectors."""

from __future__ import annotations

import itertools
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from flux.api.convert import encode_vectors
from flux_api.v1 import admin_service_pb2 as apb
from flux_api.v1 import admin_service_pb2_grpc, vector_service_pb2_grpc, write_service_pb2_grpc
from flux_api.v1 import vector_service_pb2 as vpb
from flux_api.v1 import write_service_pb2 as wpb
from flux_core.quality import distances
from tests import support

DIM = 4
IDS = st.sampled_from([f"item{i}" for i in range(10)])  # few ids: upserts replace, deletes miss
_runs = itertools.count()


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class WritesMachine(RuleBasedStateMachine):
    root: ClassVar[Path]
    backend: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        folder = self.root / f"run{next(_runs)}"
        self.config = support.server_config(
            [
                {
                    "name": "m",
                    "path": str(folder),
                    "backend": self.backend,
                    "dimension": DIM,
                    "metric": "l2",
                    "poll_seconds": 0,
                    "search_params": {"ef": 100} if self.backend == "hnsw" else {},
                    "writes": {"enabled": True, "snapshot_every": 0},
                }
            ]
        )
        self.model: dict[str, np.ndarray] = {}
        self.last_sequence = 0
        self.stack = ExitStack()
        self._start()

    def _start(self) -> None:
        server = self.stack.enter_context(support.running_server(self.config))
        channel = self.stack.enter_context(support.channel_to(server))
        self.writes = write_service_pb2_grpc.WriteServiceStub(channel)
        self.vectors = vector_service_pb2_grpc.VectorServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)

    def teardown(self) -> None:
        self.stack.close()

    def _sequence_rises(self, sequence: int) -> None:
        assert sequence == self.last_sequence + 1, "every write is the next record of the log"
        self.last_sequence = sequence

    @rule(items=st.lists(st.tuples(IDS, st.integers(0, 2**20)), min_size=1, max_size=4, unique_by=lambda t: t[0]))
    def upsert(self, items: list[tuple[str, int]]) -> None:
        ids = [item for item, _ in items]
        matrix = np.stack([vector(seed) for _, seed in items])
        answer = self.writes.Upsert(wpb.UpsertRequest(index="m", ids=ids, vectors=encode_vectors(matrix)))
        new = sum(item not in self.model for item in ids)
        assert (answer.inserted, answer.updated) == (new, len(ids) - new)
        self._sequence_rises(answer.log_sequence)
        self.model.update(zip(ids, matrix, strict=True))

    @rule(ids=st.lists(IDS, min_size=1, max_size=3, unique=True))
    def delete(self, ids: list[str]) -> None:
        answer = self.writes.Delete(wpb.DeleteRequest(index="m", ids=ids))
        held = sum(item in self.model for item in ids)
        assert (answer.deleted, answer.not_found) == (held, len(ids) - held)
        self._sequence_rises(answer.log_sequence)
        for item in ids:
            self.model.pop(item, None)

    @rule(seed=st.integers(0, 2**20), k=st.integers(1, 12))
    def search(self, seed: int, k: int) -> None:
        query = vector(seed)
        found = self.vectors.Search(vpb.SearchRequest(index="m", vector=encode_vectors(query), k=k)).neighbors
        assert len(found.ids) == min(k, len(self.model))
        assert set(found.ids) <= set(self.model), "a search returned an item that was deleted or never written"
        if self.model:
            names = sorted(self.model)
            truth = np.sort(distances(np.stack([self.model[n] for n in names]), query[None], "l2")[0])[: len(found.ids)]
            np.testing.assert_allclose(found.distances, truth, rtol=1e-4, atol=1e-4)
            own = distances(np.stack([self.model[i] for i in found.ids]), query[None], "l2")[0]
            np.testing.assert_allclose(found.distances, own, rtol=1e-4, atol=1e-4)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def search_a_stored_item(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.model)))
        query = encode_vectors(self.model[item])
        found = self.vectors.Search(vpb.SearchRequest(index="m", vector=query, k=1)).neighbors
        assert found.distances[0] == pytest.approx(0.0, abs=1e-4)
        # Two ids may hold the same vector (the model draws vectors from few seeds): either is nearest.
        np.testing.assert_array_equal(self.model[found.ids[0]], self.model[item])

    @rule(item=IDS)
    def search_by_id(self, item: str) -> None:
        request = vpb.SearchByIdRequest(index="m", id=item, k=3)
        if item not in self.model:
            with pytest.raises(grpc.RpcError) as caught:
                self.vectors.SearchById(request)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            return
        found = self.vectors.SearchById(request).neighbors
        assert item not in found.ids
        assert set(found.ids) <= set(self.model)

    @rule()
    def snapshot(self) -> None:
        answer = self.writes.Snapshot(wpb.SnapshotRequest(index="m"))
        assert answer.log_sequence == self.last_sequence

    @rule()
    def restart(self) -> None:
        self.stack.close()
        self.stack = ExitStack()
        self._start()

    @invariant()
    def counts_agree(self) -> None:
        assert self.admin.GetIndex(apb.GetIndexRequest(name="m")).index.count == len(self.model)


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_writes_through_grpc_agree_with_a_model_across_restarts(tmp_path: Path, backend: str) -> None:
    machine: Any = type("Machine", (WritesMachine,), {"root": tmp_path, "backend": backend})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=12, stateful_step_count=25, deadline=None, database=None)
    )
