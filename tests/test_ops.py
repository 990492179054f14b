"""Operations: the metrics endpoint, request ids, JSON request logs, environment overrides,
`flux config check` and `flux token`, deadlines, malformed requests, readiness and tracing."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flux import config as flux_config
from flux import config_env
from flux.api.auth import hash_token
from flux.server import FluxServer, build_server
from flux_api.v1 import types_pb2, vector_service_pb2
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from flux_core.errors import ConfigError
from tests import support

FLUX = [sys.executable, "-m", "flux"]
SEARCH = "flux_api.v1.VectorService/Search"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base, _ = support.dataset(n=500, dimension=8, queries=1)
    return support.build_artifact(tmp_path_factory.mktemp("ops") / "small", base, backend="exact", metric="l2")


@pytest.fixture(scope="module")
def server(artifact: Path) -> Iterator[FluxServer]:
    config = support.server_config([{"name": "small", "path": str(artifact)}], server={"metrics_port": 0})
    with support.running_server(config) as srv:
        yield srv


def _search_request(index: str = "small", k: int = 3) -> vector_service_pb2.SearchRequest:
    vector = types_pb2.FloatVectors(dimension=8, data=np.ones(8, "<f4").tobytes())
    return vector_service_pb2.SearchRequest(index=index, vector=vector, k=k)


def _scrape(server: FluxServer) -> dict[str, float]:
    assert server.metrics is not None
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics.port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _sample(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return samples.get(f"{name}{{{wanted}}}" if labels else name, 0.0)


# --- metrics and request ids ----------------------------------------------------------------------


def test_metrics_count_calls_by_method_index_and_code(server: FluxServer) -> None:
    before = _scrape(server)
    with support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        for _ in range(3):
            stub.Search(_search_request(), timeout=10)
        for request in (_search_request(k=0), _search_request(index="nope")):
            with pytest.raises(grpc.RpcError):
                stub.Search(request, timeout=10)
        for number in range(20):  # names nobody configured must not become label values
            with pytest.raises(grpc.RpcError):
                stub.Search(_search_request(index=f"made-up-{number}"), timeout=10)
    after = _scrape(server)

    def grew(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert grew("flux_requests_total", method=SEARCH, index="small", code="OK") == 3
    assert grew("flux_requests_total", method=SEARCH, index="small", code="INVALID_ARGUMENT") == 1
    assert grew("flux_requests_total", method=SEARCH, index="", code="NOT_FOUND") == 21
    assert grew("flux_request_seconds_count", method=SEARCH, index="small") == 4
    assert _sample(after, "flux_request_seconds_bucket", method=SEARCH, index="small", le="10.0") >= 4
    assert not any("made-up" in name for name in after)
    assert _sample(after, "flux_requests_in_flight") == 0
    assert _sample(after, "flux_index_items", index="small") == 500
    assert _sample(after, "flux_index_bytes", index="small") > 500 * 8 * 4
    assert _sample(after, "flux_index_serving", index="small") == 1
    assert _sample(after, "flux_index_loaded_versions", index="small") == 1
    assert _sample(after, "flux_index_active_version", index="small") == 1
    assert _sample(after, "flux_version_load_seconds_count", index="small") >= 1
    assert _sample(after, "flux_version_swap_seconds_count", index="small") >= 1
    assert _sample(after, "flux_max_concurrent_calls") == 64


def test_metrics_count_query_rows_by_how_they_were_answered(server: FluxServer) -> None:
    override = vector_service_pb2.QueryOverride
    excluded = types_pb2.Filter(exclude_ids=support.ids_for(500)[:498])  # 2 items pass, under k: an exact scan
    batch = vector_service_pb2.BatchSearchRequest(
        index="small",
        queries=types_pb2.FloatVectors(dimension=8, data=np.ones((3, 8), "<f4").tobytes()),
        k=3,
        overrides=[override(), override(filter=excluded), override()],
    )
    before = _scrape(server)
    with support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        answered = [stub.Search(_search_request(), timeout=10).neighbors.strategy for _ in range(2)]
        filtered = _search_request()
        filtered.filter.CopyFrom(excluded)
        answered.append(stub.Search(filtered, timeout=10).neighbors.strategy)
        answered.extend(row.strategy for row in stub.BatchSearch(batch, timeout=10).results)
    after = _scrape(server)
    strategies = [types_pb2.SearchStrategy.Name(s).lower().removeprefix("search_strategy_") for s in answered]
    # Search answers one row a call, the batch three: its middle row and the filtered Search scan.
    assert strategies.count("index") == 4
    assert strategies.count("exact_scan") == 2
    for strategy in ("index", "exact_scan", "overfetch", "native_filter"):
        grew = _sample(after, "flux_query_rows_total", index="small", strategy=strategy) - _sample(
            before, "flux_query_rows_total", index="small", strategy=strategy
        )
        assert grew == strategies.count(strategy), strategy


def test_the_metrics_endpoint_answers_on_metrics_only(server: FluxServer) -> None:
    assert server.metrics is not None
    port = server.metrics.port

    def get(path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # sends the path as written
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    status, text = get("/metrics")
    assert status == 200
    assert "flux_requests_in_flight" in text
    status, text = get("/metrics?cache=off")  # the path decides, not the query
    assert status == 200
    assert "flux_max_concurrent_calls 64.0" in text
    for path in ("/../../etc/passwd", "/", "/metrics/", "/metricsx", "/metrics/../x", "/favicon.ico", "/index.html"):
        assert get(path) == (404, "not found; metrics are at /metrics\n"), path


def test_every_answer_carries_a_request_id_and_a_given_one_is_kept(server: FluxServer) -> None:
    with support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        _, call = stub.Search.with_call(_search_request(), timeout=10)
        made_up = dict(call.trailing_metadata())["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", made_up)
        _, call = stub.Search.with_call(_search_request(), metadata=(("x-request-id", "trace-42.a"),), timeout=10)
        assert dict(call.trailing_metadata())["x-request-id"] == "trace-42.a"
        with pytest.raises(grpc.RpcError) as caught:  # errors keep their own trailers and gain the id
            stub.Search(_search_request(index="nope"), metadata=(("x-request-id", "bad id!"),), timeout=10)
        trailers = dict(caught.value.trailing_metadata())
        assert trailers["flux-error-reason"] == "INDEX_NOT_FOUND"
        assert re.fullmatch(r"[0-9a-f]{16}", trailers["x-request-id"])  # "bad id!" is not a request id


def test_bytes_that_do_not_parse_are_invalid_argument(server: FluxServer) -> None:
    with support.channel_to(server) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/" + SEARCH)(b"\xff\xff\xff", timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"not a valid message for /{SEARCH}" in caught.value.details()
        reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as caught:
            list(reflect(iter([b"\xff\xff\xff"]), timeout=10))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# --- deadlines --------------------------------------------------------------------------------------


def test_a_call_whose_deadline_passes_while_it_waits_is_never_searched(tmp_path: Path) -> None:
    base, queries = support.dataset(n=20_000, dimension=128, queries=1024)
    artifact = support.build_artifact(tmp_path / "big", base, backend="exact", metric="l2")
    config = support.server_config(
        [{"name": "big", "path": str(artifact)}],
        server={"threads": 1, "metrics_port": 0, "search_threads": 1},
    )
    vectors = types_pb2.FloatVectors(dimension=128, data=queries.astype("<f4").tobytes())
    slow = vector_service_pb2.BatchSearchRequest(index="big", queries=vectors, k=10)
    quick = vector_service_pb2.SearchRequest(
        index="big", vector=types_pb2.FloatVectors(dimension=128, data=queries[0].astype("<f4").tobytes()), k=10
    )
    with support.running_server(config) as server, support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        before = _scrape(server)
        busy = stub.BatchSearch.future(slow, timeout=120)  # holds the only handler thread
        deadline = time.monotonic() + 60
        while _sample(_scrape(server), "flux_requests_in_flight") < 1:
            assert time.monotonic() < deadline
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(quick, timeout=0.05)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.0
        assert not busy.done(), "the batch finished before the deadline; make it longer"
        assert len(busy.result().results) == 1024
        after = _scrape(server)
    searched = _sample(after, "flux_requests_total", method=SEARCH, index="big", code="OK") - _sample(
        before, "flux_requests_total", method=SEARCH, index="big", code="OK"
    )
    assert searched == 0  # gRPC dropped it, or the deadline interceptor refused it: no search ran


# --- readiness ----------------------------------------------------------------------------------------


def test_health_is_not_serving_until_the_indexes_have_loaded(artifact: Path) -> None:
    config = support.server_config(
        [{"name": "small", "path": str(artifact), "gate": {"canary_queries": 5000, "warmup_queries": 5000}}]
    )
    server = build_server(config)
    server.start()
    try:
        with support.channel_to(server) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            first = next(watch).status
            assert server.wait_ready(60)
            second = next(watch).status
            watch.cancel()
    finally:
        server.stop(grace=0)
    assert (first, second) == (health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING)


# --- the request log and environment overrides, through `flux serve` ----------------------------------


def test_json_request_log_through_flux_serve_with_environment_overrides(artifact: Path, tmp_path: Path) -> None:
    config = tmp_path / "flux.yaml"
    config.write_text(f"server: {{port: 0}}\nindexes: [{{name: small, path: {artifact}}}]\n")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FLUX_LOGGING__FORMAT": "json",
        "FLUX_LOGGING__REQUESTS": "true",
        "FLUX_SERVER__GRACE_SECONDS": "2",
    }
    process = subprocess.Popen([*FLUX, "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    records = []
    for line in process.stderr:
        records.append(json.loads(line))  # every line is one JSON object
        if records[-1]["message"].startswith("ready: "):
            break
    address = re.search(r"listening on (\S+)", next(r["message"] for r in records if "listening" in r["message"]))
    assert address is not None
    with grpc.insecure_channel(address.group(1)) as channel:
        VectorServiceStub(channel).Search(_search_request(), metadata=(("x-request-id", "req-0001"),), timeout=10)
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    records += [json.loads(line) for line in rest.splitlines()]
    requests = [r for r in records if r["logger"] == "flux.requests"]
    assert len(requests) == 1
    record = requests[0]
    assert record["request_id"] == "req-0001"
    assert (record["method"], record["index"], record["code"], record["level"]) == (SEARCH, "small", "OK", "INFO")
    assert 0 < record["latency_ms"] < 10_000
    assert record["peer"].startswith("ipv4:127.0.0.1:")
    assert any("draining for up to 2.0s" in r["message"] for r in records)  # FLUX_SERVER__GRACE_SECONDS


def test_environment_overrides_set_nested_keys_with_yaml_types() -> None:
    raw = {"server": {"port": 1}, "indexes": [{"name": "a", "path": "/a"}]}
    env = {
        "FLUX_SERVER__PORT": "6000",
        "FLUX_SERVER__HOST": "0.0.0.0",
        "FLUX_LOGGING__REQUESTS": "true",
        "FLUX_INDEXES__0__PATH": "/data/a",
        "FLUX_LOG_LEVEL": "DEBUG",  # not an override: no double underscore
        "HOME": "/root",
    }
    result, origins = config_env.apply(raw, env)
    assert result == {
        "server": {"port": 6000, "host": "0.0.0.0"},
        "indexes": [{"name": "a", "path": "/data/a"}],
        "logging": {"requests": True},
    }
    assert raw["server"] == {"port": 1}  # the input is left alone
    assert origins["server.port"] == "FLUX_SERVER__PORT"
    assert origins["indexes[0].path"] == "FLUX_INDEXES__0__PATH"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FLUX_SERVER__PORT": "70000"}, "server.port: Input should be less than or equal to 65535 "
         "(set by the environment variable FLUX_SERVER__PORT)"),
        ({"FLUX_SERVR__PORT": "1"}, "servr: unknown key (check its spelling) (set by the environment variable "
         "FLUX_SERVR__PORT)"),
        ({"FLUX_INDEXES__3__PATH": "/x"}, "environment FLUX_INDEXES__3__PATH: indexes has no entry 3 (it has 1)"),
        ({"FLUX_SERVER__PORT__X": "1"}, "environment FLUX_SERVER__PORT__X: server.port is a single value"),
        ({"FLUX_SERVER__HOST": "[unclosed"}, "environment FLUX_SERVER__HOST: not a valid YAML value"),
    ],
)  # fmt: skip
def test_environment_override_errors_name_the_variable(
    tmp_path: Path, artifact: Path, env: dict[str, str], fragment: str
) -> None:
    path = tmp_path / "flux.yaml"
    path.write_text(f"server: {{port: 1}}\nindexes: [{{name: small, path: {artifact}}}]\n")
    with pytest.raises(ConfigError) as caught:
        flux_config.load(path, environ=env)
    assert fragment in caught.value.message


# --- flux config check and flux token ------------------------------------------------------------------


def _flux(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    return subprocess.run([*FLUX, *args], capture_output=True, text=True, input=stdin, timeout=60, env=env)


def test_config_check_prints_a_summary_or_names_the_error(tmp_path: Path, artifact: Path) -> None:
    root = artifact.parent
    good = tmp_path / "good.yaml"
    token = {"name": "ranker", "role": "reader", "sha256": hash_token("t0ken")}
    good.write_text(
        json.dumps(
            {
                "server": {"metrics_port": 9090, "data_root": str(root)},
                "auth": {"tokens": [token]},
                "indexes": [{"name": "small", "path": str(artifact)}],
            }
        )
    )
    result = _flux("config", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert f"{good}: valid" in result.stdout
    assert "metrics port  9090" in result.stdout
    assert "max_concurrent_calls 64, max_streams 8" in result.stdout  # the stream cap: half of 16 threads
    assert "auth          1 tokens: ranker (reader)" in result.stdout
    assert f"data root     {root}" in result.stdout
    assert f"small        {artifact}: versions 1 (latest)" in result.stdout
    assert token["sha256"] not in result.stdout

    cases = {
        "missing": ({"indexes": [{"name": "x", "path": str(tmp_path / "nowhere")}]}, "indexes[0].path: "),
        "outside": (
            {"server": {"data_root": str(tmp_path / "root")}, "indexes": [{"name": "x", "path": str(artifact)}]},
            "outside server.data_root",
        ),
        "tls": ({"tls": {"cert_file": "none.pem", "key_file": "none.key"}}, "tls.cert_file: "),
        "typo": ({"server": {"max_concurent_calls": 3}}, "server.max_concurent_calls: unknown key"),
    }
    for name, (raw, fragment) in cases.items():
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(json.dumps(raw))
        result = _flux("config", "check", str(bad))
        assert result.returncode == 1, name
        assert fragment in result.stderr, (name, result.stderr)


def test_token_new_and_hash(tmp_path: Path) -> None:
    made = _flux("token", "new", "--name", "ranker", "--role", "reader")
    assert made.returncode == 0
    token = re.search(r"^token: (\S+)$", made.stdout, re.M)
    assert token is not None
    assert len(token.group(1)) >= 40
    assert f"{{name: ranker, role: reader, sha256: {hash_token(token.group(1))}}}" in made.stdout
    hashed = _flux("token", "hash", stdin=token.group(1) + "\n")
    assert hashed.stdout.strip() == hash_token(token.group(1))
    assert _flux("token", "hash").returncode == 1


# --- tracing ---------------------------------------------------------------------------------------------


def test_tracing_makes_a_server_span_per_call_joined_to_the_callers_trace(artifact: Path, spans: Any) -> None:
    from opentelemetry import trace

    exporter = spans
    exporter.clear()
    config = support.server_config([{"name": "small", "path": str(artifact)}], tracing={"enabled": True})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with support.running_server(config) as server, support.channel_to(server) as channel:
        stub = VectorServiceStub(channel)
        parent = (("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
        _, call = stub.Search.with_call(_search_request(), metadata=parent, timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.Search(_search_request(index="nope"), timeout=10)
    spans = [s for s in exporter.get_finished_spans() if s.name == SEARCH]
    assert len(spans) == 2
    ok, failed = spans
    assert format(ok.context.trace_id, "032x") == trace_id
    assert ok.kind is trace.SpanKind.SERVER
    assert ok.attributes["flux.index"] == "small"
    assert ok.attributes["rpc.grpc.status_code"] == 0
    assert ok.attributes["flux.request_id"] == dict(call.trailing_metadata())["x-request-id"]
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert format(failed.context.trace_id, "032x") != trace_id


# --- the deployment ------------------------------------------------------------------------------------


def test_the_manifests_expose_the_configured_metrics_port() -> None:
    import yaml

    root = Path(__file__).resolve().parent.parent / "deploy"
    configmap = yaml.safe_load((root / "k8s" / "configmap.yaml").read_text())
    config = flux_config.parse(yaml.safe_load(configmap["data"]["flux.yaml"]), source="configmap", origins={})
    image = flux_config.load(root / "config" / "flux.yaml", environ={})
    deployment = yaml.safe_load((root / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert config.server.metrics_port == image.server.metrics_port == ports["metrics"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert config.server.data_root is not None
    assert all(index.path.is_relative_to(config.server.data_root) for index in config.indexes)
