"""The router's /metrics: its own calls, and per shard the calls it made, their latency, hedges and partial answers.

Shard servers and routers are real gRPC servers on 127.0.0.1 ephemeral ports (the helpers of
tests/test_router.py); each router's ``server.metrics_port`` is 0, a free port. Every figure is read
from /metrics over HTTP, as the difference between a scrape before and one after the calls: the
metric families belong to the process, and other tests' routers count into them too.
"""

from __future__ import annotations

import re
import socket
import threading
from concurrent import futures
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from flux.binding import CannotBind
from flux.router.server import build_router
from flux.server import FluxServer
from flux_api.v1 import vector_service_pb2 as pb
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.storage.sharded import shard_name, shard_of
from tests.support import (
    Samples,
    build_artifact,
    dataset,
    router_config,
    routing,
    running_server,
    scrape,
    server_config,
)
from tests.test_router import SHARDS, _query, _small_shards, _target

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SERVICE = "flux_api.v1.VectorService"
SHARD_NAMES = [shard_name(n, SHARDS) for n in range(SHARDS)]
#: A shard that ends a call with one of these is missing from the answer (flux.router.fanout.MISSING).
MISSING_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


class Grown:
    """How much each series grew between two scrapes (a series absent from a scrape counts as 0)."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)

    def codes(self, name: str, **labels: str) -> dict[str, float]:
        """The growth of each ``code`` of ``name`` with ``labels``, the codes that did not grow left out."""
        grown = {}
        for (sample, keys), value in self.after.items():
            found = dict(keys)
            change = value - self.before.get((sample, keys), 0.0)
            if sample == name and "code" in found and change and all(found.get(k) == v for k, v in labels.items()):
                grown[found["code"]] = change
        return grown


def _indexes(groups: list[list[FluxServer]]) -> list[dict[str, Any]]:
    """``metered`` (partial answers) and ``strict`` (fail), both the shards' ``small``."""
    shards = [_target(*servers) for servers in groups[:SHARDS]]
    common = {"shard_index": "small", "shard_count": SHARDS, "shards": shards}
    return [
        {"name": "metered", "on_missing_shards": "partial", **common},
        {"name": "strict", "on_missing_shards": "fail", **common},
    ]


def test_the_router_counts_its_calls_and_each_shard_call(tmp_path: Path) -> None:
    searches, batches = 7, 2
    with (
        _small_shards(tmp_path) as (groups, queries, ids),
        routing(router_config(_indexes(groups), metrics=True)) as (router, stub),
    ):
        before = scrape(router)
        for query in queries[:searches]:
            got = stub.Search(pb.SearchRequest(index="metered", vector=_query(query), k=10), timeout=10)
            assert len(got.neighbors.ids) == 10
            assert not got.missing_shards
        for _ in range(batches):
            batch = stub.BatchSearch(pb.BatchSearchRequest(index="metered", queries=_query(queries), k=5), timeout=10)
            assert len(batch.results) == len(queries)
            assert not batch.missing_shards
        owner = shard_of(ids[3], SHARDS)
        by_id = stub.SearchById(pb.SearchByIdRequest(index="metered", id=ids[3], k=5), timeout=10)
        assert len(by_id.neighbors.ids) == 5
        with pytest.raises(grpc.RpcError) as refused:  # k above the shards' limit: each shard refuses it
            stub.Search(pb.SearchRequest(index="metered", vector=_query(queries[0]), k=10**6), timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        grown = Grown(before, scrape(router))

    # The router's own calls, as a server counts its calls.
    for method, code, count in (
        ("Search", "OK", searches),
        ("BatchSearch", "OK", batches),
        ("SearchById", "OK", 1),
        ("Search", "INVALID_ARGUMENT", 1),
    ):
        assert grown("flux_requests_total", method=f"{SERVICE}/{method}", index="metered", code=code) == count
    assert grown("flux_request_seconds_count", method=f"{SERVICE}/Search", index="metered") == searches + 1
    assert grown("flux_request_seconds_count", method=f"{SERVICE}/SearchById", index="metered") == 1

    # Each shard: every Search and BatchSearch, the Search of SearchById, and its GetItems on the owner only.
    for number, shard in enumerate(SHARD_NAMES):
        answered = searches + batches + 1 + (1 if number == owner else 0)
        assert grown.codes("flux_router_shard_calls_total", index="metered", shard=shard) == {
            "OK": answered,
            "INVALID_ARGUMENT": 1,
        }, shard
        assert grown("flux_router_shard_seconds_count", index="metered", shard=shard) == answered + 1
        assert grown("flux_router_shard_seconds_sum", index="metered", shard=shard) > 0
        assert grown("flux_router_shard_seconds_bucket", index="metered", shard=shard, le="+Inf") == answered + 1
        assert grown("flux_router_hedges_total", index="metered", shard=shard) == 0  # hedging is off
        assert grown("flux_router_missing_shards_total", index="metered", shard=shard) == 0
        assert grown.codes("flux_router_shard_calls_total", index="strict", shard=shard) == {}
    assert grown("flux_router_partial_answers_total", index="metered") == 0


def test_each_partial_answer_counts_once_and_names_the_missing_shard(tmp_path: Path) -> None:
    whole, searches, streamed, refused = 3, 5, 2, 2
    stopped = 2
    with (
        _small_shards(tmp_path) as (groups, queries, _),
        routing(router_config(_indexes(groups), metrics=True)) as (router, stub),
    ):
        first = scrape(router)
        for query in queries[:whole]:
            assert not stub.Search(
                pb.SearchRequest(index="metered", vector=_query(query), k=10), timeout=10
            ).missing_shards
        second = scrape(router)
        groups[stopped][0].stop(grace=0)
        for query in queries[:searches]:
            got = stub.Search(pb.SearchRequest(index="metered", vector=_query(query), k=10), timeout=10)
            assert list(got.missing_shards) == [SHARD_NAMES[stopped]]
        batch = stub.BatchSearch(pb.BatchSearchRequest(index="metered", queries=_query(queries), k=5), timeout=10)
        assert list(batch.missing_shards) == [SHARD_NAMES[stopped]]
        messages = [
            pb.StreamSearchRequest(request_id=n, index="metered", vector=_query(queries[n]), k=5)
            for n in range(streamed)
        ]
        for answer in stub.StreamSearch(iter(messages), timeout=10):
            assert list(answer.search.missing_shards) == [SHARD_NAMES[stopped]]
        for query in queries[:refused]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Search(pb.SearchRequest(index="strict", vector=_query(query), k=10), timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        third = scrape(router)

    healthy = Grown(first, second)
    assert healthy("flux_router_partial_answers_total", index="metered") == 0
    assert healthy.codes("flux_router_shard_calls_total", index="metered", shard=SHARD_NAMES[stopped]) == {"OK": whole}

    grown = Grown(second, third)
    partial = searches + 1 + streamed  # each Search, the BatchSearch, each message of the stream
    assert grown("flux_router_partial_answers_total", index="metered") == partial
    assert grown("flux_router_missing_shards_total", index="metered", shard=SHARD_NAMES[stopped]) == partial
    for number, shard in enumerate(SHARD_NAMES):
        if number != stopped:
            assert grown("flux_router_missing_shards_total", index="metered", shard=shard) == 0
            assert grown.codes("flux_router_shard_calls_total", index="metered", shard=shard) == {"OK": partial}
            assert grown.codes("flux_router_shard_calls_total", index="strict", shard=shard) == {"OK": refused}
    # The stopped shard's calls ended with a code that makes it missing, one per call.
    for index, calls in (("metered", partial), ("strict", refused)):
        codes = grown.codes("flux_router_shard_calls_total", index=index, shard=SHARD_NAMES[stopped])
        assert set(codes) <= set(MISSING_CODES), (index, codes)
        assert sum(codes.values()) == calls, (index, codes)
        assert grown("flux_router_shard_seconds_count", index=index, shard=SHARD_NAMES[stopped]) == calls
    # The fail policy sends no partial answer: the caller gets UNAVAILABLE, which the router counts.
    assert grown("flux_router_partial_answers_total", index="strict") == 0
    assert grown("flux_router_missing_shards_total", index="strict", shard=SHARD_NAMES[stopped]) == 0
    assert grown("flux_requests_total", method=f"{SERVICE}/Search", index="strict", code="UNAVAILABLE") == refused
    assert grown("flux_requests_total", method=f"{SERVICE}/Search", index="metered", code="OK") == searches
    # A stream is one call, labelled with no index (its messages may name different ones).
    assert grown("flux_requests_total", method=f"{SERVICE}/StreamSearch", index="", code="OK") == 1


class HoldFirst:
    """A shard replica in front of a Flux server: holds the first Search it gets until the caller gives that
    call up, and passes every other Search on. So the first attempt of a hedged call can only be answered
    by its hedge."""

    def __init__(self, behind: str) -> None:
        self.arrivals = 0
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._behind = grpc.insecure_channel(behind)
        forward = self._behind.unary_unary(f"/{SERVICE}/Search")

        def search(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.arrivals += 1
                first = self.arrivals == 1
            if not first:
                return forward(request, timeout=30)  # type: ignore[no-any-return]
            context.add_callback(self.cancelled.set)  # the held call ends only when its caller cancels it
            self.cancelled.wait(timeout=60)  # bounded only so that a failing test cannot hang
            return b""

        handler = grpc.method_handlers_generic_handler(SERVICE, {"Search": grpc.unary_unary_rpc_method_handler(search)})
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def close(self) -> None:
        self.cancelled.set()
        self._server.stop(grace=0).wait(10)
        self._behind.close()


def test_a_hedge_is_counted_when_sent_and_when_its_answer_is_the_one_used(tmp_path: Path) -> None:
    base, queries = dataset(300, 8, 1, seed=7)
    artifact = build_artifact(tmp_path / "items", base, backend="exact", metric="l2", name="items")
    with ExitStack() as stack:
        fast = stack.enter_context(running_server(server_config([{"name": "items", "path": str(artifact)}])))
        gate = HoldFirst(fast.address)
        stack.callback(gate.close)
        indexes = [{"name": "hedged", "shard_index": "items", "shard_count": 1, "shards": [f"ipv4:{gate.address}"]}]
        router, stub = stack.enter_context(
            routing(router_config(indexes, metrics=True, hedging={"enabled": True, "delay_seconds": 0.2}))
        )
        before = scrape(router)
        got = stub.Search(pb.SearchRequest(index="hedged", vector=_query(queries[0]), k=5), timeout=20)
        truth = VectorServiceStub(stack.enter_context(grpc.insecure_channel(fast.address))).Search(
            pb.SearchRequest(index="items", vector=_query(queries[0]), k=5), timeout=20
        )
        assert list(got.neighbors.ids) == list(truth.neighbors.ids)
        assert gate.cancelled.wait(timeout=20)  # the router gave the held first attempt up
        assert gate.arrivals == 2
        grown = Grown(before, scrape(router))
    shard = shard_name(0, 1)
    assert grown("flux_router_hedges_total", index="hedged", shard=shard) == 1
    assert grown("flux_router_hedge_wins_total", index="hedged", shard=shard) == 1
    # One shard call, however many attempts it took, answered after at least the hedging delay.
    assert grown.codes("flux_router_shard_calls_total", index="hedged", shard=shard) == {"OK": 1}
    assert grown("flux_router_shard_seconds_count", index="hedged", shard=shard) == 1
    assert grown("flux_router_shard_seconds_sum", index="hedged", shard=shard) >= 0.2
    assert grown("flux_requests_total", method=f"{SERVICE}/Search", index="hedged", code="OK") == 1


def test_a_taken_metrics_port_is_an_error_before_the_router_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = router_config([{"name": "x", "shard_count": 1, "shards": ["127.0.0.1:1"]}], metrics=True)
        config = config.model_copy(update={"server": config.server.model_copy(update={"metrics_port": port})})
        with pytest.raises(CannotBind, match=r"\(server\.metrics_port\)"):
            build_router(config)


def test_the_example_scrape_config_keeps_the_routers_on_the_port_they_serve_metrics_on() -> None:
    config = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yaml").read_text(encoding="utf-8"))
    component = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
    for job in config["scrape_configs"]:
        for relabel in job["relabel_configs"]:
            if component in relabel.get("source_labels", []) and relabel.get("action") in ("keep", "drop"):
                kept = re.fullmatch(relabel["regex"], "router") is not None
                assert kept == (relabel["action"] == "keep"), relabel
    sharded = DEPLOY / "k8s" / "sharded"
    documents = [d for path in sorted(sharded.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    [configmap] = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "flux-router-config"]
    [deployment] = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "flux-router"]
    template = deployment["spec"]["template"]
    port = yaml.safe_load(configmap["data"]["flux.yaml"])["server"]["metrics_port"]
    [container] = template["spec"]["containers"]
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
