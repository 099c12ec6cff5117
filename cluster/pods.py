"""Every overlay's pods run as a kubelet would start them, force-deleted and measured by the lab,
with the node agent's pod beside them, checked on what it exports.

``python -m cluster.pods --image IMAGE`` (``scripts/nox -s pods`` builds the image first)
renders each overlay of ``manifests/overlays`` with ``kubectl kustomize``, turns its server
and client Deployments into the processes a kubelet and its runtime would start
(``cluster/kubelet.py``: the image's root filesystem, ENTRYPOINT/CMD with the container's
``command``/``args``, the container's environment, its user and group, a read-only root where
the manifest asks), and runs them in the lab's pod namespaces: the server pod behind the
lab's ClusterIP, whose Service name the client's ``/etc/hosts`` resolves. The lab then applies
``force-delete`` and measures from the client's own JSON log, as it does for its profiles
(``tcpecho.lab.run_matrix``, quick budget).

The prediction comes from the client container's ``TCPECHO_CLIENT_*`` variables, read by the
client's own declarations (``client_settings_from_environment``), never from a table per
overlay. Every overlay runs its client as the manifest has it (a request every 5 s: active);
an overlay whose client keeps connections alive (keepalive on) runs idle too, rendered as a
user would make it: a kustomization over the overlay that patches the client's
``TCPECHO_CLIENT_INTERVAL`` to ``1h``.

The pods run on a node laid out as a kubelet lays one out (``cluster/node.py``): each in its
kubelet cgroup, with its pod log directory and container log link. Beside them, the node
agent's pod runs from the same image as ``kubectl kustomize manifests/node-agent``'s
DaemonSet has it (``cluster/agent.py``), with those log directories mounted read-only, and is
scraped all along; for each case, what it exported of the client pod after the force-delete
is checked against the client's settings and the model. The cases and the agent's figures go
to ``out/pods.json``; the exit status is 1 when a case could not run, its measurement is
outside the prediction, or a check of the agent failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cluster import agent, kubelet, node
from cluster.agent import AgentError, AgentPod, CaseView, Check, Metrics, Privileges
from cluster.kubelet import Launch, Obj, PodError
from cluster.node import Node, NodeError
from tcpecho.experiment import Fault, Profile, Result
from tcpecho.lab import StoppedError, report
from tcpecho.lab.report import RunInfo
from tcpecho.model import Activity

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS_DIR = ROOT / "manifests" / "overlays"
INTERVAL_VARIABLE = "TCPECHO_CLIENT_INTERVAL"
IDLE_INTERVAL = "1h"
NODE_AGENT_DIR = ROOT / "manifests" / "node-agent"
TOOLS = ("buildah", "kubectl", "unshare", "setpriv", "chroot", "capsh", "hostname", "ip", "nft")

IDLE_KUSTOMIZATION = """\
# The overlay with an idle client, as a user would make it: one request an hour.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {overlay}
patches:
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
    """One overlay in one mode: its two pods as they would start."""

    overlay: str
    mode: str  # "active" or "idle"
    server: Launch
    client: Launch


# -- rendering -------------------------------------------------------------------------------


def render(kubectl: str, directory: Path) -> list[Obj]:
    """The overlay's objects, as ``kubectl apply -k`` would send them."""
    import yaml  # installed by the session that runs this

    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], check=False, capture_output=True, text=True
    )
    if rendered.returncode != 0:
        said = rendered.stderr.strip().splitlines()[-1:] or [f"status {rendered.returncode}"]
        raise PodError(f"kubectl kustomize {directory}: {said[0]}")
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]


def render_idle(kubectl: str, overlay: Path, client: Launch, workdir: Path) -> list[Obj]:
    """The overlay with its client's interval patched to an hour (kustomize takes only
    relative paths to other kustomizations, so the path is made relative)."""
    directory = workdir / f"idle-{overlay.name}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(
        IDLE_KUSTOMIZATION.format(
            overlay=os.path.relpath(overlay.resolve(), directory.resolve()),
            client=client.workload,
            container=client.container,
            variable=INTERVAL_VARIABLE,
            interval=IDLE_INTERVAL,
        )
    )
    return render(kubectl, directory)


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


def pod_case(
    overlay: str, mode: str, objects: Sequence[Obj], image: kubelet.ImageConfig
) -> PodCase:
    """The overlay's server and client as they would start in the lab's pods."""
    from tcpecho.lab import topology as net

    service, server, client = service_and_pods(objects)
    services = {service["metadata"]["name"]: net.CLUSTER_IP}
    namespace = f"tcpecho-{overlay}"  # as cluster/reproduce.py names them
    return PodCase(
        overlay,
        mode,
        kubelet.launch(
            server,
            image,
            kubelet.Place(
                namespace, net.SERVER_IP, host_ip=net.NODE_SERVER_SIDE_IP, services=services
            ),
            [service],
        ),
        kubelet.launch(
            client,
            image,
            kubelet.Place(
                namespace, net.CLIENT_IP, host_ip=net.NODE_CLIENT_SIDE_IP, services=services
            ),
            [service],
        ),
    )


def plan(
    kubectl: str,
    overlays: Sequence[str],
    image: kubelet.ImageConfig,
    workdir: Path,
    directory: Path = OVERLAYS_DIR,
) -> list[PodCase]:
    """Every overlay active; idle too where its client's settings keep connections alive."""
    from tcpecho.cli import client_settings_from_environment

    cases = []
    for name in overlays:
        active = pod_case(name, "active", render(kubectl, directory / name), image)
        cases.append(active)
        tcp, _ = client_settings_from_environment(active.client.environment)
        if tcp.keepalive_enabled:
            idle = render_idle(kubectl, directory / name, active.client, workdir)
            cases.append(pod_case(name, "idle", idle, image))
    return cases


# -- running ---------------------------------------------------------------------------------


@contextmanager
def mounted_image(image: str) -> Iterator[Path]:
    """The image's filesystem, through a working container removed afterwards."""
    container = f"tcpecho-pods-{os.getpid()}"
    subprocess.run(
        ["buildah", "from", "--quiet", "--pull=never", "--name", container, image],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        mounted = subprocess.run(
            ["buildah", "mount", container], check=True, capture_output=True, text=True
        )
        try:
            yield Path(mounted.stdout.strip())
        finally:
            subprocess.run(["buildah", "umount", container], check=False, stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["buildah", "rm", container], check=False, stdout=subprocess.DEVNULL)


def oci_config(image: str) -> dict[str, Any]:
    """The image's OCI configuration (``config``: Entrypoint, Cmd, Env, User, ...)."""
    inspected = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], check=True, capture_output=True
    )
    config: dict[str, Any] = json.loads(inspected.stdout)["OCIv1"]["config"]
    return config


def image_config(image: str) -> kubelet.ImageConfig:
    try:
        return kubelet.ImageConfig.from_oci(oci_config(image))
    except subprocess.CalledProcessError as error:
        said = error.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        raise PodError(f"the image {image!r}: buildah inspect: {said[0]}") from None


def pod_argv(workdir: Path, node: Node, spec: Launch, rootfs: Path) -> list[str]:
    """The command line of one of the cases' pods, its kubelet directory prepared: into its
    container's cgroup on the session's node, then started from the image."""
    directory = workdir / f"{spec.namespace}-{spec.pod}"
    kubelet.prepare(spec, directory, node.root)
    return kubelet.argv(spec, rootfs, directory, node.root, node.procs(spec))


def profiles(cases: Sequence[PodCase], rootfs: Path, workdir: Path, node: Node) -> list[Profile]:
    """The lab's profiles: each case's client and server launch, its settings from the
    client's environment."""
    from tcpecho.cli import client_settings_from_environment

    chosen = []
    for case in cases:
        tcp, deadlines = client_settings_from_environment(case.client.environment)
        client = pod_argv(workdir, node, case.client, rootfs)
        server = pod_argv(workdir, node, case.server, rootfs)
        chosen.append(
            Profile(
                case.overlay,
                tcp,
                deadlines,
                activities=(Activity(case.mode),),
                client_argv=tuple(client),
                server_command=shlex.join(server),
            )
        )
    return chosen


def run(
    cases: Sequence[PodCase], rootfs: Path, workdir: Path, node: Node
) -> tuple[list[Result], RunInfo]:
    """Every case in one lab run, in parallel, with the lab's quick budget."""
    from tcpecho.lab import KernelBudget, LabConfig, run_matrix

    config = LabConfig(
        faults=(Fault.FORCE_DELETE,),
        profiles=tuple(profiles(cases, rootfs, workdir, node)),
        budget=KernelBudget(quick=True),
    )
    return run_matrix(config)


@dataclass
class AgentRun:
    """The node agent's pod in the session: how it ran, and every scrape of it."""

    pod: AgentPod
    privileges: Privileges | None
    exit_status: int | None
    scrapes: list[Metrics]
    scrape_failures: int


def run_with_agent(
    cases: Sequence[PodCase], pod: AgentPod, image: str, workdir: Path
) -> tuple[list[Result], RunInfo, AgentRun]:
    """The lab's run of every case on the session's node, the agent's pod beside the cases'
    pods and scraped all along; everything removed afterwards."""
    # What a session that was killed left: its cgroups (its agent killed with them), its
    # agent's namespace.
    node.remove_stale()
    agent.remove_stale(node.PREFIX)
    netns = agent.netns_name(node.PREFIX, os.getpid())
    with Node(workdir / "node") as lab_node, mounted_image(image) as rootfs:
        for spec in (pod.spec, *(s for case in cases for s in (case.server, case.client))):
            lab_node.add_pod(spec)
        with (
            agent.started(pod, rootfs, workdir, lab_node, netns) as running,
            agent.Scraper(running) as scraper,
        ):
            results, info = run(cases, rootfs, workdir, lab_node)
    scrapes = [agent.parse(at, text) for at, text in scraper.scrapes]
    ran = AgentRun(pod, running.privileges, running.exit_status, scrapes, scraper.failures)
    return results, info, ran


# -- the agent's checks ------------------------------------------------------------------------


def views(cases: Sequence[PodCase], results: Sequence[Result], ran: AgentRun) -> list[CaseView]:
    """What the agent exported of each case's client pod, in the results' order."""
    by_case = {(c.overlay, c.mode): c for c in cases}
    judged = []
    for result in results:
        case = by_case[result.case.profile.name, str(result.case.activity)]
        judged.append(agent.judge(case.client, case.mode == "active", result, ran.scrapes))
    return judged


def agent_checks(ran: AgentRun) -> list[Check]:
    """The agent's pod ran as the DaemonSet asks: root with exactly its capabilities and no
    new privileges, in the host's PID namespace, and stopped on SIGTERM."""
    given = ran.privileges
    if given is None:
        return [Check("the agent ran", False, "no privileges read: it never became ready")]
    asked = tuple(ran.pod.spec.capabilities or ())
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
    cases: Sequence[PodCase],
    results: Sequence[Result],
    image: str,
    ran: AgentRun,
    seen: Sequence[CaseView],
) -> dict[str, Any]:
    """``out/pods.json``: one entry per case, with how its client was started and what the
    agent exported of it; the agent's pod and its own checks."""
    by_case = {(c.overlay, c.mode): c for c in cases}
    entries = []
    for result, view in zip(results, seen, strict=True):
        case = by_case[result.case.profile.name, str(result.case.activity)]
        prediction = result.prediction
        entries.append(
            {
                "overlay": case.overlay,
                "fault": str(result.case.fault),
                "mode": case.mode,
                "image": image,
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
                "client": describe(case.client),
                "server": describe(case.server),
                "agent": view_json(view, result.fault_at),
            }
        )
    return {
        "image": image,
        "kernel_release": platform.release(),
        "agent": agent_json(ran),
        "cases": entries,
    }


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


def agent_json(ran: AgentRun) -> dict[str, Any]:
    """The agent's pod: how it was started, what it was given, what it did."""
    spec, last = ran.pod.spec, (ran.scrapes[-1] if ran.scrapes else None)
    given = ran.privileges
    return {
        **describe(spec),
        "namespace": spec.namespace,
        "uid": spec.pod_uid,
        "container_id": spec.container_id,
        "qos_class": spec.qos_class,
        "cgroup": kubelet.container_cgroup(spec),
        "host_pid": spec.host_pid,
        "capabilities": list(spec.capabilities or ()),
        "host_paths": [[m.host_path, m.mount_path] for m in spec.host_paths],
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


def describe(spec: Launch) -> dict[str, Any]:
    return {
        "pod": spec.pod,
        "argv": list(spec.argv),
        "env": spec.environment,
        "user": f"{spec.uid}:{spec.gid}",
        "groups": list(spec.groups),
        "read_only_root": spec.read_only_root,
    }


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
        return "needs root (namespaces, mounts, buildah)"
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
        image = image_config(args.image)
        cases = plan(args.kubectl, overlays, image, workdir, args.overlays_dir)
        pod = agent.agent_pod(render(args.kubectl, args.node_agent_dir), image)
        results, info, ran = run_with_agent(cases, pod, args.image, workdir)
    except (PodError, NodeError, click.ClickException) as error:
        print(f"python -m cluster.pods: {error}", file=sys.stderr)
        return 2
    except AgentError as error:
        print(f"python -m cluster.pods: the node agent: {error}", file=sys.stderr)
        return 1
    except StoppedError as stopped:
        return stopped.status
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return write_report(args, cases, results, info, ran)


def write_report(
    args: argparse.Namespace,
    cases: Sequence[PodCase],
    results: Sequence[Result],
    info: RunInfo,
    ran: AgentRun,
) -> int:
    """The lab's table, the agent's, ``out/pods.json``; the exit status: 1 when a case
    could not run, measured outside its prediction, or a check of the agent failed."""
    seen = views(cases, results, ran)
    print(report.render(results, info))
    document = to_json(cases, results, args.image, ran, seen)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.json}\n\n{markdown(results)}\n\n{agent_markdown(results, seen)}")
    failed = failed_checks(ran, seen)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 0 if all(r.error is None and r.matches for r in results) and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
