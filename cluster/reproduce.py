"""``python -m cluster.reproduce`` (what ``scripts/nox -s kind`` runs): the force-deleted-pod
hang in a kind cluster, every overlay side by side.

It needs Docker, kind and kubectl. It creates a kind cluster from ``configs/``, installs
Calico, builds and loads the image, applies each overlay of ``manifests/overlays`` in a
namespace of its own (so the overlays run side by side and the whole comparison takes one
baseline hang, ~16 min), force-deletes each server pod, follows each client's JSON log
until ``connection_failed`` and reports the detection time per overlay in the lab's table,
then deletes the cluster.

Everything that needs no cluster (argument handling, reading the client's log, the
retransmission counter) is a plain function here and tested without one.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from cluster.overlays import OVERLAYS, expected
from tcpecho import events
from tcpecho.cli import Duration, settings_errors
from tcpecho.experiment import Case, Fault, Result
from tcpecho.lab import report
from tcpecho.model import Activity
from tcpecho.settings import check_duration

IMAGE = "localhost/tcpecho:latest"
CALICO_MANIFEST = (
    "https://raw.githubusercontent.com/projectcalico/calico/v3.29.1/manifests/calico.yaml"
)
CNI_CONFIGS = {
    "calico": "kind-cluster-config.yaml",
    "kindnet": "kind-cluster-config-kindnet.yaml",
}
REQUIRED_TOOLS = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "kubectl": "apt-get install kubernetes-client, or https://kubernetes.io/docs/tasks/tools/",
}
E = TypeVar("E", bound=events.Event)


def retransmitted_segments(snmp: str) -> int:
    """``Tcp: RetransSegs`` from the text of /proc/net/snmp (the pod's network namespace)."""
    rows = [line.split() for line in snmp.splitlines() if line.startswith("Tcp:")]
    if len(rows) != 2 or len(rows[0]) != len(rows[1]):
        raise ValueError("no Tcp: header and value lines in /proc/net/snmp")
    counters = dict(zip(rows[0][1:], rows[1][1:], strict=True))
    try:
        return int(counters["RetransSegs"])
    except (KeyError, ValueError):
        raise ValueError("no numeric RetransSegs in /proc/net/snmp") from None


class CommandError(Exception):
    """A docker, kind or kubectl command failed; the message says which and why."""


def run_tool(argv: Sequence[str], *, timeout: float = 600.0, capture: bool = False) -> str:
    """Run one tool; its output goes to the terminal unless captured."""
    click.echo(f"+ {' '.join(argv)}", err=True)
    try:
        completed = subprocess.run(
            list(argv),
            check=False,
            timeout=timeout,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv[0]} took more than {timeout:.0f} s: {' '.join(argv)}") from None
    if completed.returncode != 0:
        detail = (completed.stderr or "").strip().splitlines()[-1:] if capture else []
        raise CommandError(
            f"{' '.join(argv)} exited {completed.returncode}" + (f": {detail[0]}" if detail else "")
        )
    return completed.stdout or ""


class LogFollower:
    """Reads a process's stdout line by line (``kubectl logs -f``) until an event or a deadline."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.process.stdout is not None
        self._fd = self.process.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._pending = b""
        self.ended = False

    def _lines(self, wait_s: float) -> list[bytes]:
        if not self._selector.select(timeout=wait_s):
            return []
        chunk = os.read(self._fd, 65536)
        if not chunk:  # the log ended: kubectl exits when the container does
            self.ended = True
            chunk = b"\n"
        self._pending += chunk
        *complete, self._pending = self._pending.split(b"\n")
        return complete

    def wait_for(self, kind: type[E], timeout_s: float) -> E | None:
        """The first ``kind`` event, or None when the log ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not self.ended and (remaining := deadline - time.monotonic()) > 0:
            for line in self._lines(min(remaining, 1.0)):
                logged = events.parse_line(line)
                if logged is not None and isinstance(logged.event, kind):
                    return logged.event
        return None

    def close(self) -> None:
        self._selector.close()
        if self.process.poll() is None:
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class Cluster:
    """A kind cluster and the kubectl context that reaches it."""

    name: str

    @property
    def context(self) -> str:
        return f"kind-{self.name}"

    def kubectl(self, *args: str, capture: bool = False, timeout: float = 600.0) -> str:
        return run_tool(
            ["kubectl", "--context", self.context, *args], capture=capture, timeout=timeout
        )

    def exists(self) -> bool:
        return self.name in run_tool(["kind", "get", "clusters"], capture=True).split()

    def create(self, config: Path, node_image: str | None) -> None:
        image = ["--image", node_image] if node_image else []
        run_tool(
            ["kind", "create", "cluster", "--name", self.name, "--config", str(config), *image]
        )

    def delete(self) -> None:
        run_tool(["kind", "delete", "cluster", "--name", self.name])

    def install_calico(self, manifest: str) -> None:
        # create, not apply: Calico's CRDs are too large for apply's last-applied annotation.
        self.kubectl("create", "-f", manifest)
        self.kubectl(
            "-n", "kube-system", "rollout", "status", "daemonset/calico-node", "--timeout=10m"
        )

    def wait_for_nodes(self) -> None:
        self.kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=10m")

    def load_image(self, context_dir: Path) -> None:
        run_tool(["docker", "build", "--tag", IMAGE, str(context_dir)], timeout=1800)
        run_tool(["kind", "load", "docker-image", IMAGE, "--name", self.name])

    def pod_name(self, namespace: str, app: str) -> str:
        return self.kubectl(
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            f"app={app}",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[0].metadata.name}",
            capture=True,
        ).strip()

    def retransmissions(self, namespace: str, pod: str) -> int:
        # Python is what the image surely has; the counter is the pod's network namespace's.
        snmp = self.kubectl(
            "-n",
            namespace,
            "exec",
            pod,
            "--",
            "python",
            "-c",
            "print(open('/proc/net/snmp').read())",
            capture=True,
            timeout=30,
        )
        return retransmitted_segments(snmp)


def namespace_for(overlay: str) -> str:
    return f"tcpecho-{overlay}"


def follow_logs(cluster: Cluster, namespace: str, pod: str) -> LogFollower:
    return LogFollower(
        ["kubectl", "--context", cluster.context, "-n", namespace, "logs", "-f", pod]
    )


def wait_for_first_echo(cluster: Cluster, namespace: str, pod: str, timeout_s: float) -> None:
    """Until the client has an echo; a client that started before its server exits (no
    retries) and is restarted, so its log is followed again each time it ends."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        follower = follow_logs(cluster, namespace, pod)
        try:
            if follower.wait_for(events.ResponseReceived, remaining):
                return
        finally:
            follower.close()
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))
    raise CommandError(f"{namespace}: the client got no echo within {timeout_s:.0f} s")


def run_case(cluster: Cluster, overlay: str, timeout_s: float) -> Result:
    """Force-delete one overlay's server pod and time its client's detection."""
    namespace = namespace_for(overlay)
    client = cluster.pod_name(namespace, "client")
    wait_for_first_echo(cluster, namespace, client, 180.0)
    before = cluster.retransmissions(namespace, client)
    # Followed from before the fault, so the failure cannot slip out with a restart.
    follower = follow_logs(cluster, namespace, client)
    try:
        server = cluster.pod_name(namespace, "server")
        cluster.kubectl(
            "-n", namespace, "delete", "pod", server, "--grace-period=0", "--force", "--wait=false"
        )
        failed = follower.wait_for(events.ConnectionFailed, timeout_s)
    finally:
        follower.close()
    result = Result(
        Case(Fault.FORCE_DELETE, OVERLAYS[overlay], Activity.ACTIVE), prediction=expected(overlay)
    )
    if failed is not None:
        result.record(failed)
    # A client without retries exits on the failure and is restarted in the same pod (same
    # network namespace, same counters): retry until it can be exec'ed into again.
    # The pod's own counter, not the socket's: it survives the client's exit.
    result.retransmissions = None
    for _ in range(10):
        try:
            result.retransmissions = cluster.retransmissions(namespace, client) - before
            break
        except (CommandError, ValueError):
            time.sleep(3)
    return result


def overlay_names(manifests: Path) -> list[str]:
    overlays = manifests / "overlays"
    if not overlays.is_dir():
        return []
    return sorted(p.name for p in overlays.iterdir() if (p / "kustomization.yaml").is_file())


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


@dataclass(frozen=True)
class Plan:
    """What a reproduction runs: checked before any tool is called."""

    overlays: tuple[str, ...]
    cni: str
    calico_manifest: str
    cluster: Cluster
    node_image: str | None
    timeout_s: float
    project_dir: Path
    keep_cluster: bool

    def __post_init__(self) -> None:
        check_duration("timeout", self.timeout_s, minimum=1.0)

    @property
    def kind_config(self) -> Path:
        return self.project_dir / "configs" / CNI_CONFIGS[self.cni]

    def overlay_dir(self, overlay: str) -> Path:
        return self.project_dir / "manifests" / "overlays" / overlay


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--overlay",
    "overlays",
    multiple=True,
    help="Overlay of manifests/overlays to run (repeatable); default: all of them, side by side.",
)
@click.option(
    "--cni",
    type=click.Choice(sorted(CNI_CONFIGS)),
    default="calico",
    help="calico: the CNI of the field report, where the hang happens; "
    "kindnet: kind's default, for comparison.",
)
@click.option(
    "--calico-manifest",
    default=CALICO_MANIFEST,
    help="Calico's install manifest: a URL or a local file (offline mirrors).",
)
@click.option(
    "--cluster-name", default="tcpecho", help="kind cluster to create (and delete at the end)."
)
@click.option("--node-image", default=None, help="kind node image (default: kind's own).")
@click.option(
    "--timeout",
    type=Duration(),
    default="20m",
    help="Longest wait for a client to notice (at least 1s); the default hang takes ~15.5 min.",
)
@click.option(
    "--project-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(),
    help="Checkout holding Dockerfile, manifests/ and configs/.",
)
@click.option("--keep-cluster", is_flag=True, help="Leave the cluster running afterwards.")
def reproduce(
    overlays: tuple[str, ...],
    cni: str,
    calico_manifest: str,
    cluster_name: str,
    node_image: str | None,
    timeout: float,
    project_dir: Path,
    keep_cluster: bool,
) -> None:
    """Reproduce the hang in a kind cluster and report each overlay's detection time."""
    with settings_errors():
        plan = Plan(
            overlays=_chosen_overlays(project_dir, overlays),
            cni=cni,
            calico_manifest=calico_manifest,
            cluster=Cluster(cluster_name),
            node_image=node_image,
            timeout_s=timeout,
            project_dir=project_dir,
            keep_cluster=keep_cluster,
        )
    _check(plan)
    results: list[Result] = []
    try:
        # kind removes the nodes of a cluster it failed to create; whatever else happens
        # from here on, the cluster is deleted below.
        _set_up(plan)
        results = run_cases(plan.cluster, plan.overlays, plan.timeout_s)
    except CommandError as error:
        click.echo(f"reproduce: {error}", err=True)
        raise SystemExit(1) from None
    finally:
        if keep_cluster:
            click.echo(f"keeping the cluster: kind delete cluster --name {cluster_name}", err=True)
        else:
            with contextlib.suppress(CommandError):
                plan.cluster.delete()
    click.echo(render_table(results))


def _chosen_overlays(project_dir: Path, overlays: tuple[str, ...]) -> tuple[str, ...]:
    available = overlay_names(project_dir / "manifests")
    if not available:
        raise click.BadParameter(
            f"no overlays under {project_dir / 'manifests' / 'overlays'}",
            param_hint="'--project-dir'",
        )
    unknown = [name for name in overlays if name not in available]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}: not one of {', '.join(available)}", param_hint="'--overlay'"
        )
    return tuple(dict.fromkeys(overlays)) or tuple(available)


def _check(plan: Plan) -> None:
    """Refuse what cannot work before running anything: files, tools, an existing cluster."""
    if not plan.kind_config.is_file():
        raise click.BadParameter(f"{plan.kind_config} is missing", param_hint="'--project-dir'")
    manifest = plan.calico_manifest
    if plan.cni == "calico" and "://" not in manifest and not Path(manifest).is_file():
        raise click.BadParameter(
            f"{manifest}: no such file (give a URL or a file)", param_hint="'--calico-manifest'"
        )
    missing = missing_tools()
    if missing:
        hints = "; ".join(f"{tool}: {REQUIRED_TOOLS[tool]}" for tool in missing)
        click.echo(f"reproduce needs {', '.join(missing)} on PATH ({hints})", err=True)
        raise SystemExit(2)
    try:
        taken = plan.cluster.exists()
    except CommandError as error:
        click.echo(f"reproduce: {error}", err=True)
        raise SystemExit(1) from None
    if taken:  # never run in, nor delete, a cluster this run did not create
        name = plan.cluster.name
        raise click.BadParameter(
            f"a kind cluster {name!r} exists already: "
            f"delete it (kind delete cluster --name {name}) or choose another name",
            param_hint="'--cluster-name'",
        )


def _set_up(plan: Plan) -> None:
    """The cluster, its CNI, the image, and every overlay applied and available."""
    cluster = plan.cluster
    cluster.create(plan.kind_config, plan.node_image)
    if plan.cni == "calico":
        cluster.install_calico(plan.calico_manifest)
    cluster.wait_for_nodes()
    cluster.load_image(plan.project_dir)
    for overlay in plan.overlays:
        namespace = namespace_for(overlay)
        cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl("-n", namespace, "apply", "-k", str(plan.overlay_dir(overlay)))
    for overlay in plan.overlays:
        cluster.kubectl(
            *("-n", namespace_for(overlay), "wait", "--for=condition=Available"),
            *("deployment", "--all", "--timeout=5m"),
        )


def render_table(results: Sequence[Result]) -> str:
    """The report: the lab's table, one row per overlay."""
    return report.render_table([report.row(result) for result in results])


def run_cases(cluster: Cluster, overlays: Sequence[str], timeout_s: float) -> list[Result]:
    """One thread per overlay, so the comparison takes as long as its slowest case."""
    results: dict[str, Result] = {}
    errors: dict[str, BaseException] = {}

    def case(overlay: str) -> None:
        try:
            results[overlay] = run_case(cluster, overlay, timeout_s)
        except BaseException as error:  # reported after all cases, in the main thread
            errors[overlay] = error

    threads = [threading.Thread(target=case, args=(name,), daemon=True) for name in overlays]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=30.0 / len(threads))
        waiting = [name for name in overlays if name not in results and name not in errors]
        if waiting:
            click.echo(
                f"waiting {time.monotonic() - started:.0f} s for: {', '.join(waiting)}", err=True
            )
    finished = [results[name] for name in overlays if name in results]
    if errors:
        if finished:
            click.echo(render_table(finished))
        overlay, error = next(iter(errors.items()))
        raise CommandError(f"{overlay}: {error}") from error
    return finished


if __name__ == "__main__":
    reproduce(prog_name="python -m cluster.reproduce")
