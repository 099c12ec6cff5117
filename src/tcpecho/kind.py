"""The in-cluster side of tcpecho: the kind reproduction of the force-deleted-pod hang, and
the measurement behind the pods' resource requests and limits.

``python -m tcpecho.kind reproduce`` (what ``nox -s kind`` runs) needs Docker, kind and
kubectl. It creates a kind cluster from ``configs/``, installs Calico, builds and loads the
image, applies each overlay of ``manifests/overlays`` in a namespace of its own (so the
overlays run side by side and the whole comparison takes one baseline hang, ~16 min),
force-deletes each server pod, follows each client's JSON log until ``connection_failed``
and reports the detection time per overlay in the lab's table, then deletes the cluster.

``python -m tcpecho.kind measure-resources`` runs a real ``tcpecho server`` under load and a
real ``tcpecho client`` on loopback and reports their CPU and peak memory: the figures the
manifests' requests and limits come from.

Everything that needs no cluster (argument handling, reading the client's log, the
retransmission counter, the table) is a plain function here and unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tcpecho.durations import Duration, format_duration
from tcpecho.lab import report
from tcpecho.lab.profiles import connection_settings
from tcpecho.lab.report import format_seconds
from tcpecho.timing import FAST_S, Activity, Failure, KernelSettings, Prediction, predict

FAULT = "force-delete"
_KEEPALIVE_ARGS = (
    "--keepalive",
    *("--keepalive-idle", "10s", "--keepalive-interval", "5s", "--keepalive-count", "3"),
)
MODE = "active"
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


# The client flags each overlay sets through its TCPECHO_CLIENT_* variables (retries aside,
# which do not change when the failure is noticed); tests/test_manifests.py checks that they
# match the manifests. The expectation comes from the lab's kernel model.
OVERLAY_CLIENT_ARGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "user-timeout": ("--user-timeout", "30s"),
    "keepalive": _KEEPALIVE_ARGS,
    "mitigated": ("--user-timeout", "30s", *_KEEPALIVE_ARGS, "--read-timeout", "10s"),
}


def expected(overlay: str) -> Prediction | None:
    """When the overlay's client should notice the force-delete (kernel defaults; the client
    sends every 5 s, so a request is always waiting for its echo when the pod vanishes)."""
    args = OVERLAY_CLIENT_ARGS.get(overlay)
    if args is None:
        return None
    return predict(KernelSettings(), connection_settings(args), Failure.SILENT, Activity.ACTIVE)


def verdict(measured_s: float | None, prediction: Prediction | None) -> str:
    """As the lab's: hang when nothing, or only the retransmission budget, noticed it."""
    if measured_s is None:
        return "hang"
    if measured_s < FAST_S:
        return "fast"
    if prediction is not None and prediction.mechanism == "tcp_retries2":
        return "hang"
    return "detected"


@dataclass(frozen=True)
class Detection:
    """A client's ``connection_failed``: the error, the phase and the time it took."""

    error: str
    phase: str
    seconds: float | None


def parse_event(line: str) -> dict[str, Any] | None:
    """One JSON log line as a dict; anything else (kubectl's own messages) is None."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def detection_from(event: dict[str, Any]) -> Detection | None:
    """The detection in a ``connection_failed`` event, None for any other event.

    The time is ``detection_s`` (from the unanswered send) or, for a connection that was
    idle when it failed, ``since_last_response_s``: the clock the lab uses for idle cases.
    """
    if event.get("event") != "connection_failed":
        return None
    seconds = event.get("detection_s")
    if seconds is None:
        seconds = event.get("since_last_response_s")
    return Detection(
        error=str(event.get("errno", "?")),
        phase=str(event.get("phase", "?")),
        seconds=None if seconds is None else float(seconds),
    )


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


@dataclass(frozen=True)
class CaseResult:
    """One row of the report, in the lab's columns."""

    fault: str
    profile: str
    mode: str
    expected: Prediction | None
    detection: Detection | None
    retransmissions: int | None

    @property
    def measured_s(self) -> float | None:
        return None if self.detection is None else self.detection.seconds

    @property
    def verdict(self) -> str:
        return verdict(self.measured_s, self.expected)

    def row(self) -> dict[str, str]:
        prediction, detection = self.expected, self.detection
        measured = self.measured_s
        matches = prediction is not None and prediction.contains(measured)
        if detection is not None and prediction is not None:
            matches = matches and detection.error in prediction.errnos
        return {
            "fault": self.fault,
            "profile": self.profile,
            "mode": self.mode,
            "expected": "?" if prediction is None else prediction.describe(),
            "measured": "none" if measured is None else format_seconds(measured),
            "from": "-" if detection is None else _CLOCKS.get(detection.phase, "last data"),
            "error": "-" if detection is None else detection.error,
            "retrans": "?" if self.retransmissions is None else str(self.retransmissions),
            "verdict": self.verdict,
            "model": "?" if prediction is None else ("ok" if matches else "MISS"),
        }


_CLOCKS = {"request": "request", "connect": "request", "idle": "last data"}


def render_table(results: Sequence[CaseResult]) -> str:
    """The report: the lab's table, one row per overlay."""
    return report.render_table([result.row() for result in results])


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

    def wait_for(
        self, accept: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any] | None:
        """The first event ``accept`` takes, or None when the log ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not self.ended and (remaining := deadline - time.monotonic()) > 0:
            for line in self._lines(min(remaining, 1.0)):
                event = parse_event(line.decode(errors="replace"))
                if event is not None and accept(event):
                    return event
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
            if follower.wait_for(lambda e: e.get("event") == "response_received", remaining):
                return
        finally:
            follower.close()
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))
    raise CommandError(f"{namespace}: the client got no echo within {timeout_s:.0f} s")


def run_case(cluster: Cluster, overlay: str, timeout_s: float) -> CaseResult:
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
        failed = follower.wait_for(lambda e: e.get("event") == "connection_failed", timeout_s)
    finally:
        follower.close()
    detection = None if failed is None else detection_from(failed)
    # A client without retries exits on the failure and is restarted in the same pod (same
    # network namespace, same counters): retry until it can be exec'ed into again.
    retransmissions = None
    for _ in range(10):
        try:
            retransmissions = cluster.retransmissions(namespace, client) - before
            break
        except (CommandError, ValueError):
            time.sleep(3)
    return CaseResult(FAULT, overlay, MODE, expected(overlay), detection, retransmissions)


def overlay_names(manifests: Path) -> list[str]:
    overlays = manifests / "overlays"
    if not overlays.is_dir():
        return []
    return sorted(p.name for p in overlays.iterdir() if (p / "kustomization.yaml").is_file())


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """tcpecho in Kubernetes: the kind reproduction and the pods' resource figures."""


@main.command()
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
    type=Duration(minimum=1),
    default="20m",
    help="Longest wait for a client to notice; the default hang takes ~15.5 min.",
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
    chosen = list(dict.fromkeys(overlays)) or available
    config = project_dir / "configs" / CNI_CONFIGS[cni]
    if not config.is_file():
        raise click.BadParameter(f"{config} is missing", param_hint="'--project-dir'")
    if cni == "calico" and "://" not in calico_manifest and not Path(calico_manifest).is_file():
        raise click.BadParameter(
            f"{calico_manifest}: no such file (give a URL or a file)",
            param_hint="'--calico-manifest'",
        )
    missing = missing_tools()
    if missing:
        hints = "; ".join(f"{tool}: {REQUIRED_TOOLS[tool]}" for tool in missing)
        click.echo(f"reproduce needs {', '.join(missing)} on PATH ({hints})", err=True)
        raise SystemExit(2)

    cluster = Cluster(cluster_name)
    try:
        taken = cluster.exists()
    except CommandError as error:
        click.echo(f"reproduce: {error}", err=True)
        raise SystemExit(1) from None
    if taken:  # never run in, nor delete, a cluster this run did not create
        raise click.BadParameter(
            f"a kind cluster {cluster_name!r} exists already: "
            f"delete it (kind delete cluster --name {cluster_name}) or choose another name",
            param_hint="'--cluster-name'",
        )
    results: list[CaseResult] = []
    try:
        # kind removes the nodes of a cluster it failed to create; whatever else happens
        # from here on, the cluster is deleted below.
        cluster.create(config, node_image)
        if cni == "calico":
            cluster.install_calico(calico_manifest)
        cluster.wait_for_nodes()
        cluster.load_image(project_dir)
        for overlay in chosen:
            namespace = namespace_for(overlay)
            cluster.kubectl("create", "namespace", namespace)
            overlay_dir = project_dir / "manifests" / "overlays" / overlay
            cluster.kubectl("-n", namespace, "apply", "-k", str(overlay_dir))
        for overlay in chosen:
            cluster.kubectl(
                "-n",
                namespace_for(overlay),
                "wait",
                "--for=condition=Available",
                "deployment",
                "--all",
                "--timeout=5m",
            )
        results = run_cases(cluster, chosen, timeout)
    except CommandError as error:
        click.echo(f"reproduce: {error}", err=True)
        raise SystemExit(1) from None
    finally:
        if keep_cluster:
            click.echo(f"keeping the cluster: kind delete cluster --name {cluster_name}", err=True)
        else:
            with contextlib.suppress(CommandError):
                cluster.delete()
    click.echo(render_table(results))


def run_cases(cluster: Cluster, overlays: Sequence[str], timeout_s: float) -> list[CaseResult]:
    """One thread per overlay, so the comparison takes as long as its slowest case."""
    results: dict[str, CaseResult] = {}
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


# -- resource measurement --------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessUsage:
    """What one process used over a measured window."""

    cpu_millicores: float
    peak_rss_mib: float


def cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def peak_rss_kib(status: str) -> int:
    """VmHWM (the peak resident set) in KiB, from the text of /proc/PID/status."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise ValueError("no VmHWM in /proc/PID/status")


class UsageMeter:
    """CPU and peak memory of a running process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._start = (time.monotonic(), self._ticks())

    def _ticks(self) -> int:
        return cpu_ticks(Path(f"/proc/{self.pid}/stat").read_text())

    def read(self) -> ProcessUsage:
        started_at, started_ticks = self._start
        elapsed = time.monotonic() - started_at
        cpu_s = (self._ticks() - started_ticks) / self.ticks_per_s
        peak = peak_rss_kib(Path(f"/proc/{self.pid}/status").read_text())
        return ProcessUsage(cpu_millicores=1000 * cpu_s / elapsed, peak_rss_mib=peak / 1024)


async def echo_load(port: int, connections: int, interval_s: float, duration_s: float) -> int:
    """Connections that each send a line every interval and read its echo; echoes completed."""
    stop_at = asyncio.get_running_loop().time() + duration_s
    completed = 0

    async def one(index: int) -> None:
        nonlocal completed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            seq = 0
            while asyncio.get_running_loop().time() < stop_at:
                line = f"{index}.{seq} ping\n".encode()
                writer.write(line)
                await reader.readexactly(len(line))
                completed += 1
                seq += 1
                await asyncio.sleep(interval_s)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return completed


def wait_until_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@main.command("measure-resources")
@click.option("--duration", type=Duration(minimum=1), default="30s", help="Measured window.")
@click.option(
    "--connections",
    type=click.IntRange(1, 10_000),
    default=100,
    help="Load on the server: concurrent connections.",
)
@click.option(
    "--load-interval",
    type=Duration(minimum=0.001),
    default="10ms",
    help="Pause between one connection's requests (100 x 10ms: ~10k echoes/s at most).",
)
@click.option(
    "--client-interval",
    type=Duration(minimum=0.001),
    default="10ms",
    help="The measured tcpecho client's --interval (the pods use 5s: this is 500x busier).",
)
def measure_resources(
    duration: float, connections: int, load_interval: float, client_interval: float
) -> None:
    """Measure a real tcpecho server under load and a real tcpecho client, on loopback."""
    port = free_loopback_port()
    command = [sys.executable, "-m", "tcpecho"]
    quiet = ["--log-level", "warning", "--log-format", "json"]
    server = subprocess.Popen(
        [*command, "server", "--host", "127.0.0.1", "--port", str(port), *quiet]
    )
    client: subprocess.Popen[bytes] | None = None
    try:
        wait_until_listening(port)
        interval = ["--interval", format_duration(client_interval)]
        client = subprocess.Popen(
            [*command, "client", "--server", "127.0.0.1", "--port", str(port), *interval, *quiet]
        )
        server_meter, client_meter = UsageMeter(server.pid), UsageMeter(client.pid)
        try:
            echoes = asyncio.run(echo_load(port, connections, load_interval, duration))
        except OSError as error:
            raise click.ClickException(f"the load lost its server: {error}") from None
        for name, measured in (("server", server), ("client", client)):
            if measured.poll() is not None:  # its /proc entry would be gone or wrong
                raise click.ClickException(f"the {name} exited early ({measured.returncode})")
        server_usage, client_usage = server_meter.read(), client_meter.read()
    finally:
        for started in (client, server):
            if started is not None and started.poll() is None:
                started.terminate()
                started.wait(15)
    click.echo(f"load: {connections} connections, {echoes / duration:.0f} echoes/s")
    click.echo("process  cpu (millicores)  peak RSS (MiB)")
    for name, usage in (("server", server_usage), ("client", client_usage)):
        click.echo(f"{name:<8} {usage.cpu_millicores:>16.0f}  {usage.peak_rss_mib:>14.1f}")


if __name__ == "__main__":
    main(prog_name="python -m tcpecho.kind")
