"""The node agent's manifests (``manifests/node-agent/``): a DaemonSet that runs ``tcpecho watch
--all-namespaces --metrics-port 9100`` on every node with the privileges it needs and no more,
and its monitoring (``monitoring/``: a PrometheusRule, a PodMonitor, a Grafana dashboard) held
to the agent's metric contract, parsed and unit-tested by promtool where it can be had.

The other pods keep one policy (``test_manifests.py``: non-root, no capabilities); the agent is
the documented exception, root with hostPID and three capabilities, each asserted exactly here
so that a change to any of them is seen. Everything else the policy asks (read-only root, no
privilege escalation, RuntimeDefault seccomp, limits, the kind-loaded image, no API token) it
keeps, and that is asserted too.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cluster import reproduce

from tcpecho import cli, metrics
from tcpecho.watch import WatchConfig, look
from tests.deploy.test_manifests import (
    ROOT,
    load_kind_config,
    load_yaml_documents,
    quantity,
    requires_kubectl,
)
from tests.deploy.test_monitoring import (
    as_prometheus_sees_it,
    check_grafana_board,
    requires_promtool,
    run_promtool,
    write_yaml,
)

pytestmark = pytest.mark.manifests

AGENT = ROOT / "manifests" / "node-agent"
MONITORING = AGENT / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
NAME = "tcpecho-node-agent"
NAMESPACE = "tcpecho-system"
METRICS_PORT = 9100
# kind's service subnet when its config sets none (sigs.k8s.io/kind,
# pkg/apis/config/v1alpha4/default.go); kubeadm's own default is 10.96.0.0/12.
KIND_DEFAULT_SERVICE_SUBNET = "10.96.0.0/16"
Obj = dict[str, Any]

# The agent's metrics as issue 24's integrator and these manifests agreed them: sample names
# (a histogram's three) and the labels the agent itself puts on each.
POD_LABELS = frozenset({"namespace", "pod"})
CONTRACT: dict[str, frozenset[str]] = {
    "tcpecho_node_connections": POD_LABELS | {"state"},
    "tcpecho_node_stuck_connections": POD_LABELS,
    "tcpecho_node_longest_stuck_seconds": POD_LABELS,
    "tcpecho_node_soonest_give_up_seconds": POD_LABELS,
    "tcpecho_node_at_risk_connections": POD_LABELS | {"code", "peer"},
    "tcpecho_node_namespaces": frozenset(),
    # A histogram, not a summary: its buckets add up across nodes (a summary's quantiles do
    # not, and prometheus_client's Summary has none), so one p99 covers the cluster.
    "tcpecho_node_snapshot_duration_seconds_bucket": frozenset({"le"}),
    "tcpecho_node_snapshot_duration_seconds_sum": frozenset(),
    "tcpecho_node_snapshot_duration_seconds_count": frozenset(),
    "tcpecho_node_skipped_total": frozenset({"what"}),
    "tcpecho_node_errors_total": frozenset({"source"}),
}
LABEL_VALUES = {"peer": {"service", "other"}, "what": {"namespace", "process", "socket"}}
# What the scrape adds to every series: the chart's kubernetes-pods job and the PodMonitor
# here both set node; namespace and pod are the agent's own on its own metrics.
TARGET_LABELS = frozenset({"instance", "job", "node", "namespace", "pod"})
# The codes that mean a connection will hang when its peer vanishes, for want of a user
# timeout (busy) or keepalive (idle): what the Service alert fires on.
UNPROTECTED = frozenset(
    {
        "no-bound",
        "keepalive-without-user-timeout",
        "recverr-without-user-timeout",
        "user-timeout-without-keepalive",
    }
)


# -- the objects ---------------------------------------------------------------------------


@functools.cache
def rendered(directory: Path) -> dict[tuple[str, str], Obj]:
    """The directory's objects as ``kubectl apply -k`` would send them, by (kind, name)."""
    output = subprocess.run(
        ["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return {(o["kind"], o["metadata"]["name"]): o for o in load_yaml_documents(output)}


def daemonset() -> Obj:
    found: Obj = rendered(AGENT)["DaemonSet", NAME]
    return found


def pod_spec() -> Obj:
    spec: Obj = daemonset()["spec"]["template"]["spec"]
    return spec


def container() -> Obj:
    (only,) = pod_spec()["containers"]
    found: Obj = only
    return found


def test_every_kustomization_under_manifests_is_one_the_tests_render() -> None:
    """A new directory of manifests must come with its checks (and the nox session's render)."""
    found = sorted(
        str(path.parent.relative_to(ROOT / "manifests"))
        for path in (ROOT / "manifests").rglob("kustomization.yaml")
    )
    overlays = [f"overlays/{name}" for name in reproduce.overlay_names(ROOT / "manifests")]
    assert found == sorted([*overlays, "base", "monitoring", "node-agent", "node-agent/monitoring"])
    nox_session = (ROOT / "noxfile.py").read_text()
    assert 'Path("manifests/node-agent")' in nox_session, "nox -s manifests must validate it"


@requires_kubectl
def test_the_agent_is_a_namespace_a_service_account_and_a_daemonset() -> None:
    objects = rendered(AGENT)
    assert sorted(objects) == [
        ("DaemonSet", NAME),
        ("Namespace", NAMESPACE),
        ("ServiceAccount", NAME),
    ]
    assert all(
        o["metadata"].get("namespace") == NAMESPACE
        for k, o in objects.items()
        if k[0] != "Namespace"
    )
    # No Role, ClusterRole or binding: the agent reads the node, never the API server.
    assert not [kind for kind, _ in objects if "Role" in kind]


@requires_kubectl
def test_the_namespace_admits_the_agent_and_says_so() -> None:
    """hostPID, root and SYS_ADMIN are outside Pod Security's baseline: the namespace must be
    privileged, and only the agent lives there."""
    labels = rendered(AGENT)["Namespace", NAMESPACE]["metadata"]["labels"]
    assert {key: labels[key] for key in labels if key.startswith("pod-security")} == {
        f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "warn", "audit")
    }


@requires_kubectl
def test_the_agent_has_no_api_token() -> None:
    account = rendered(AGENT)["ServiceAccount", NAME]
    assert account["automountServiceAccountToken"] is False
    spec = pod_spec()
    assert spec["serviceAccountName"] == NAME
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False


@requires_kubectl
def test_the_agent_runs_on_every_node() -> None:
    """A toleration of every taint: the control plane's and any other node's."""
    assert pod_spec()["tolerations"] == [{"operator": "Exists"}]
    spec = daemonset()["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert "nodeSelector" not in pod_spec()
    assert "affinity" not in pod_spec()


# -- the exceptions to the pods' policy, each exactly ---------------------------------------


@requires_kubectl
def test_the_agent_sees_the_hosts_processes_but_not_its_network() -> None:
    spec = pod_spec()
    assert spec["hostPID"] is True  # every process, so every network namespace
    assert spec["hostNetwork"] is False  # the host's namespace is /proc/1/ns/net, entered
    assert "hostIPC" not in spec
    assert "hostPort" not in container()["ports"][0]


@requires_kubectl
def test_the_agent_is_root_with_exactly_three_capabilities() -> None:
    """Root, for added capabilities to be effective at all (no ambient capabilities in
    Kubernetes); each capability measured as needed (the DaemonSet's comment says for what)."""
    pod = pod_spec()["securityContext"]
    assert pod == {
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container()["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH", "SYS_ADMIN", "SYS_PTRACE"]},
    }


@requires_kubectl
def test_the_only_host_paths_are_the_kubelets_logs_read_only() -> None:
    """The pod log directories (pod names) and the container log links (container names),
    read-only: the agent reads names, never a log line."""
    assert pod_spec()["volumes"] == [
        {"name": "pod-logs", "hostPath": {"path": "/var/log/pods", "type": "Directory"}},
        {
            "name": "container-logs",
            "hostPath": {"path": "/var/log/containers", "type": "Directory"},
        },
    ]
    assert container()["volumeMounts"] == [
        {"name": "pod-logs", "mountPath": "/var/log/pods", "readOnly": True},
        {"name": "container-logs", "mountPath": "/var/log/containers", "readOnly": True},
    ]


# -- what it keeps of the policy -----------------------------------------------------------


@requires_kubectl
def test_the_image_is_the_one_kind_loads_and_its_entrypoint_stays_pid1() -> None:
    agent = container()
    assert agent["image"] == reproduce.IMAGE == "localhost/tcpecho:latest"
    assert agent["imagePullPolicy"] in {"IfNotPresent", "Never"}
    assert "command" not in agent, "the image's exec-form ENTRYPOINT (tcpecho) must stay PID 1"


@requires_kubectl
def test_the_resources_are_the_issues_targets_with_headroom() -> None:
    """Requests: 2 % of a core and 64 MiB, issue 24's targets at a 5 s interval; limits above."""
    resources = container()["resources"]
    assert quantity(resources["requests"]["cpu"]) == pytest.approx(0.02)
    assert quantity(resources["requests"]["memory"]) == 64 * 2**20
    assert quantity(resources["limits"]["cpu"]) == pytest.approx(0.25)
    assert quantity(resources["limits"]["memory"]) == 192 * 2**20


# -- the command and its port --------------------------------------------------------------


@requires_kubectl
def test_the_agent_runs_watch_on_every_namespace_with_metrics_on_9100() -> None:
    assert container()["args"] == [
        "watch",
        "--all-namespaces",
        "--metrics-port",
        str(METRICS_PORT),
        "--interval",
        "5s",
        "--service-cidr",
        KIND_DEFAULT_SERVICE_SUBNET,
    ]


@requires_kubectl
def test_the_command_line_is_one_tcpecho_watch_accepts() -> None:
    """Parsed by tcpecho's own click command, and taken by the watch's config as the
    node agent's."""
    watch = cli.main.commands["watch"]
    args = container()["args"]
    ctx = watch.make_context("watch", list(args[1:]))
    assert ctx.params["all_namespaces"] is True
    assert ctx.params["metrics_port"] == METRICS_PORT
    assert ctx.params["interval"] == 5.0
    assert [ipaddress.ip_network(c) for c in ctx.params["service_cidrs"]] == [
        ipaddress.ip_network(KIND_DEFAULT_SERVICE_SUBNET)
    ]
    config = WatchConfig(
        all_namespaces=True,
        metrics_port=ctx.params["metrics_port"],
        service_cidrs=ctx.params["service_cidrs"],
        interval_s=ctx.params["interval"],
    )
    assert config.metrics_port == METRICS_PORT


@pytest.mark.parametrize("config", sorted(reproduce.CNI_CONFIGS.values()))
def test_the_service_cidr_is_the_kind_clusters(config: str) -> None:
    networking = load_kind_config(config).get("networking", {})
    subnet = networking.get("serviceSubnet", KIND_DEFAULT_SERVICE_SUBNET)
    daemonset_text = (AGENT / "daemonset.yaml").read_text()
    assert re.search(rf"- --service-cidr\n\s+- {re.escape(subnet)}\n", daemonset_text)


@requires_kubectl
def test_the_metrics_port_is_scraped_and_probed() -> None:
    agent = container()
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    template = daemonset()["spec"]["template"]["metadata"]
    assert template["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": metrics.PATH,
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert agent[probe]["httpGet"] == {"path": metrics.PATH, "port": "metrics"}, probe
        # A snapshot holds the event loop that answers: a few seconds must not restart it.
        assert agent[probe]["timeoutSeconds"] >= 5, probe
        assert agent[probe]["failureThreshold"] >= 3, probe


# -- the monitoring objects ----------------------------------------------------------------


def rule_object() -> Obj:
    (document,) = load_yaml_documents(RULE.read_text())
    return document


def rules() -> dict[str, Obj]:
    return {
        rule["alert"]: rule for group in rule_object()["spec"]["groups"] for rule in group["rules"]
    }


def dashboard() -> Obj:
    loaded: Obj = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]


@requires_kubectl
def test_the_monitoring_kustomization_renders_the_rule_podmonitor_and_dashboard() -> None:
    objects = rendered(MONITORING)
    assert sorted(objects) == [
        ("ConfigMap", f"{NAME}-dashboard"),
        ("PodMonitor", NAME),
        ("PrometheusRule", NAME),
    ]
    assert objects["PrometheusRule", NAME] == rule_object()
    configmap = objects["ConfigMap", f"{NAME}-dashboard"]
    assert configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(configmap["data"]["grafana-dashboard.json"]) == dashboard()


@requires_kubectl
def test_the_podmonitor_scrapes_the_agent_and_keeps_the_connections_pod_labels() -> None:
    monitor = rendered(MONITORING)["PodMonitor", NAME]["spec"]
    assert monitor["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    pod_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container()["ports"]}
    assert endpoint["path"] == metrics.PATH
    # Without it, namespace and pod would be the agent's, the connection's renamed exported_*.
    assert endpoint["honorLabels"] is True
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"},
        {"action": "labeldrop", "regex": "container"},
    ]


def test_the_rule_has_the_four_documented_alerts() -> None:
    rule = rule_object()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert [group["name"] for group in rule["spec"]["groups"]] == [
        "tcpecho-node-connections",
        "tcpecho-node-agent",
    ]
    assert list(rules()) == [
        "TcpechoConnectionStuck",
        "TcpechoUnprotectedServiceConnections",
        "TcpechoNodeAgentErrors",
        "TcpechoNodeAgentSkippingNamespaces",
    ]
    for name, alert in rules().items():
        assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert set(alert["annotations"]) == {"summary", "description"}, name
    # The runbook in the user's terms ends in the settings that remove the hang.
    for name in ("TcpechoConnectionStuck", "TcpechoUnprotectedServiceConnections"):
        assert "tcpecho explain --recommend" in " ".join(
            rules()[name]["annotations"]["description"].split()
        ), name


def test_the_stuck_alert_waits_60_s_and_one_more_retransmission() -> None:
    alert = rules()["TcpechoConnectionStuck"]
    assert " ".join(alert["expr"].split()) == (
        "max by (namespace, pod, node) (tcpecho_node_longest_stuck_seconds) > 60"
    )
    assert alert["for"] == "1m"


def test_the_service_alert_fires_on_the_codes_that_leave_a_connection_unbounded() -> None:
    """The codes watch gives a connection without a user timeout (busy) or keepalive (idle);
    not keepalive-exceeds-path-idle (the agent runs without --path), slow-connect or
    options-unknown (a connect in progress, and cannot tell)."""
    matcher = re.search(r'code=~"([^"]+)"', rules()["TcpechoUnprotectedServiceConnections"]["expr"])
    assert matcher, "the alert selects its codes with one code=~ matcher"
    assert set(matcher.group(1).split("|")) == UNPROTECTED
    watch_codes = (
        look._BUSY_RISKS | look._IDLE_RISKS | look._CONNECTING_RISKS | {look.OPTIONS_UNKNOWN.code}
    )
    assert (look._BUSY_RISKS | look._IDLE_RISKS) - {"keepalive-exceeds-path-idle"} == UNPROTECTED
    assert watch_codes >= UNPROTECTED


def _sample_names(query: str) -> set[str]:
    return set(re.findall(r"\b(?:tcpecho|process|python)_[a-z0-9_]+\b", query))


@functools.cache
def process_names() -> frozenset[str]:
    """What tcpecho's own registry adds to any /metrics: the process collector's names."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(metrics.new_registry()).decode()
    return frozenset(
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
    )


def _query_problems(where: str, query: str) -> list[str]:
    used = _sample_names(query)
    unknown = used - set(CONTRACT) - process_names()
    if not used & set(CONTRACT):
        return [f"{where}: reads none of the agent's metrics"]
    if unknown:
        return [f"{where}: no such metric: {sorted(unknown)}"]
    known_labels = TARGET_LABELS.union(*(CONTRACT.get(name, frozenset()) for name in used))
    grouped = re.findall(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)", query)
    labels = {label.strip() for group in grouped for label in group.split(",") if label.strip()}
    matchers = re.findall(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"', query)
    labels |= {label for label, _, _ in matchers}
    problems = [f"{where}: no such label: {label}" for label in sorted(labels - known_labels)]
    for label, operator, value in matchers:
        allowed = LABEL_VALUES.get(label)
        if allowed is not None and operator == "=" and value not in allowed:
            problems.append(f"{where}: {label}={value!r} never exported")
    if "$" in as_prometheus_sees_it(query):
        problems.append(f"{where}: a variable Prometheus would not know: {query!r}")
    return problems


def test_every_query_reads_the_agents_metrics_and_labels() -> None:
    queries = [(name, rule["expr"]) for name, rule in rules().items()] + dashboard_queries()
    problems = [problem for where, query in queries for problem in _query_problems(where, query)]
    assert problems == []


def test_the_dashboard_shows_every_metric_of_the_contract() -> None:
    used = set().union(*(_sample_names(query) for _, query in dashboard_queries()))
    histogram = {"tcpecho_node_snapshot_duration_seconds_bucket"}
    assert set(CONTRACT) - used <= {
        "tcpecho_node_snapshot_duration_seconds_sum",
        "tcpecho_node_snapshot_duration_seconds_count",
    }
    assert histogram <= used
    titles = [panel["title"] for panel in dashboard()["panels"]]
    for topic in ("Stuck", "Longest stuck", "Soonest give-up", "at risk by code", "Agent"):
        assert any(topic.lower() in title.lower() for title in titles), topic


def test_the_dashboard_is_grafana_json_with_panels_that_do_not_overlap() -> None:
    board = dashboard()
    assert board["uid"] == NAME
    check_grafana_board(board)


# -- promtool ------------------------------------------------------------------------------


@requires_promtool
def test_promtool_accepts_the_rule(tmp_path: Path) -> None:
    write_yaml(tmp_path / "rules.yaml", rule_object()["spec"])
    checked = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(rules())} rules found" in checked


@requires_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    queries = dashboard_queries()
    records = [
        {"record": f"tcpecho_node_dashboard:query_{number}", "expr": as_prometheus_sees_it(query)}
        for number, (_, query) in enumerate(queries)
    ]
    write_yaml(tmp_path / "dashboard.yaml", {"groups": [{"name": "dashboard", "rules": records}]})
    checked = run_promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(queries)} rules found" in checked


def series(metric: str, labels: dict[str, str], values: str) -> Obj:
    inside = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{inside}}}", "values": values}


def expect(at: str, alert: str, *alerts: Obj) -> Obj:
    return {"eval_time": at, "alertname": alert, "exp_alerts": list(alerts)}


def fired(labels: dict[str, str], summary: str, description: str) -> Obj:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description},
    }


def run_rule_tests(
    tmp_path: Path, interval: str, input_series: list[Obj], tests: list[Obj]
) -> None:
    """promtool's unit tests of the rule, scraped and evaluated every ``interval``."""
    write_yaml(tmp_path / "rules.yaml", rule_object()["spec"])
    unit = {"interval": interval, "input_series": input_series, "alert_rule_test": tests}
    write_yaml(
        tmp_path / "test.yaml",
        {"rule_files": ["rules.yaml"], "evaluation_interval": interval, "tests": [unit]},
    )
    assert "SUCCESS" in run_promtool("test", "rules", "test.yaml", cwd=tmp_path)


# Series as the chart's kubernetes-pods job (honor_labels) or the PodMonitor stores them: the
# agent's labels, then the target's; a host process's series have no namespace or pod.
WORKER = {"instance": "10.244.1.9:9100", "job": "kubernetes-pods", "node": "kind-worker"}
CONTROL_PLANE = {
    "instance": "10.244.0.4:9100",
    "job": "kubernetes-pods",
    "node": "kind-control-plane",
}
AGENT_POD = {"namespace": NAMESPACE, "pod": f"{NAME}-x7k2p", **WORKER}


def description(alert: str) -> str:
    """The alert's description as promtool renders it where it has no template action."""
    text: str = rules()[alert]["annotations"]["description"]
    return text


@requires_promtool
def test_the_stuck_alert_fires_for_a_hang_and_not_for_a_path_that_heals(tmp_path: Path) -> None:
    """Scraped every 15 s: checkout's connection and a host process's stay stuck; cart's is
    stuck 90 s, then recovers at the next retransmission (its series goes stale)."""
    checkout = {"namespace": "shop", "pod": "checkout-7d9f8", **WORKER}
    cart = {"namespace": "shop", "pod": "cart-5c4b6", **WORKER}
    longest, soonest = "tcpecho_node_longest_stuck_seconds", "tcpecho_node_soonest_give_up_seconds"
    look_and_fix = (
        "To bound the wait next time, set a TCP user timeout and keepalive on the program's "
        "sockets: `tcpecho explain --recommend --detect-within 30s` gives the values, with "
        "`--stack libpq|redis-py|go|python-socket` in your client library's words."
    )
    peer_gone = (
        "Its peer stopped acknowledging: the kernel keeps retransmitting (or probing) and the "
        "program's request waits, as after a force-deleted pod or a lost node."
    )
    stuck_checkout = fired(
        {
            "severity": "warning",
            "namespace": "shop",
            "pod": "checkout-7d9f8",
            "node": "kind-worker",
        },
        "pod shop/checkout-7d9f8: a TCP connection stuck for 2m 15s",
        f"{peer_gone} The kernel gives up on the first of its stuck connections in 13m 14s; the "
        "program then gets ETIMEDOUT. To see which: `tcpecho watch --all-namespaces --stuck "
        f"--once` in the node agent's pod on kind-worker. {look_and_fix}",
    )
    stuck_host = fired(
        {"severity": "warning", "node": "kind-control-plane"},
        "a host process: a TCP connection stuck for 2m 15s",
        f"{peer_gone} To see which: `tcpecho watch --all-namespaces --stuck --once` in the node "
        f"agent's pod on kind-control-plane. {look_and_fix}",
    )
    run_rule_tests(
        tmp_path,
        "15s",
        [
            series(longest, checkout, "0+15x12"),
            series(soonest, checkout, "929-15x12"),
            series(longest, cart, "0+15x6 stale"),
            series(soonest, cart, "929-15x6 stale"),
            series(longest, CONTROL_PLANE, "0+15x12"),
        ],
        [
            expect("1m", "TcpechoConnectionStuck"),  # 60 s: not past the threshold
            expect("2m", "TcpechoConnectionStuck"),  # past it since 75 s: pending
            expect("2m15s", "TcpechoConnectionStuck", stuck_checkout, stuck_host),
        ],
    )


UNBOUNDED_SET_BOTH = (
    "Set both on the client's sockets: `tcpecho explain --recommend --detect-within 30s` gives "
    "the values, with `--stack libpq|redis-py|go|python-socket` in your client library's "
    "words; `tcpecho watch --all-namespaces --at-risk --once` in the node agent's pod lists "
    "the connections."
)
UNPROTECTED_WORDS = {
    "no-bound": "Its connections set neither a TCP user timeout nor keepalive: if the Service's "
    "pod vanishes (force-deleted, its node lost), a request hangs about 15.5 min (tcp_retries2) "
    "and an idle connection is never noticed dead.",
    "keepalive-without-user-timeout": "Its connections set no TCP user timeout: if the "
    "Service's pod vanishes (force-deleted, its node lost) while a request waits, it hangs "
    "about 15.5 min (tcp_retries2), keepalive or not.",
    "user-timeout-without-keepalive": "Its connections have a TCP user timeout but no "
    "keepalive: while idle, a Service pod that vanished (force-deleted, its node lost) is not "
    "noticed until the next request.",
}


def unprotected(pod: dict[str, str], code: str, count: int) -> Obj:
    who = f"pod {pod['namespace']}/{pod['pod']}" if "pod" in pod else "a host process"
    labels: dict[str, str] = {"severity": "info", "code": code}
    labels.update({k: pod[k] for k in ("namespace", "pod") if k in pod})
    return fired(
        labels,
        f"{who}: connections to a Service that will hang if its pod vanishes ({code}, up to "
        f"{count} at once)",
        f"{UNPROTECTED_WORDS[code]} {UNBOUNDED_SET_BOTH}",
    )


@requires_promtool
def test_the_service_alert_fires_for_pods_that_stay_unprotected(tmp_path: Path) -> None:
    """Scraped every minute for 40: checkout and a host process at risk throughout, worker
    only while a request waits (one minute in five); batch fixed after 4 minutes; and what
    must never fire: a peer outside the Services, a connect in progress, options unknown."""
    checkout = {"namespace": "shop", "pod": "checkout-7d9f8", **WORKER}
    worker = {"namespace": "jobs", "pod": "worker-0", **WORKER}
    batch = {"namespace": "jobs", "pod": "batch-q2k", **WORKER}

    def at_risk(pod: dict[str, str], code: str, peer: str, values: str) -> Obj:
        labels = {**pod, "code": code, "peer": peer}
        return series("tcpecho_node_at_risk_connections", labels, values)

    run_rule_tests(
        tmp_path,
        "1m",
        [
            at_risk(checkout, "no-bound", "service", "2x40"),
            at_risk(checkout, "no-bound", "other", "5x40"),
            at_risk(checkout, "slow-connect", "service", "1x40"),
            at_risk(worker, "keepalive-without-user-timeout", "service", "1 stale _x3 " * 8),
            at_risk(worker, "options-unknown", "service", "3x40"),
            at_risk(batch, "user-timeout-without-keepalive", "service", "1x3 stale"),
            at_risk(CONTROL_PLANE, "user-timeout-without-keepalive", "service", "1x40"),
        ],
        [
            expect("14m", "TcpechoUnprotectedServiceConnections"),  # pending since 0
            expect(
                "16m",
                "TcpechoUnprotectedServiceConnections",
                unprotected(checkout, "no-bound", 2),
                unprotected(worker, "keepalive-without-user-timeout", 1),
                unprotected(CONTROL_PLANE, "user-timeout-without-keepalive", 1),
            ),
        ],
    )


def agent_alert(labels: dict[str, str], summary: str, description: str) -> Obj:
    """An alert on the agent's own metrics: every label of its series, the scrape's too."""
    return fired({"severity": "warning", **labels}, summary, description)


@requires_promtool
def test_the_agent_errors_alert_fires_when_a_source_keeps_failing(tmp_path: Path) -> None:
    """Scraped every minute: one agent fails to read pod-logs every minute, another failed to
    read a cgroup once."""
    other_agent = {"namespace": NAMESPACE, "pod": f"{NAME}-m4r9t", **CONTROL_PLANE}
    errors = "tcpecho_node_errors_total"
    failing = {**AGENT_POD, "source": "pod-logs"}
    summary = f"tcpecho node agent {NAMESPACE}/{NAME}-x7k2p: reading pod-logs keeps failing"
    words = (
        "The agent goes on without pod-logs, so its metrics for this node miss what that source "
        f"gives. Look in its log: kubectl -n {NAMESPACE} logs {NAME}-x7k2p."
    )
    run_rule_tests(
        tmp_path,
        "1m",
        [
            series(errors, failing, "0+1x30"),
            series(errors, {**other_agent, "source": "cgroup"}, "0 1x30"),
        ],
        [
            expect("15m", "TcpechoNodeAgentErrors"),  # failing since 1m: pending
            expect("17m", "TcpechoNodeAgentErrors", agent_alert(failing, summary, words)),
            expect("30m", "TcpechoNodeAgentErrors", agent_alert(failing, summary, words)),
        ],
    )


@requires_promtool
def test_the_agent_skip_alert_fires_when_a_namespace_stays_unreadable(tmp_path: Path) -> None:
    """Scraped every minute, 12 snapshots a minute (--interval 5s): one agent skips a namespace
    in every snapshot (and many vanished processes, which is churn); another skipped one
    namespace of a deleted pod every five minutes."""
    other_agent = {"namespace": NAMESPACE, "pod": f"{NAME}-m4r9t", **CONTROL_PLANE}
    skipped, snapshots = (
        "tcpecho_node_skipped_total",
        "tcpecho_node_snapshot_duration_seconds_count",
    )
    summary = (
        f"tcpecho node agent {NAMESPACE}/{NAME}-x7k2p: network namespaces skipped, 1 per snapshot"
    )
    words = (
        " ".join(description("TcpechoNodeAgentSkippingNamespaces").split())
        .replace("{{ $labels.namespace }}", NAMESPACE)
        .replace("{{ $labels.pod }}", f"{NAME}-x7k2p")
    )
    assert "{{" not in words, "only the agent's namespace and pod are templated there"
    run_rule_tests(
        tmp_path,
        "1m",
        [
            series(snapshots, AGENT_POD, "0+12x40"),
            series(skipped, {**AGENT_POD, "what": "namespace"}, "0+12x40"),
            series(skipped, {**AGENT_POD, "what": "process"}, "0+200x40"),
            series(snapshots, other_agent, "0+12x40"),
            # One every five minutes: 1/60 per snapshot.
            series(
                skipped,
                {**other_agent, "what": "namespace"},
                " ".join(f"{m // 5}" for m in range(41)),
            ),
        ],
        [
            expect("15m", "TcpechoNodeAgentSkippingNamespaces"),  # since 1m: pending
            *(
                expect(
                    at, "TcpechoNodeAgentSkippingNamespaces", agent_alert(AGENT_POD, summary, words)
                )
                for at in ("17m", "40m")
            ),
        ],
    )
