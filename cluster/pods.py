"""Every overlay's pods, played by podman, force-deleted and measured by the lab, with the node
agent's pod beside them, checked on what it exports.

``python -m cluster.pods --image IMAGE`` (``scripts/nox -s pods`` builds the image first)
renders each overlay of ``manifests/overlays`` with ``kubectl kustomize``, through a
kustomization that points the manifests' image at the build (kustomize's ``images``, as a
user points them at one), makes the Pods the Deployments' ReplicaSets would create
(``cluster/controllers.py``) and hands them to ``podman kube play`` (``cluster/podman.py``),
one case's pods at a time, in the case's node: the lab wires each pod's network namespace as
a CNI plugin would, the server behind the lab's ClusterIP, whose Service name the client's
``/etc/hosts`` resolves (the engine's base hosts file: the cluster DNS's answers), then starts
the server's and the client's containers through podman and reads their logs from it
(``tcpecho.lab.pods``). The lab then applies ``force-delete``: the route goes, the link goes,
then podman force-deletes the server's pod (``podman pod rm -f -t 0``), so the FIN is lost as
in the field; it measures from the client's own JSON log, as it does for its profiles
(``tcpecho.lab.run_matrix``, quick budget).

The prediction comes from the client container's ``TCPECHO_CLIENT_*`` variables, read by the
client's own declarations (``client_settings_from_environment``), never from a table per
overlay, and the container podman created must carry the same values. Every overlay runs
its client as the manifest has it (a request every 5 s: active); an overlay whose client
keeps connections alive (keepalive on) runs idle too, rendered as a user would make it: a
kustomization over the overlay that patches the client's ``TCPECHO_CLIENT_INTERVAL`` to
``1h``.

The pods run on a node laid out as a kubelet lays one out (``cluster/node.py``): each in its
kubelet cgroup, with its pod log directory and container log link. Beside them, the node
agent's pod, played by podman from ``kubectl kustomize manifests/node-agent``'s DaemonSet
(``cluster/agent.py``), reads those log directories and is scraped all along; for each case,
what it exported of the client pod after the force-delete is checked against the client's
settings and the model. The cases and the agent's figures go to ``out/pods.json``, with the
engine that started each pod; the exit status is 1 when a case could not run, its
measurement is outside the prediction, or a check of the agent failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cluster import agent, controllers, node, podman
from cluster.agent import AgentError, AgentPod, CaseView, Check, ClientPod, Metrics, Privileges
from cluster.controllers import Obj, PodError
from cluster.node import Node, NodeError, Placed
from cluster.podman import EngineError, Played, Podman
from tcpecho.experiment import Case, Fault, Profile, Result
from tcpecho.lab import StoppedError, report
from tcpecho.lab.report import RunInfo
from tcpecho.model import Activity
from tcpecho.process import alive

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS_DIR = ROOT / "manifests" / "overlays"
INTERVAL_VARIABLE = "TCPECHO_CLIENT_INTERVAL"
IDLE_INTERVAL = "1h"
NODE_AGENT_DIR = ROOT / "manifests" / "node-agent"
MANIFEST_IMAGE = "localhost/tcpecho"  # the manifests' image, without its tag
TOOLS = ("podman", "runc", "buildah", "kubectl", "nsenter", "ip", "nft")
CLUSTER_DOMAIN = "cluster.local"

KUSTOMIZATION = """# The overlay with its image pointed at the build{idle}.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {overlay}
images:
  - name: {manifest_image}
    newName: {name}
    newTag: {tag}
"""
IDLE_PATCH = """patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: {client}
      spec:
        template:
          spec:
            containers:
              - name: {container}
                env:
                  - name: {variable}
                    value: {interval}
"""


@dataclass(frozen=True)
class PodCase:
    """One overlay in one mode: its two pods as their controllers create them."""

    overlay: str
    mode: str  # "active" or "idle"
    service: str  # the Service's name, which the client resolves
    server: Obj
    client: Obj

    @property
    def namespace(self) -> str:
        return str(self.client["metadata"]["namespace"])

    @property
    def client_environment(self) -> dict[str, str]:
        return controllers.literal_environment(controllers.container_of(self.client))


# -- rendering -------------------------------------------------------------------------------


def render(kubectl: str, directory: Path) -> list[Obj]:
    """The kustomization's objects, as ``kubectl apply -k`` would send them."""
    import yaml  # installed by the session that runs this

    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], check=False, capture_output=True, text=True
    )
    if rendered.returncode != 0:
        said = rendered.stderr.strip().splitlines()[-1:] or [f"status {rendered.returncode}"]
        raise PodError(f"kubectl kustomize {directory}: {said[0]}")
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]


def split_image(image: str) -> tuple[str, str]:
    """An image reference's name and tag (``latest`` when it has none)."""
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        return image, "latest"
    return name, tag


def render_overlay(
    kubectl: str,
    overlay: Path,
    image: str,
    workdir: Path,
    idle_client: tuple[str, str] | None = None,
) -> list[Obj]:
    """The overlay with its image pointed at ``image``; with ``idle_client`` (the client's
    Deployment and container), its interval patched to an hour. Kustomize takes only
    relative paths to other kustomizations, so the path is made relative."""
    directory = workdir / f"{'idle' if idle_client else 'active'}-{overlay.name}"
    directory.mkdir(parents=True, exist_ok=True)
    name, tag = split_image(image)
    text = KUSTOMIZATION.format(
        idle=", its client idle" if idle_client else "",
        overlay=os.path.relpath(overlay.resolve(), directory.resolve()),
        manifest_image=MANIFEST_IMAGE,
        name=name,
        tag=tag,
    )
    if idle_client is not None:
        text += IDLE_PATCH.format(
            client=idle_client[0],
            container=idle_client[1],
            variable=INTERVAL_VARIABLE,
            interval=IDLE_INTERVAL,
        )
    (directory / "kustomization.yaml").write_text(text)
    objects = render(kubectl, directory)
    for workload in (o for o in objects if o["kind"] in controllers.WORKLOADS):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container["image"] != f"{name}:{tag}":
                raise PodError(
                    f"{overlay.name}: {container['name']!r} runs {container['image']!r}, not "
                    f"{MANIFEST_IMAGE} (which the session points at the build)"
                )
    return objects


def service_and_pods(objects: Sequence[Obj]) -> tuple[Obj, Obj, Obj]:
    """The one Service, the Deployment it selects (the server) and the other (the client),
    checked against the lab's topology: one ClusterIP, DNAT to the same port on the pod."""
    from tcpecho.lab import topology as net

    services = [o for o in objects if o["kind"] == "Service"]
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    if len(services) != 1 or len(deployments) != 2:
        raise PodError("the lab runs one Service in front of one server and one client")
    service = services[0]
    selector = service["spec"].get("selector") or {}

    def selected(deployment: Obj) -> bool:
        labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    servers = [d for d in deployments if selected(d)]
    if len(servers) != 1:
        raise PodError(f"the Service selects {len(servers)} Deployments, not one server")
    server = servers[0]
    client = next(d for d in deployments if d is not server)
    ports = service["spec"]["ports"]
    container_ports = {
        p.get("name"): p["containerPort"]
        for c in server["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports") or []
    }
    target = ports[0].get("targetPort", ports[0]["port"])
    target_port = container_ports.get(target) if isinstance(target, str) else target
    if len(ports) != 1 or ports[0]["port"] != net.SERVICE_PORT or target_port != net.SERVICE_PORT:
        raise PodError(
            f"the lab's ClusterIP forwards port {net.SERVICE_PORT} to the same port on the "
            f"server pod; the Service has {ports}"
        )
    return service, server, client


def pod_case(overlay: str, mode: str, objects: Sequence[Obj]) -> PodCase:
    """The overlay's server and client Pods, as their ReplicaSets would create them."""
    service, server, client = service_and_pods(objects)
    namespace = f"tcpecho-{overlay}"  # as cluster/reproduce.py applies each overlay
    return PodCase(
        overlay,
        mode,
        service["metadata"]["name"],
        controllers.pod_of(server, namespace=namespace),
        controllers.pod_of(client, namespace=namespace),
    )


def plan(
    kubectl: str,
    overlays: Sequence[str],
    image: str,
    workdir: Path,
    directory: Path = OVERLAYS_DIR,
) -> list[PodCase]:
    """Every overlay active; idle too where its client's settings keep connections alive."""
    from tcpecho.cli import client_settings_from_environment

    cases = []
    for name in overlays:
        objects = render_overlay(kubectl, directory / name, image, workdir)
        active = pod_case(name, "active", objects)
        cases.append(active)
        tcp, _ = client_settings_from_environment(active.client_environment)
        if tcp.keepalive_enabled:
            _, _, client = service_and_pods(objects)
            container = controllers.container_of(active.client)["name"]
            idle_client = (client["metadata"]["name"], container)
            idle = render_overlay(kubectl, directory / name, image, workdir, idle_client)
            cases.append(pod_case(name, "idle", idle))
    return cases


def cluster_dns(cases: Sequence[PodCase]) -> dict[str, list[str]]:
    """What the cluster DNS would answer for each case's Service: its names at the lab's
    ClusterIP (every case's node has its Service there)."""
    from tcpecho.lab import topology as net

    names: list[str] = []
    for case in cases:
        service, namespace = case.service, case.namespace
        for name in (
            f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}",
            f"{service}.{namespace}.svc",
            service,
        ):
            if name not in names:
                names.append(name)
    return {net.CLUSTER_IP: names}


# -- running ---------------------------------------------------------------------------------


def placed(played: Played, pod: Obj) -> Placed:
    """Where the kubelet would put the played pod's container on the node."""
    return Placed(
        played.namespace,
        played.pod,
        str(uuid.uuid4()),
        played.container,
        played.container_id,
        controllers.qos_class(pod),
    )


class PlayedCase:
    """A case's pods on podman (``tcpecho.lab.pods.CasePods``), their infra containers
    holding their network namespaces, each container joining its kubelet cgroup once
    started.

    Each pod's podman runs in a network namespace of its own, named after the case's node
    (``<node>-server``, ``<node>-client``), standing for the host network of the pod's own
    node: podman holds a pod's containerPorts open there, and the two pods both have port
    8001 (as the manifests' anti-affinity keeps them on two nodes)."""

    def __init__(self, engine: Podman, lab_node: Node, case: PodCase, node_ns: str) -> None:
        self.engine, self.node, self.case = engine, lab_node, case
        self.hosts = {role: f"{node_ns}-{role}" for role in ("server", "client")}
        self.started: dict[str, dict[str, Any]] = {}  # how each container was started
        for name in self.hosts.values():
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        try:
            self.server = engine.play(case.server, self.hosts["server"])
            self.client = engine.play(case.client, self.hosts["client"])
            self.places = {
                "server": placed(self.server, case.server),
                "client": placed(self.client, case.client),
            }
            for place in self.places.values():
                lab_node.add_pod(place)
            self._check_environment()
        except BaseException:
            self.remove()
            raise

    def _check_environment(self) -> None:
        """The client container podman made carries the values the prediction read."""
        made = agent.describe(self.engine.inspect(self.client.container_id))["env"]
        for name, value in self.case.client_environment.items():
            if made.get(name) != value:
                raise EngineError(
                    f"podman gave the client {name}={made.get(name)!r}, the manifest {value!r}"
                )

    @property
    def client_netns_pid(self) -> int:
        return self.client.netns_pid

    @property
    def server_netns_pid(self) -> int:
        return self.server.netns_pid

    def _start(self, role: str, played: Played) -> int:
        pid = self.engine.start(played, played.container_id, self.hosts[role])
        try:
            self.node.join(self.places[role], pid)
        except NodeError:
            if not alive(pid):  # it exited before it could be moved: say why
                raise self.engine.ended(played) from None
            raise
        self.started[role] = agent.describe(self.engine.inspect(played.container_id))
        return pid

    def start_server(self) -> int:
        return self._start("server", self.server)

    def server_log(self) -> list[str]:
        return self.engine.log_command(self.server)

    def start_client(self) -> int:
        return self._start("client", self.client)

    def client_log(self) -> list[str]:
        return self.engine.log_command(self.client)

    def force_delete_server(self) -> None:
        self.engine.remove(self.server)

    def remove(self) -> None:
        for role in ("client", "server"):
            played = getattr(self, role, None)
            if played is not None:
                with contextlib.suppress(EngineError):  # the engine's close tries again
                    self.engine.remove(played)
        for name in self.hosts.values():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


class PodsOnPodman:
    """The lab's ``PodMaker`` for the session: each case's pods, played as it starts."""

    def __init__(self, engine: Podman, lab_node: Node, cases: Sequence[PodCase]) -> None:
        self.engine, self.node = engine, lab_node
        self.cases = {(c.overlay, c.mode): c for c in cases}
        self.played: dict[tuple[str, str], PlayedCase] = {}

    def __call__(self, case: Case, node_ns: str) -> PlayedCase:
        key = (case.profile.name, str(case.activity))
        self.played[key] = played = PlayedCase(self.engine, self.node, self.cases[key], node_ns)
        return played


def profiles(cases: Sequence[PodCase]) -> list[Profile]:
    """The lab's profiles: each case's settings from its client's environment."""
    from tcpecho.cli import client_settings_from_environment

    chosen = []
    for case in cases:
        tcp, deadlines = client_settings_from_environment(case.client_environment)
        chosen.append(Profile(case.overlay, tcp, deadlines, activities=(Activity(case.mode),)))
    return chosen


def run(cases: Sequence[PodCase], maker: PodsOnPodman) -> tuple[list[Result], RunInfo]:
    """Every case in one lab run, in parallel, with the lab's quick budget."""
    from tcpecho.lab import KernelBudget, LabConfig, run_matrix

    config = LabConfig(
        faults=(Fault.FORCE_DELETE,),
        profiles=tuple(profiles(cases)),
        budget=KernelBudget(quick=True),
        pods=maker,
    )
    return run_matrix(config)


@dataclass
class AgentRun:
    """The node agent's pod in the session: how it ran, and every scrape of it."""

    pod: AgentPod
    started: dict[str, Any]
    placed: Placed | None
    privileges: Privileges | None
    exit_status: int | None
    scrapes: list[Metrics]
    scrape_failures: int


@dataclass
class SessionRun:
    """What the session ran: the cases' results, the engine, each case's pods, the agent."""

    results: list[Result]
    info: RunInfo
    engine: str
    played: dict[tuple[str, str], PlayedCase]
    agent: AgentRun


def run_with_agent(
    cases: Sequence[PodCase], pod: AgentPod, services: dict[str, list[str]], workdir: Path
) -> SessionRun:
    """The lab's run of every case, its pods on podman, the agent's pod beside them and
    scraped all along; everything removed afterwards."""
    # What a session that was killed left: its pods, cgroups, log entries, namespaces.
    podman.remove_stale()
    node.remove_stale()
    agent.remove_stale(node.PREFIX)
    with (
        Node() as lab_node,
        Podman(workdir / "podman", services) as engine,
    ):
        maker = PodsOnPodman(engine, lab_node, cases)
        with (
            agent.started(pod, engine, lab_node, node.PREFIX) as running,
            agent.Scraper(running) as scraper,
        ):
            results, info = run(cases, maker)
        scrapes = [agent.parse(at, text) for at, text in scraper.scrapes]
        ran = AgentRun(
            pod,
            running.started,
            running.placed,
            running.privileges,
            running.exit_status,
            scrapes,
            scraper.failures,
        )
        return SessionRun(results, info, engine.version, maker.played, ran)


# -- the agent's checks ------------------------------------------------------------------------


def client_pod(case: PodCase) -> ClientPod:
    return ClientPod(case.namespace, case.client["metadata"]["name"], case.client_environment)


def views(cases: Sequence[PodCase], results: Sequence[Result], ran: AgentRun) -> list[CaseView]:
    """What the agent exported of each case's client pod, in the results' order."""
    by_case = {(c.overlay, c.mode): c for c in cases}
    judged = []
    for result in results:
        case = by_case[result.case.profile.name, str(result.case.activity)]
        judged.append(agent.judge(client_pod(case), case.mode == "active", result, ran.scrapes))
    return judged


def agent_checks(ran: AgentRun) -> list[Check]:
    """The agent's pod ran as the DaemonSet asks: root with exactly its capabilities and no
    new privileges, in the host's PID namespace, and stopped on SIGTERM."""
    given = ran.privileges
    if given is None:
        return [Check("the agent ran", False, "no privileges read: it never became ready")]
    asked = ran.pod.capabilities
    sets = (given.effective, given.permitted, given.bounding)
    return [
        Check(
            "root with exactly its capabilities",
            given.uid == 0
            and all(found == asked for found in sets)
            and not (given.inheritable or given.ambient)
            and given.no_new_privs,
            f"uid {given.uid}, effective {', '.join(given.effective) or 'none'}, "
            f"inheritable {', '.join(given.inheritable) or 'none'}, "
            f"ambient {', '.join(given.ambient) or 'none'}, no_new_privs {given.no_new_privs}",
        ),
        Check(
            "in the host's PID namespace",
            given.pid_namespace_levels == 1 and given.sees_host_pids,
            f"{given.pid_namespace_levels} PID namespace level(s); host's PIDs seen: "
            f"{given.sees_host_pids}",
        ),
        Check("stopped on SIGTERM", ran.exit_status == 0, f"exit status {ran.exit_status}"),
    ]


# -- the report ------------------------------------------------------------------------------


def to_json(
    cases: Sequence[PodCase], ran: SessionRun, image: str, seen: Sequence[CaseView]
) -> dict[str, Any]:
    """``out/pods.json``: one entry per case, with the engine and how it started the case's
    containers, and what the agent exported of the client; the agent's pod and its checks."""
    by_case = {(c.overlay, c.mode): c for c in cases}
    entries = []
    for result, view in zip(ran.results, seen, strict=True):
        key = (result.case.profile.name, str(result.case.activity))
        case, played = by_case[key], ran.played.get(key)
        prediction = result.prediction
        entries.append(
            {
                "overlay": case.overlay,
                "fault": str(result.case.fault),
                "mode": case.mode,
                "image": image,
                "engine": ran.engine,
                "measured_s": result.measured_s,
                "measured_clock": result.measured_clock,
                "prediction": None
                if prediction is None
                else {
                    "low_s": report.seconds_or_none(prediction.low_s),
                    "high_s": report.seconds_or_none(prediction.high_s),
                    "never": prediction.never,
                    "clock": prediction.clock,
                    "mechanism": str(prediction.mechanism),
                    "errnos": list(prediction.errnos),
                },
                "errno": result.errno,
                "retransmissions": result.retransmissions,
                "quick": result.quick,
                "verdict": str(result.verdict),
                "matches_model": result.matches,
                "error": result.error,
                "client": started_json(case.client, played, "client"),
                "server": started_json(case.server, played, "server"),
                "agent": view_json(view, result.fault_at),
            }
        )
    return {
        "image": image,
        "engine": ran.engine,
        "kernel_release": platform.release(),
        "agent": agent_json(ran.agent, ran.engine),
        "cases": entries,
    }


def started_json(pod: Obj, played: PlayedCase | None, role: str) -> dict[str, Any]:
    """A case's pod: its name, and how the engine started its container (when it did)."""
    started = {} if played is None else played.started.get(role, {})
    return {"pod": pod["metadata"]["name"], **started}


def view_json(view: CaseView, fault_at: float | None) -> dict[str, Any]:
    """What the agent exported of a case's client pod; times from the fault."""

    def since_fault(at: float | None) -> float | None:
        return None if at is None or fault_at is None else round(at - fault_at, 3)

    return {
        "namespace": view.namespace,
        "pod": view.pod,
        "window_s": None if view.window is None else [since_fault(t) for t in view.window],
        "scraped_s": since_fault(view.scraped_at),
        **(view.figures.as_json() if view.figures is not None else {}),
        "checks": [check_json(check) for check in view.checks],
        "ok": view.ok,
    }


def check_json(check: Check) -> dict[str, Any]:
    return {"check": check.what, "ok": check.ok, "detail": check.detail}


def agent_json(ran: AgentRun, engine: str) -> dict[str, Any]:
    """The agent's pod: how the engine started it, what it was given, what it did."""
    last = ran.scrapes[-1] if ran.scrapes else None
    given = ran.privileges
    return {
        "pod": ran.pod.name,
        "engine": engine,
        **ran.started,
        "namespace": ran.pod.namespace,
        "uid": None if ran.placed is None else ran.placed.pod_uid,
        "qos_class": None if ran.placed is None else ran.placed.qos_class,
        "cgroup": None if ran.placed is None else node.container_cgroup(ran.placed),
        "host_pid": bool(ran.pod.pod["spec"].get("hostPID")),
        "capabilities": list(ran.pod.capabilities),
        "host_paths": [list(pair) for pair in ran.pod.host_paths],
        "metrics": f"http://{agent.AGENT_POD_IP}:{ran.pod.port}{ran.pod.path}",
        "service_cidrs": list(ran.pod.service_cidrs),
        "privileges": None if given is None else dataclasses.asdict(given),
        "exit_status": ran.exit_status,
        "scrapes": len(ran.scrapes),
        "scrape_failures": ran.scrape_failures,
        "snapshots": last.snapshots if last else 0,
        "snapshot_durations_s": agent.snapshot_durations(ran.scrapes),
        "namespaces": None if last is None else int(last.total("tcpecho_node_namespaces")),
        "skipped": {} if last is None else counted(last, "tcpecho_node_skipped_total", "what"),
        "errors": {} if last is None else counted(last, "tcpecho_node_errors_total", "source"),
        "checks": [check_json(check) for check in agent_checks(ran)],
    }


def counted(metrics: Metrics, name: str, label: str) -> dict[str, int]:
    return {labels[label]: int(value) for labels, value in metrics.values(name)}


def markdown(results: Sequence[Result]) -> str:
    """The pods table for the README: the lab's columns, as markdown."""
    columns = ("profile", "mode", "expected", "measured", "error", "verdict", "model")
    header = ["overlay", *columns[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        cells = report.row(result)
        cells["profile"] = f"`{cells['profile']}`"
        lines.append("| " + " | ".join(cells[column] for column in columns) + " |")
    return "\n".join(lines)


def agent_markdown(results: Sequence[Result], seen: Sequence[CaseView]) -> str:
    """What the agent exported of each client pod, after the force-delete, as markdown."""
    header = ("overlay", "mode", "client pod", "connections", "stuck", "stuck for",
              "gives up in", "agent's give-up", "model", "at risk", "agent")  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result, view in zip(results, seen, strict=True):
        figures, prediction = view.figures, result.prediction
        model = "" if prediction is None else prediction.describe()
        cells = [f"`{result.case.profile.name}`", str(result.case.activity), f"`{view.pod}`"]
        if figures is None:
            cells += ["", "", "", "", "", model, "", "fail"]
        else:
            cells += [
                ", ".join(f"{state} {n}" for state, n in sorted(figures.connections.items())),
                str(figures.stuck),
                seconds(figures.longest_stuck_s),
                seconds(figures.soonest_give_up_s),
                seconds(figures.gives_up_after_s),
                model,
                ", ".join(f"{k} {n}" for k, n in sorted(figures.at_risk.items())) or "none",
                "ok" if view.ok else "fail",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def failed_checks(ran: AgentRun, seen: Sequence[CaseView]) -> list[str]:
    """Every check that failed, said in one line each."""
    said = [f"agent: {c.what}: {c.detail}" for c in agent_checks(ran) if not c.ok]
    for view in seen:
        said += [
            f"{view.namespace}/{view.pod}: {c.what}: {c.detail}" for c in view.checks if not c.ok
        ]
    return said


# -- the command -----------------------------------------------------------------------------


def missing() -> str | None:
    """Why the pods cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, cgroups, podman)"
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"needs {', '.join(absent)} on PATH" if absent else None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.pods", description=__doc__)
    parser.add_argument("--image", required=True, help="the built image (buildah's name)")
    parser.add_argument(
        "--overlay", action="append", help="an overlay to run, repeatable (default: all)"
    )
    parser.add_argument("--json", type=Path, default=Path("out/pods.json"), help="where to write")
    parser.add_argument("--kubectl", default="kubectl", help="kubectl with kustomize 5")
    parser.add_argument(
        "--overlays-dir",
        type=Path,
        default=OVERLAYS_DIR,
        help="where the overlays are (default: the checkout's manifests/overlays)",
    )
    parser.add_argument(
        "--node-agent-dir",
        type=Path,
        default=NODE_AGENT_DIR,
        help="the node agent's kustomization (default: the checkout's manifests/node-agent)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    reason = missing()
    if reason is not None:
        print(f"python -m cluster.pods: {reason}", file=sys.stderr)
        return 2
    if not args.overlays_dir.is_dir():
        print(f"python -m cluster.pods: no overlays in {args.overlays_dir}", file=sys.stderr)
        return 2
    overlays = args.overlay or sorted(p.name for p in args.overlays_dir.iterdir())
    workdir = Path(tempfile.mkdtemp(prefix="tcpecho-pods-"))
    try:
        cases = plan(args.kubectl, overlays, args.image, workdir, args.overlays_dir)
        agent_dir = workdir / "node-agent"
        pod = agent.agent_pod(
            render_overlay(args.kubectl, args.node_agent_dir, args.image, agent_dir)
        )
        ran = run_with_agent(cases, pod, cluster_dns(cases), workdir)
    except (PodError, NodeError, click.ClickException) as error:
        print(f"python -m cluster.pods: {error}", file=sys.stderr)
        return 2
    except (AgentError, EngineError) as error:
        print(f"python -m cluster.pods: {error}", file=sys.stderr)
        return 1
    except StoppedError as stopped:
        return stopped.status
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return write_report(args, cases, ran)


def write_report(args: argparse.Namespace, cases: Sequence[PodCase], ran: SessionRun) -> int:
    """The lab's table, the agent's, ``out/pods.json``; the exit status: 1 when a case
    could not run, measured outside its prediction, or a check of the agent failed."""
    seen = views(cases, ran.results, ran.agent)
    print(report.render(ran.results, ran.info))
    document = to_json(cases, ran, args.image, seen)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.json} (pods started by {ran.engine})\n")
    print(f"{markdown(ran.results)}\n\n{agent_markdown(ran.results, seen)}")
    failed = failed_checks(ran.agent, seen)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    matched = all(r.error is None and r.matches for r in ran.results)
    return 0 if matched and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
