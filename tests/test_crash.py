"""Crash test: `flux serve` is killed with SIGKILL while clients write; after each restart every
acknowledged write is there, and nothing that was never written.

Each round starts the server, checks the index against the model, lets two client threads write
(unary upserts and deletes, and upsert streams) on ids of their own, and SIGKILLs the server once a
randomly drawn number of writes has been acknowledged, while more are in flight. A write in flight
at the kill may or may not have been applied; a stream in flight may have been applied up to any
of its batches, but only in order and each batch whole. The check finds the one such outcome the
server recovered to, or fails. Snapshots are frequent, so kills land during them too.

The longer variant runs on demand: ``pytest -m slow tests/test_crash.py``.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from flux.api.convert import encode_vectors
from flux_api.v1 import admin_service_pb2 as apb
from flux_api.v1 import admin_service_pb2_grpc, vector_service_pb2_grpc, write_service_pb2_grpc
from flux_api.v1 import vector_service_pb2 as vpb
from flux_api.v1 import write_service_pb2 as wpb

DIM = 8
WRITERS = 2
IDS_PER_WRITER = 30
DEADLINE = 20.0  # seconds for any one call or wait

# One write as the model sees it: ("upsert", {id: vector number}) or ("delete", {id: 0}).
Batch = tuple[str, dict[str, int]]


def vector(number: int) -> np.ndarray:
    """Vector ``number``: every write uses a fresh one, so a vector names the write that stored it."""
    return np.random.default_rng(number).standard_normal(DIM).astype(np.float32)


def applied(state: dict[str, int], batches: list[Batch]) -> dict[str, int]:
    after = dict(state)
    for kind, items in batches:
        for item, number in items.items():
            if kind == "upsert":
                after[item] = number
            else:
                after.pop(item, None)
    return after


@dataclass
class Writer:
    """One client thread's ids, what the server acknowledged, and the write it had in flight."""

    number: int
    acked: dict[str, int] = field(default_factory=dict)  # id -> vector number
    in_flight: list[Batch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [f"w{self.number}:{i}" for i in range(IDS_PER_WRITER)]


class Server:
    """`flux serve` as a child process; its log is drained by a thread so that it never blocks."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLUX_LOG_LEVEL": "INFO"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flux", "serve", "--config", str(config), "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.address = ""
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(DEADLINE) or not self.address:
            self.kill()
            raise AssertionError("flux serve did not become ready:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if match := re.search(r"listening on (\S+)", line):
                self.address = match.group(1)
            if " ready: " in line:
                self._ready.set()
        self._ready.set()  # the process ended

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(DEADLINE)


class Round:
    """The clients of one round: they write until the kill, recording what was acknowledged."""

    def __init__(self, address: str, writers: list[Writer], rng: random.Random, next_vector: Iterator[int]) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = write_service_pb2_grpc.WriteServiceStub(self.channel)
        self.writers = writers
        self.target = rng.randint(5, 60)  # acknowledged writes before the kill
        self.acks = 0
        self.enough = threading.Event()
        self._lock = threading.Lock()
        self._seeds = [rng.randrange(2**32) for _ in writers]
        self._next_vector = next_vector

    def run(self, kill: Callable[[], None]) -> None:
        pairs = zip(self.writers, self._seeds, strict=True)
        threads = [threading.Thread(target=self._write, args=pair) for pair in pairs]
        for thread in threads:
            thread.start()
        self.enough.wait(DEADLINE)
        kill()
        for thread in threads:
            thread.join(DEADLINE)
        self.channel.close()

    def _numbers(self, count: int) -> list[int]:
        with self._lock:
            return [next(self._next_vector) for _ in range(count)]

    def _write(self, writer: Writer, seed: int) -> None:
        rng = random.Random(seed)
        while True:
            shape = rng.choice(["upsert", "upsert", "delete", "stream"])
            if shape == "stream":
                batches = [self._upsert_batch(writer, rng) for _ in range(rng.randint(2, 5))]
            elif shape == "upsert":
                batches = [self._upsert_batch(writer, rng)]
            else:
                batches = [("delete", {item: 0 for item in rng.sample(writer.ids, rng.randint(1, 3))})]
            writer.in_flight = batches
            try:
                self._send(shape, batches, writer)
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    writer.errors.append(f"{exc.code()}: {exc.details()}")
                return  # the server is gone; the write stays in flight
            except AssertionError as exc:
                writer.errors.append(f"a wrong answer: {exc}")
                return
            writer.acked = applied(writer.acked, batches)
            writer.in_flight = []
            with self._lock:
                self.acks += 1
                if self.acks >= self.target:
                    self.enough.set()

    def _upsert_batch(self, writer: Writer, rng: random.Random) -> Batch:
        ids = rng.sample(writer.ids, rng.randint(1, 5))
        return ("upsert", dict(zip(ids, self._numbers(len(ids)), strict=True)))

    def _send(self, shape: str, batches: list[Batch], writer: Writer) -> None:
        def request(items: dict[str, int], kind: type) -> object:
            matrix = np.stack([vector(n) for n in items.values()])
            return kind(index="crash", ids=list(items), vectors=encode_vectors(matrix))

        if shape == "delete":
            items = batches[0][1]
            answer = self.stub.Delete(wpb.DeleteRequest(index="crash", ids=list(items)), timeout=DEADLINE)
            held = sum(item in writer.acked for item in items)
            assert (answer.deleted, answer.not_found) == (held, len(items) - held)
        elif shape == "upsert":
            items = batches[0][1]
            answer = self.stub.Upsert(request(items, wpb.UpsertRequest), timeout=DEADLINE)
            new = sum(item not in writer.acked for item in items)
            assert (answer.inserted, answer.updated) == (new, len(items) - new)
        else:
            stream = iter([request(items, wpb.UpsertStreamRequest) for _, items in batches])
            answer = self.stub.UpsertStream(stream, timeout=DEADLINE)
            assert answer.messages == len(batches)


def check(address: str, writers: list[Writer]) -> None:
    """Find the outcome each writer's in-flight write had, or fail; then that is what was acknowledged."""
    candidates = sorted(
        {(item, n) for w in writers for item, n in w.acked.items()}
        | {(item, n) for w in writers for kind, items in w.in_flight if kind == "upsert" for item, n in items.items()}
    )
    held: dict[str, int] = {}
    with grpc.insecure_channel(address) as channel:
        if candidates:
            queries = encode_vectors(np.stack([vector(n) for _, n in candidates]))
            search = vector_service_pb2_grpc.VectorServiceStub(channel)
            answer = search.BatchSearch(vpb.BatchSearchRequest(index="crash", queries=queries, k=1), timeout=DEADLINE)
            for (item, number), found in zip(candidates, answer.results, strict=True):
                if list(found.ids) == [item] and found.distances[0] <= 1e-6:
                    held[item] = number
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        count = admin.GetIndex(apb.GetIndexRequest(name="crash"), timeout=DEADLINE).index.count
    for writer in writers:
        mine = {item: n for item, n in held.items() if item.startswith(f"w{writer.number}:")}
        outcomes = [applied(writer.acked, writer.in_flight[:done]) for done in range(len(writer.in_flight) + 1)]
        assert mine in outcomes, (
            f"writer {writer.number}: the server holds {mine}, which is not the acknowledged state "
            f"{writer.acked} plus any prefix of the write in flight {writer.in_flight}"
        )
        writer.acked, writer.in_flight = mine, []
    assert count == len(held), (
        f"the server holds {count} items, only {len(held)} of them as acknowledged or in flight: "
        "the others lost their last acknowledged write, or hold something never written"
    )


def crash_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    config = tmp_path / "flux.yaml"
    config.write_text(
        "server:\n  grace_seconds: 0\n"
        "indexes:\n"
        "  - name: crash\n"
        f"    path: {tmp_path / 'crash'}\n"
        f"    backend: exact\n    dimension: {DIM}\n    metric: l2\n    poll_seconds: 0\n"
        "    writes: {enabled: true, snapshot_every: 40}\n"
    )
    rng = random.Random(seed)
    writers = [Writer(n) for n in range(WRITERS)]
    numbers = iter(range(1, 10**9))
    for _ in range(rounds):
        server = Server(config)
        try:
            check(server.address, writers)
            Round(server.address, writers, rng, numbers).run(server.kill)
        finally:
            if server.process.poll() is None:
                server.kill()
        for writer in writers:
            assert not writer.errors, writer.errors
    server = Server(config)
    try:
        check(server.address, writers)
        assert any(w.acked for w in writers)
        entries = [p.name for p in (tmp_path / "crash").iterdir()]
        assert len([e for e in entries if e.isdigit()]) > 1, "no snapshot was taken; the test would not cover them"
        assert not [e for e in entries if e.startswith(".")], "a snapshot cut short was left behind"
    finally:
        server.kill()


def test_acknowledged_writes_survive_sigkill_in_20_rounds(tmp_path: Path) -> None:
    crash_rounds(tmp_path, rounds=20, seed=7)


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill_in_300_rounds(tmp_path: Path) -> None:
    crash_rounds(tmp_path, rounds=300, seed=int.from_bytes(os.urandom(4), "little"))
