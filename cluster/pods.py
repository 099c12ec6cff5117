"""Every overlay's pods run as a kubelet would start them, force-deleted and measured by the lab.

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
``TCPECHO_CLIENT_INTERVAL`` to ``1h``. The cases go to ``out/pods.json``; the exit status is
1 when a case could not run or its measurement is outside the prediction.
"""

from __future__ import annotations

import argparse
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

from cluster import kubelet
from cluster.kubelet import Launch, Obj, PodError
from tcpecho.experiment import Fault, Profile, Result
from tcpecho.lab import StoppedError, report
from tcpecho.lab.report import RunInfo
from tcpecho.model import Activity

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS_DIR = ROOT / "manifests" / "overlays"
INTERVAL_VARIABLE = "TCPECHO_CLIENT_INTERVAL"
IDLE_INTERVAL = "1h"
TOOLS = ("buildah", "kubectl", "unshare", "setpriv", "chroot", "hostname", "ip", "nft")

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

    output = subprocess.run(
        [kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc is not None]


def render_idle(kubectl: str, overlay: Path, client: Launch, workdir: Path) -> list[Obj]:
    """The overlay with its client's interval patched to an hour (kustomize takes only
    relative paths to other kustomizations, so the path is made relative)."""
    directory = workdir / f"idle-{overlay.name}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(
        IDLE_KUSTOMIZATION.format(
            overlay=os.path.relpath(overlay.resolve(), directory.resolve()),
            client=client.pod.rsplit("-", 1)[0],
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
    return kubelet.ImageConfig.from_oci(oci_config(image))


def pod_dir(workdir: Path, case: PodCase, spec: Launch) -> Path:
    """The kubelet's directory for one of the case's pods (its files, its mount points)."""
    directory = workdir / f"{case.overlay}-{case.mode}-{spec.pod}"
    kubelet.prepare(spec, directory)
    return directory


def profiles(cases: Sequence[PodCase], rootfs: Path, workdir: Path) -> list[Profile]:
    """The lab's profiles: each case's client and server launch, its settings from the
    client's environment."""
    from tcpecho.cli import client_settings_from_environment

    chosen = []
    for case in cases:
        tcp, deadlines = client_settings_from_environment(case.client.environment)
        client = kubelet.argv(case.client, rootfs, pod_dir(workdir, case, case.client))
        server = kubelet.argv(case.server, rootfs, pod_dir(workdir, case, case.server))
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


def run(cases: Sequence[PodCase], rootfs: Path, workdir: Path) -> tuple[list[Result], RunInfo]:
    """Every case in one lab run, in parallel, with the lab's quick budget."""
    from tcpecho.lab import KernelBudget, LabConfig, run_matrix

    config = LabConfig(
        faults=(Fault.FORCE_DELETE,),
        profiles=tuple(profiles(cases, rootfs, workdir)),
        budget=KernelBudget(quick=True),
    )
    return run_matrix(config)


# -- the report ------------------------------------------------------------------------------


def to_json(cases: Sequence[PodCase], results: Sequence[Result], image: str) -> dict[str, Any]:
    """``out/pods.json``: one entry per case, with how its client was started."""
    by_case = {(c.overlay, c.mode): c for c in cases}
    entries = []
    for result in results:
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
            }
        )
    return {"image": image, "kernel_release": platform.release(), "cases": entries}


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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    reason = missing()
    if reason is not None:
        print(f"python -m cluster.pods: {reason}", file=sys.stderr)
        return 2
    overlays = args.overlay or sorted(p.name for p in args.overlays_dir.iterdir())
    workdir = Path(tempfile.mkdtemp(prefix="tcpecho-pods-"))
    try:
        image = image_config(args.image)
        cases = plan(args.kubectl, overlays, image, workdir, args.overlays_dir)
        with mounted_image(args.image) as rootfs:
            results, info = run(cases, rootfs, workdir)
    except (PodError, click.ClickException) as error:
        print(f"python -m cluster.pods: {error}", file=sys.stderr)
        return 2
    except StoppedError as stopped:
        return stopped.status
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report.render(results, info))
    document = to_json(cases, results, args.image)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.json}\n\n{markdown(results)}")
    return 0 if all(r.error is None and r.matches for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
