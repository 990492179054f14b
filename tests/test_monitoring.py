"""The alerting rules, their unit tests and the Grafana dashboard in deploy/monitoring.

promtool checks the rules and runs their unit tests (every alert fires on a bad series and stays silent on
a healthy one), and must fail on a copy of the rules where any one alert can never fire. The rules and the
dashboard may only use the metrics and labels Flux defines (read from the code, and checked against a live
scrape of a real server and a router), plus the target labels of the example scrape configuration.

``make monitoring`` unpacks promtool (from Debian's package ``prometheus``); CI runs it before the tests and sets
FLUX_REQUIRE_PROMTOOL=1, so there the promtool tests fail rather than skip when promtool is missing.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
import yaml

from flux.core.query.model import Strategy
from flux.core.serving.versions import State
from flux_api.v1 import admin_service_pb2, types_pb2, vector_service_pb2, write_service_pb2
from flux_api.v1.vector_service_pb2_grpc import VectorServiceStub
from tests import support
from tests.support import router_config, routing, scrape

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "flux-rules.yaml"
RULE_TESTS = MONITORING / "flux-rules.test.yaml"
DASHBOARD = MONITORING / "flux-dashboard.json"
SCRAPE_CONFIG = MONITORING / "prometheus.yaml"

# PromQL words that are not metric names (aggregations and functions are recognised by their "(").
_KEYWORDS = frozenset(
    {
        *("sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile"),
        *("count_values", "by", "without", "on", "ignoring", "group_left", "group_right"),
        *("and", "or", "unless", "offset", "bool", "inf", "nan"),
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")')


# --- what Flux defines ------------------------------------------------------------------------------------


def _definitions() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric family the code defines: name -> (type, label names), from its constructor calls."""
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}
    kinds |= {"GaugeMetricFamily": "gauge", "CounterMetricFamily": "counter", "HistogramMetricFamily": "histogram"}
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for path in sorted((REPO / "flux").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id not in kinds:
                continue
            if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
                continue
            labels: ast.expr | None = node.args[2] if len(node.args) > 2 else None
            for keyword in node.keywords:
                if keyword.arg in ("labelnames", "labels"):
                    labels = keyword.value
            names = tuple(ast.literal_eval(labels)) if labels is not None else ()
            found[node.args[0].value] = (kinds[node.func.id], names)
    return found


def _sample_names(definitions: dict[str, tuple[str, tuple[str, ...]]]) -> set[str]:
    """The series names those families are scraped as (prometheus_client's suffixes)."""
    names: set[str] = set()
    for name, (kind, _) in definitions.items():
        if kind == "counter":
            names |= {f"{name.removesuffix('_total')}_{suffix}" for suffix in ("total", "created")}
        elif kind in ("histogram", "summary"):
            names |= {f"{name}_sum", f"{name}_count", f"{name}_created"}
            if kind == "histogram":
                names.add(f"{name}_bucket")
        else:
            names.add(name)
    return names


def _failure_reasons() -> set[str]:
    """The ``reason`` values the version manager counts failures under."""
    source = (REPO / "flux" / "core" / "serving" / "manager.py").read_text(encoding="utf-8")
    return set(re.findall(r'_fail\(slot, [^\n]*, "(\w+)", started\)', source)) | set(
        re.findall(r'State\.FAILED\.value, "(\w+)"', source)
    )


def _methods() -> set[str]:
    return {
        f"{service.full_name}/{method.name}"
        for module in (vector_service_pb2, write_service_pb2, admin_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def _target_labels() -> set[str]:
    """The labels the example scrape configuration gives every series, and Prometheus's own."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    labels = {"instance", "job"}
    for job in config["scrape_configs"]:
        labels |= {r["target_label"] for r in job["relabel_configs"] if not r.get("target_label", "_").startswith("_")}
    return labels


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Series names with their label names, scraped from a server after a search and a failed load, and a router."""
    root = tmp_path_factory.mktemp("monitoring")
    base, _ = support.dataset(n=300, dimension=8, queries=1)
    artifact = support.build_artifact(root / "small", base, backend="exact", metric="l2")
    indexes = [{"name": "small", "path": str(artifact)}, {"name": "broken", "path": str(root / "nothing-here")}]
    config = support.server_config(indexes, server={"metrics_port": 0})
    with support.running_server(config) as server:
        with support.channel_to(server) as channel:
            vector = types_pb2.FloatVectors(dimension=8, data=np.ones(8, "<f4").tobytes())
            VectorServiceStub(channel).Search(vector_service_pb2.SearchRequest(index="small", vector=vector, k=3))
            with pytest.raises(grpc.RpcError):
                VectorServiceStub(channel).Search(vector_service_pb2.SearchRequest(index="broken", vector=vector, k=3))
        with routing(
            router_config([{"name": "small", "shard_count": 1, "shards": [server.address]}], metrics=True)
        ) as (router, stub):
            stub.Search(vector_service_pb2.SearchRequest(index="small", vector=vector, k=3))
            samples = {**scrape(router), **scrape(server)}
    series: dict[str, set[str]] = {}
    for name, labels in samples:
        series.setdefault(name, set()).update(key for key, _ in labels)
    return series


# --- what the rules and the dashboard use -----------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_targets() -> list[dict[str, Any]]:
    return [target for panel in _panels(_dashboard()) for target in panel.get("targets", [])]


def _expressions() -> list[str]:
    return [str(rule["expr"]) for rule in _rules()] + [str(t["expr"]) for t in _dashboard_targets()]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _CLAUSE.sub(r"\1", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if match.group() not in _KEYWORDS and not expr[match.end() :].lstrip().startswith("("):
            names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """The label names a PromQL expression matches on or groups by."""
    names = {name for name, _, _ in _MATCHER.findall(expr)}
    for _, listed in _CLAUSE.findall(_STRING.sub('""', expr)):
        names |= {name.strip() for name in listed.split(",") if name.strip()}
    return names


def matchers(expr: str, label: str) -> list[tuple[str, str]]:
    """(operator, value) of each matcher on ``label``."""
    return [(op, json.loads(value)) for name, op, value in _MATCHER.findall(expr) if name == label]


def test_the_expression_readers_find_names_and_labels() -> None:
    expr = (
        'sum by (index, le) (rate(flux_request_seconds_bucket{method=~"a|b", code!="OK"}[5m])) / on (pod) '
        'flux_x > time() - 900 or max_over_time(flux_y{index="1e3"}[$__range]) offset 15m and 0.5e3'
    )
    assert metric_names(expr) == {"flux_request_seconds_bucket", "flux_x", "flux_y"}
    assert label_names(expr) == {"index", "le", "method", "code", "pod"}
    assert matchers(expr, "code") == [("!=", "OK")]


def test_every_metric_the_rules_and_the_dashboard_use_is_one_flux_exports(scraped: dict[str, set[str]]) -> None:
    defined = _sample_names(_definitions())
    # The code's definitions are what the server exports: every flux_ series of the scrape is one of them,
    # and the scrape holds the families a search, a load and a failed load record.
    assert {name for name in scraped if name.startswith("flux_")} <= defined
    for name in ("flux_requests_total", "flux_request_seconds_bucket", "flux_index_serving", "flux_index_bytes"):
        assert name in scraped, name
    assert {name for name in defined if name.startswith("flux_router_")} <= set(scraped)  # every one, live
    assert scraped["flux_router_shard_calls_total"] == {"index", "shard", "code"}
    assert "flux_version_transitions_created" in scraped  # the version alerts read it
    assert scraped["flux_query_rows_total"] == {"index", "strategy"}  # the dashboard's strategy panels read it
    exported = defined | set(scraped)  # the scrape adds prometheus_client's process_* series

    used = {name for expr in _expressions() for name in metric_names(expr)}
    assert {"flux_index_serving", "flux_requests_total", "process_resident_memory_bytes"} <= used
    assert {"flux_router_shard_calls_total", "flux_router_partial_answers_total"} <= used
    assert used <= exported, f"not exported by Flux: {sorted(used - exported)}"


def test_every_label_the_rules_and_the_dashboard_use_is_flux_s_or_a_target_label() -> None:
    flux_labels = {label for _, labels in _definitions().values() for label in labels}
    assert {"index", "method", "code", "state", "reason", "alias", "arm", "op"} <= flux_labels
    allowed = flux_labels | _target_labels() | {"le"}
    assert {"namespace", "pod", "component", "shard"} <= _target_labels()

    used = {label for expr in _expressions() for label in label_names(expr)}
    for rule in _rules():
        for text in rule.get("annotations", {}).values():
            used |= set(re.findall(r"\$labels\.(\w+)", text))
    for target in _dashboard_targets():
        used |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    assert used <= allowed, f"neither Flux's nor a target label: {sorted(used - allowed)}"


def test_label_values_in_the_rules_and_the_dashboard_are_ones_flux_records() -> None:
    codes = {code.name for code in grpc.StatusCode}
    states = {state.value for state in State}
    reasons = _failure_reasons()
    assert reasons == {"artifact", "memory", "error", "gate"}
    strategies = {strategy.value for strategy in Strategy}
    methods = _methods()
    for expr in _expressions():
        for label, known in (("code", codes), ("state", states), ("reason", reasons), ("strategy", strategies)):
            for _, value in matchers(expr, label):
                assert set(value.split("|")) <= known, f"{label}={value!r} in {expr}"
        for _, value in matchers(expr, "method"):
            pattern = re.compile(value)
            assert any(pattern.fullmatch(m) for m in methods), f"method {value!r} matches no method"
            alternatives = re.search(r"/\(([\w|]+)\)$", value)
            if alternatives:
                service = value.split("/")[0].replace("\\", "")
                for name in alternatives.group(1).split("|"):
                    assert any(pattern.fullmatch(m) and m.endswith(f"/{name}") for m in methods), (service, name)


def test_the_example_scrape_config_loads_the_rules_and_reads_labels_the_manifests_set() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    assert config["rule_files"] == [RULES.name]
    pod_labels: set[str] = set()
    for path in sorted((REPO / "deploy" / "k8s").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            template = (document or {}).get("spec", {}).get("template", {})
            pod_labels |= set(template.get("metadata", {}).get("labels", {}))
    sanitized = {re.sub(r"[^a-zA-Z0-9_]", "_", label) for label in pod_labels}
    read = [
        source.removeprefix("__meta_kubernetes_pod_label_")
        for job in config["scrape_configs"]
        for relabel in job["relabel_configs"]
        for source in relabel.get("source_labels", [])
        if source.startswith("__meta_kubernetes_pod_label_")
    ]
    assert "flux_vectors_shard" in read
    assert set(read) <= sanitized, f"pod labels no manifest sets: {sorted(set(read) - sanitized)}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6} (.+)$", prose, flags=re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_that_exists() -> None:
    rules = _rules()
    assert len(rules) >= 10
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        document, _, anchor = annotations["runbook"].partition("#")
        path = REPO / document
        assert document.startswith("docs/"), rule["alert"]
        assert path.is_file(), rule["alert"]
        assert anchor in _anchors(path.read_text(encoding="utf-8")), f"{rule['alert']}: no heading #{anchor}"


def test_every_alert_fires_in_a_unit_test_beside_a_healthy_series_that_does_not() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    fired: set[str] = set()
    for case in tests["tests"]:
        series = [
            dict(re.findall(r'(\w+)="([^"]*)"', item["series"].partition("{")[2])) for item in case["input_series"]
        ]
        for check in case.get("alert_rule_test", []):
            expected = [alert["exp_labels"] for alert in check.get("exp_alerts") or []]
            if not expected:
                continue
            fired.add(check["alertname"])
            keys = sorted({key for labels in expected for key in labels} - {"severity"})
            firing = {tuple(str(labels.get(key, "")) for key in keys) for labels in expected}
            healthy = [s for s in series if tuple(s.get(key, "") for key in keys) not in firing]
            assert healthy, f"{check['alertname']} at {check['eval_time']}: every input series is expected to fire"
    assert fired == {rule["alert"] for rule in _rules()}


def test_the_dashboard_uses_a_prometheus_datasource_variable_everywhere() -> None:
    dashboard = _dashboard()
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    panels = [panel for panel in _panels(dashboard) if panel["type"] != "row"]
    assert len(panels) >= 15
    assert len({panel["id"] for panel in _panels(dashboard)}) == len(list(_panels(dashboard)))
    for panel in panels:
        assert panel["datasource"] == reference, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == reference


# --- promtool -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    unpacked = MONITORING / "build" / "usr" / "bin" / "promtool"  # where `make monitoring` puts it
    path = str(unpacked) if unpacked.is_file() else shutil.which("promtool")
    if path is None:
        message = "promtool is missing (from Debian's package prometheus); run `make monitoring`"
        if os.environ.get("FLUX_REQUIRE_PROMTOOL"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = _run([promtool, "check", "rules", RULES.name], MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_the_rules_pass_their_unit_tests(promtool: str) -> None:
    done = _run([promtool, "test", "rules", RULE_TESTS.name], MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_fail_when_any_alert_can_never_fire(promtool: str, tmp_path: Path) -> None:
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    for rule in _rules():
        document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
        for group in document["groups"]:
            for mutated in group["rules"]:
                if mutated["alert"] == rule["alert"]:
                    mutated["expr"] = "vector(1) == 0"
        (tmp_path / RULES.name).write_text(yaml.safe_dump(document), encoding="utf-8")
        done = _run([promtool, "test", "rules", RULE_TESTS.name], tmp_path)
        assert done.returncode != 0, f"the unit tests pass although {rule['alert']} never fires"
        assert f"alertname: {rule['alert']}," in done.stdout + done.stderr


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables given values, as a recording rule promtool checks."""
    values = {"$__rate_interval": "5m", "$__range": "6h", "$namespace": ".*", "$index": ".*"}
    rules = []
    for number, target in enumerate(_dashboard_targets()):
        expr = target["expr"]
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, target["expr"]
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _run([promtool, "check", "rules", "dashboard.yaml"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
