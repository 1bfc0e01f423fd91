"""The Grafana dashboard and the Prometheus alert rules under deploy/: every PromQL expression parses and every
metric it reads exists on a real server after it served requests; the rule file has Prometheus's structure."""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mmfusion.client import InspectionClient, frames_from_images
from mmfusion.serving import build_server
from tests.test_pipeline import RED, tiny_model

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "mmfusion.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes for every target itself, not the server's
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SEVERITIES = {"critical", "warning", "info"}
ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
RECORD_KEYS = {"record", "expr", "labels"}
GROUP_KEYS = {"name", "interval", "limit", "rules", "query_offset", "labels"}
TEMPLATE_FUNCTIONS = {"humanize", "humanize1024", "humanizeDuration", "humanizePercentage", "humanizeTimestamp"}


# ---- reading the files


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the selectors of its variables' queries."""
    queries = [target["expr"] for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        found = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", query)
        assert found, f"variable {variable['name']}: {query!r}: expected label_values(SELECTOR, LABEL)"
        queries.append(found.group(1))
    return queries


def grafana_to_promql(expr: str) -> str:
    """A Grafana query with its range variables replaced (label variables sit inside regex strings already)."""
    for variable, value in GRAFANA_RANGES.items():
        expr = expr.replace(variable, value)
    assert "[$" not in expr, f"an unknown range variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, from its parsed syntax tree (a name-less selector fails)."""
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def rule_problems(document) -> list[str]:
    """What keeps a document from being a Prometheus rule file (groups/rules/alert|record/expr/for/labels/...)."""
    problems: list[str] = []
    if not isinstance(document, dict) or set(document) != {"groups"} or not isinstance(document["groups"], list):
        return ["the file must be a mapping with one key, groups: a list"]
    names = [group.get("name") for group in document["groups"] if isinstance(group, dict)]
    if len(names) != len(set(names)):
        problems.append(f"group names repeat: {names}")
    for index, group in enumerate(document["groups"]):
        where = f"groups[{index}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str) or not group["name"]:
            problems.append(f"{where}: needs a name")
            continue
        where = f"group {group['name']}"
        problems += [f"{where}: unknown key {key!r}" for key in set(group) - GROUP_KEYS]
        if "interval" in group and not DURATION.match(str(group["interval"])):
            problems.append(f"{where}: interval {group['interval']!r} is not a duration")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{where}: rules must be a non-empty list")
            continue
        for position, rule in enumerate(rules):
            problems += rule_problems_of(rule, f"{where} rule {position}")
    return problems


def rule_problems_of(rule, where: str) -> list[str]:
    """The problems of one alerting or recording rule."""
    if not isinstance(rule, dict):
        return [f"{where}: not a mapping"]
    problems = []
    is_alert = "alert" in rule
    if is_alert == ("record" in rule):
        return [f"{where}: needs exactly one of alert and record"]
    name = rule["alert"] if is_alert else rule["record"]
    where = f"{where} ({name})"
    allowed = ALERT_KEYS if is_alert else RECORD_KEYS
    problems += [f"{where}: unknown key {key!r}" for key in set(rule) - allowed]
    if not isinstance(name, str) or not NAME.match(name.replace(":", "_")):
        problems.append(f"{where}: {name!r} is not a valid name")
    expr = rule.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        problems.append(f"{where}: needs an expr")
    else:
        try:
            promql_parser.parse(expr)
        except Exception as error:
            problems.append(f"{where}: expr does not parse: {error}")
    for key in ("for", "keep_firing_for"):
        if key in rule and not DURATION.match(str(rule[key])):
            problems.append(f"{where}: {key} {rule[key]!r} is not a duration")
    for key in ("labels", "annotations"):
        block = rule.get(key, {})
        if not isinstance(block, dict) or not all(isinstance(v, str) for v in block.values()):
            problems.append(f"{where}: {key} must map names to strings")
            continue
        problems += [f"{where}: {key} name {k!r} is not valid" for k in block if not NAME.match(str(k))]
        for text in block.values():
            problems += template_problems(text, expr or "", where)
    if is_alert:
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{where}: labels.severity must be one of {sorted(SEVERITIES)}")
        if not {"summary", "description"} <= set(rule.get("annotations", {})):
            problems.append(f"{where}: annotations need a summary and a description")
    return problems


def template_problems(text: str, expr: str, where: str) -> list[str]:
    """Go template actions in an annotation: balanced, known functions, labels the expression keeps."""
    if text.count("{{") != text.count("}}"):
        return [f"{where}: unbalanced template braces in {text!r}"]
    problems = []
    for action in re.findall(r"{{(.*?)}}", text):
        for function in re.findall(r"\|\s*([a-zA-Z0-9_]+)", action):
            if function not in TEMPLATE_FUNCTIONS:
                problems.append(f"{where}: unknown template function {function!r}")
        for label in re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", action):
            if label != "instance" and not re.search(rf"\b{label}\b", expr):
                problems.append(f"{where}: the annotation uses $labels.{label}, which the expr does not keep")
    return problems


# ---- the checks


def test_the_dashboard_is_a_grafana_dashboard_whose_queries_parse():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard_panels(dashboard)
    assert dashboard["uid"] == "mmfusion" and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    queries = dashboard_queries(dashboard)
    assert len(queries) > 20
    for query in queries:
        assert metric_names(grafana_to_promql(query)), query
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("rpc rate", "errors", "latency", "queue depth", "batch size", "streams open", "cpu", "memory"):
        assert topic in titles, topic
    assert "headroom" in titles


def test_the_alert_rules_are_a_valid_prometheus_rule_file():
    document = yaml.safe_load(ALERTS.read_text())
    assert rule_problems(document) == []
    alerts = [rule["alert"] for group in document["groups"] for rule in group["rules"]]
    assert len(alerts) == len(set(alerts)) >= 8


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["groups"][0]["rules"][0].pop("expr"), "needs an expr"),
        (lambda d: d["groups"][0]["rules"][0].update({"for": "5 minutes"}), "is not a duration"),
        (lambda d: d["groups"][0]["rules"][0].update({"expr": "rate(x[5m]"}), "does not parse"),
        (lambda d: d["groups"][0]["rules"][0].update({"fro": "5m"}), "unknown key 'fro'"),
        (lambda d: d["groups"][0]["rules"][0]["labels"].update({"severity": "page-me"}), "labels.severity"),
        (lambda d: d["groups"][0]["rules"][0].update({"record": "x"}), "exactly one of alert and record"),
        (lambda d: d["groups"][1].update({"name": d["groups"][0]["name"]}), "group names repeat"),
        (lambda d: d["groups"][0]["rules"][0]["annotations"].update({"summary": "{{ $labels.nope }}"}), "$labels.nope"),
        (lambda d: d.update({"rules": []}), "one key, groups"),
    ],
)
def test_the_rule_check_catches_broken_rule_files(change, problem):
    document = copy.deepcopy(yaml.safe_load(ALERTS.read_text()))
    change(document)
    assert any(problem in found for found in rule_problems(document)), rule_problems(document)


@pytest.fixture(scope="module")
def served_metrics(tmp_path_factory) -> set[str]:
    """Every metric name a real server exposes on /metrics once it answered an Inspect and a stream."""
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    with build_server(["tiny"], port=0, model_root=root, metrics_port=0) as server:
        with InspectionClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            client.wait_ready(10)
            client.inspect("tiny", text="a request")
            client.inspect("tiny", text="a request")  # a cache hit
            assert len(list(client.stream(frames_from_images([RED, RED + 1], "cam", "tiny")))) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)  # declared families without a sample yet
    return names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_queried_exists_on_a_serving_server(served_metrics, source):
    if source == "dashboard":
        queries = [grafana_to_promql(query) for query in dashboard_queries(json.loads(DASHBOARD.read_text()))]
    else:
        groups = yaml.safe_load(ALERTS.read_text())["groups"]
        queries = [rule["expr"] for group in groups for rule in group["rules"]]
    queried = set().union(*(metric_names(query) for query in queries))
    assert {"mmfusion_rpc_requests_total", "process_resident_memory_bytes"} & queried
    assert sorted(queried - served_metrics - PROMETHEUS_OWN) == []
