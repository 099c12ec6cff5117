"""The monitoring manifests: the PrometheusRule and the Grafana dashboard use only metrics the
code exposes, hold together as objects, and, with promtool, parse and fire when they should.

promtool is Prometheus's own checker: ``nox -s manifests`` provides it (``scripts/promtool``
takes the binary from Debian's package) and passes it as ``TCPECHO_PROMTOOL``. Without it the
structure and the metric names are still checked here, and the PromQL only for balance.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tcpecho import metrics
from tcpecho.client.metrics import ClientMetrics
from tcpecho.server.metrics import ServerCollector
from tcpecho.server.server import EchoServer, ServerConfig
from tcpecho.tcp.info import TcpInfo
from tests.deploy.test_manifests import ROOT, load_yaml_documents, requires_kubectl

pytestmark = pytest.mark.manifests

MONITORING = ROOT / "manifests" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Grafana's own variables, as a Prometheus would see them once Grafana has filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
    "gauge": ("",),
}
Obj = dict[str, Any]


class _ClientInAHang:
    """A client as a scrape sees it mid-hang, so that every one of its metrics is exposed
    (some are only while connected); the counted ones come from the real ClientMetrics."""

    def waiting_s(self) -> float:
        return 40.0

    def connection_tcp_info(self) -> TcpInfo | None:
        return None

    def is_connected(self) -> bool:
        return True

    def expected_detection_s(self) -> float | None:
        return 32.5


@functools.cache
def exposed_names() -> frozenset[str]:
    """Every sample name the server's and the client's /metrics can carry."""
    server_registry = metrics.new_registry()
    server_registry.register(ServerCollector(EchoServer(ServerConfig())))
    client_registry = metrics.new_registry()
    ClientMetrics(_ClientInAHang(), client_registry)
    names: set[str] = set()
    for registry in (server_registry, client_registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return frozenset(names)


def rule_object() -> Obj:
    (document,) = load_yaml_documents(RULE.read_text())
    return document


def dashboard() -> Obj:
    loaded: Obj = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and refId, PromQL) for every target of every panel."""
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]


def rule_queries() -> list[tuple[str, str]]:
    return [
        (rule["alert"], rule["expr"])
        for group in rule_object()["spec"]["groups"]
        for rule in group["rules"]
    ]


def as_prometheus_sees_it(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    return query


# -- the metrics they use ------------------------------------------------------------------


def test_the_code_exposes_what_the_docs_promise() -> None:
    names = exposed_names()
    for name in (
        "tcpecho_client_failures_total",
        "tcpecho_client_detection_seconds_bucket",
        "tcpecho_client_waiting_seconds",
        "tcpecho_client_expected_detection_seconds",
        "tcpecho_client_socket_options_info",
        "tcpecho_server_connections",
        "tcpecho_server_connections_total",
        "tcpecho_server_bytes_echoed_total",
        "process_cpu_seconds_total",
    ):
        assert name in names


def test_every_query_uses_metrics_the_code_exposes_and_is_balanced() -> None:
    # One test over every query, not one per query: the queries are read from YAML, which
    # only the manifests session has, and parametrizing would read them at collection.
    queries = rule_queries() + dashboard_queries()
    assert len(queries) >= 10
    problems = [problem for where, query in queries for problem in _query_problems(where, query)]
    assert problems == []


def _query_problems(where: str, query: str) -> list[str]:
    used = set(re.findall(r"\b(?:tcpecho|process|python)_[a-z0-9_]+\b", query))
    if not used:
        return [f"{where}: {query!r} reads no tcpecho metric"]
    if not used <= exposed_names():
        return [f"{where}: no such metric: {sorted(used - exposed_names())}"]
    shown = as_prometheus_sees_it(query)
    if "$" in shown:
        return [f"{where}: a variable Prometheus would not know: {query!r}"]
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for character in re.sub(r'"[^"]*"', "", shown):
        if character in depth:
            depth[character] += 1
        elif character in closing:
            depth[closing[character]] -= 1
            if depth[closing[character]] < 0:
                return [f"{where}: {query!r} closes too early"]
    if set(depth.values()) != {0}:
        return [f"{where}: {query!r} is not balanced"]
    return []


# -- the rule ------------------------------------------------------------------------------


def test_the_rule_is_a_prometheus_rule_with_two_documented_alerts() -> None:
    rule = rule_object()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] == "tcpecho"
    (group,) = rule["spec"]["groups"]
    assert [r["alert"] for r in group["rules"]] == [
        "TcpechoDetectionOverdue",
        "TcpechoRequestHanging",
    ]
    for alert in group["rules"]:
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert set(alert["annotations"]) == {"summary", "description"}
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for alert in group["rules"]:
        assert f"`{alert['alert']}`" in docs


# -- the dashboard -------------------------------------------------------------------------


def test_the_dashboard_is_grafana_json_with_panels_that_do_not_overlap() -> None:
    board = dashboard()
    assert board["uid"] == "tcpecho"
    check_grafana_board(board)


def check_grafana_board(board: Obj) -> None:
    """A Grafana dashboard as the manifests ship them: a datasource variable, unique panel
    ids, panels on the 24-column grid that do not overlap, each with its own queries."""
    assert isinstance(board["schemaVersion"], int)
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
        references = [target["refId"] for target in panel["targets"]]
        assert references, panel["title"]
        assert len(set(references)) == len(references), panel["title"]


@requires_kubectl
def test_the_monitoring_kustomization_renders_the_rule_and_the_dashboards_configmap() -> None:
    output = subprocess.run(
        ["kubectl", "kustomize", str(MONITORING)], check=True, capture_output=True, text=True
    ).stdout
    objects = {(o["kind"], o["metadata"]["name"]): o for o in load_yaml_documents(output)}
    assert sorted(objects) == [("ConfigMap", "tcpecho-dashboard"), ("PrometheusRule", "tcpecho")]
    assert objects["PrometheusRule", "tcpecho"] == rule_object()
    configmap = objects["ConfigMap", "tcpecho-dashboard"]
    assert configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(configmap["data"]["grafana-dashboard.json"]) == dashboard()


# -- promtool ------------------------------------------------------------------------------


def promtool() -> str | None:
    return os.environ.get("TCPECHO_PROMTOOL") or shutil.which("promtool")


requires_promtool = pytest.mark.skipif(
    promtool() is None,
    reason="needs promtool (nox -s manifests provides it as root: scripts/promtool)",
)


def run_promtool(*args: str, cwd: Path) -> str:
    tool = promtool()
    assert tool is not None
    result = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def write_yaml(path: Path, content: Obj) -> None:
    import yaml  # only in the manifests session, which installs it with yamllint

    path.write_text(yaml.safe_dump(content, sort_keys=False))


@requires_promtool
def test_promtool_accepts_the_rule(tmp_path: Path) -> None:
    write_yaml(tmp_path / "rules.yaml", rule_object()["spec"])
    assert "SUCCESS: 2 rules found" in run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)


@requires_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule: promtool parses it with Prometheus's own parser."""
    queries = dashboard_queries()
    rules = [
        {"record": f"tcpecho_dashboard:query_{number}", "expr": as_prometheus_sees_it(query)}
        for number, (_, query) in enumerate(queries)
    ]
    write_yaml(tmp_path / "dashboard.yaml", {"groups": [{"name": "dashboard", "rules": rules}]})
    checked = run_promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(queries)} rules found" in checked


def _alert(instance: str, severity: str, summary: str, description: str) -> Obj:
    return {
        "exp_labels": {"instance": instance, "severity": severity},
        "exp_annotations": {"summary": summary, "description": description},
    }


@requires_promtool
def test_the_alerts_fire_when_a_request_waits_past_its_expected_detection(
    tmp_path: Path,
) -> None:
    """A client with --user-timeout 30s (expected by 32.5 s) whose request hangs, beside a
    healthy one with kernel defaults (expected by ~985 s), scraped every 15 s."""
    write_yaml(tmp_path / "rules.yaml", rule_object()["spec"])
    descriptions = {
        alert: rule["annotations"]["description"]
        for group in rule_object()["spec"]["groups"]
        for rule in group["rules"]
        for alert in [rule["alert"]]
    }
    overdue = _alert(
        "client-a:8001",
        "critical",
        "tcpecho client client-a:8001: a request unanswered for 45s, past its expected detection",
        descriptions["TcpechoDetectionOverdue"],
    )
    unanswered = _alert(
        "client-a:8001",
        "warning",
        "tcpecho client client-a:8001: a request unanswered for 1m 15s",
        descriptions["TcpechoRequestHanging"],
    )

    def series(metric: str, instance: str, values: str) -> Obj:
        return {"series": f'{metric}{{instance="{instance}"}}', "values": values}

    def expect(at: str, alert: str, alerts: list[Obj]) -> Obj:
        return {"eval_time": at, "alertname": alert, "exp_alerts": alerts}

    waiting, expected = (
        "tcpecho_client_waiting_seconds",
        "tcpecho_client_expected_detection_seconds",
    )
    unit_test = {
        "interval": "15s",
        "input_series": [
            series(waiting, "client-a:8001", "0+15x8"),  # 0, 15, 30, ... 120 s
            series(expected, "client-a:8001", "32.5x8"),
            series(waiting, "client-b:8001", "0x8"),
            series(expected, "client-b:8001", "984.924x8"),
        ],
        "alert_rule_test": [
            expect("30s", "TcpechoDetectionOverdue", []),  # 30 s: within 32.5 s
            expect("45s", "TcpechoDetectionOverdue", [overdue]),
            expect("45s", "TcpechoRequestHanging", []),
            expect("75s", "TcpechoRequestHanging", [unanswered]),
        ],
    }
    write_yaml(
        tmp_path / "test.yaml",
        {"rule_files": ["rules.yaml"], "evaluation_interval": "15s", "tests": [unit_test]},
    )
    assert "SUCCESS" in run_promtool("test", "rules", "test.yaml", cwd=tmp_path)
