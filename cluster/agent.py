"""The node agent's pod in the pods session: played by podman as the DaemonSet's pod, scraped
while the lab runs, and what it exported judged against the cases (``AgentPod``,
``RunningAgent``, ``Scraper``, ``judge``).

``agent_pod`` takes the DaemonSet of ``kubectl kustomize manifests/node-agent`` and makes the
Pod its controller would (``cluster/controllers.py``); podman plays it (``cluster/podman.py``:
``hostPID`` through the engine's PID namespace setting, as podman 4.3's ``kube play`` ignores
it; root with exactly the capabilities it lists; the kubelet's log directories read-only from
the host's ``/var/log``, where the session's node writes them). Its scrape port and path come
from the pod's ``prometheus.io`` annotations, as a Prometheus finds them. Its
``--service-cidr`` must hold the lab's ClusterIP, or its connections to the Service would
not be counted as to a Service (``peer="service"``).

The pod's network namespace is its infra container's, wired as a CNI plugin would: the pod's
address on its loopback and no route out, named ``<prefix><pid>-agent`` for the session. Its
podman runs in a namespace of its own, ``<prefix><pid>-node`` (where podman holds the pod's
``containerPort``). The session scrapes the agent from inside the pod's namespace, with a
socket made there, as ``kubectl port-forward`` reaches a pod's port (the runtime dials it from
the pod's network namespace), so nothing on the host's network changes. ``RunningAgent``
waits until ``/metrics`` answers with a snapshot (the readiness the DaemonSet's probe asks
for; podman turns probes into systemd timers, and there is no systemd here) and reads what
the process was given from ``/proc/PID/status``.

``Scraper`` scrapes every ``SCRAPE_PERIOD_S`` while the lab runs. A scrape shows the last
snapshot the agent took (every 5 s, the DaemonSet's ``--interval``), so for each case
``judge`` takes the first scrape that shows a snapshot known to have started inside the
case's window: after the client's unanswered request (after the fault, for an idle client)
and before the client's failure. A snapshot is known to have started after ``t`` when the
scrape before the one that shows it was taken at ``t`` plus the snapshot's duration or later
(``tcpecho_node_snapshot_duration_seconds``' count and sum). The checks, from the client's
own settings (read from its environment, as the session's predictions are):

- the agent names the client pod (``tcpecho_node_connections``, namespace and pod);
- an active client has a stuck connection (its request is being retransmitted);
- where the kernel ends the wait (``tcp_retries2``, ``user_timeout``), the agent's give-up,
  the longest stuck time plus the soonest give-up, lies within the model's range;
- a client with no user timeout, no keepalive and no read timeout has one connection at
  risk ``no-bound`` to a Service; one with a user timeout and keepalive has none.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import itertools
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import controllers
from cluster.controllers import Obj, PodError
from cluster.node import Node, Placed
from cluster.podman import EngineError, Played, Podman
from tcpecho import events
from tcpecho.experiment import Result
from tcpecho.model import Mechanism
from tcpecho.process import alive
from tcpecho.settings import Deadlines
from tcpecho.tcp.namespaces import NamespaceUnavailableError, NetNamespace, socket_in
from tcpecho.tcp.options import TcpOptions

AGENT_POD_IP = "10.244.0.2"  # the agent pod's address, in no lab range (10.244.1-2.0/24)
SCRAPE_PERIOD_S = 0.25
SCRAPE_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
LOG_KEPT = 2000  # characters of the agent's log in an error
KERNEL_ENDED = (Mechanism.TCP_RETRIES2, Mechanism.USER_TIMEOUT)
# The agent's give-up is its model's earliest time, rounded to the millisecond in each of
# its two parts: this much either side of the range is the rounding's, not a miss.
ROUNDING_S = 0.002
SNAPSHOTS = "tcpecho_node_snapshot_duration_seconds"
# A connection is stuck once the kernel retransmits (``diag.Connection.stuck``): one RTO after
# the unanswered send. Linux's RTO is at least TCP_RTO_MIN, 200 ms, and the lab's round trip
# is microseconds, so the first retransmission comes ~0.2 s after the send; a snapshot that
# started before it sees the request in flight, not stuck. 1 s bounds it with room for a
# loaded machine's timers, and leaves every case's window (10 s or more) a snapshot (every 5 s).
FIRST_RETRANSMISSION_S = 1.0
# Linux's capabilities by number (include/uapi/linux/capability.h, up to 6.x's last).
CAPABILITIES = (
    *("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID"),
    *("SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST"),
    *("NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO"),
    *("SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE"),
    *("SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE"),
    *("AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM"),
    *("BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"),
)


class AgentError(RuntimeError):
    """The agent's pod could not be started, or did not become ready; the message says why."""


@dataclass(frozen=True)
class AgentPod:
    """The DaemonSet's pod as its controller creates it, and where its metrics are scraped."""

    pod: Obj
    port: int
    path: str
    service_cidrs: tuple[str, ...]
    capabilities: tuple[str, ...]  # exactly root's, as asked: drop ALL, add these
    host_paths: tuple[tuple[str, str], ...]  # (the node's path, where the container has it)

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])


def agent_pod(objects: Sequence[Obj]) -> AgentPod:
    """The one DaemonSet of ``objects`` as a pod of it is created for the lab's node."""
    from tcpecho.lab import topology as net

    daemonsets = [o for o in objects if o["kind"] == "DaemonSet"]
    if len(daemonsets) != 1:
        raise PodError(f"the node agent's manifests hold {len(daemonsets)} DaemonSets, not one")
    pod = controllers.pod_of(daemonsets[0])
    container = controllers.container_of(pod)
    annotations = pod["metadata"]["annotations"]
    if annotations.get("prometheus.io/scrape") != "true":
        raise PodError("the agent's pod asks for no scrape (prometheus.io/scrape)")
    words = [*(container.get("command") or []), *(container.get("args") or [])]
    cidrs = option_values(words, "--service-cidr")
    if not any(ipaddress.ip_address(net.CLUSTER_IP) in ipaddress.ip_network(c) for c in cidrs):
        raise PodError(
            f"the agent's --service-cidr {', '.join(cidrs) or '(none)'} does not hold the "
            f"lab's ClusterIP {net.CLUSTER_IP}: its connections would not be to a Service"
        )
    return AgentPod(
        pod,
        int(annotations.get("prometheus.io/port", 80)),
        str(annotations.get("prometheus.io/path", "/metrics")),
        tuple(cidrs),
        capabilities(container),
        host_paths(pod, container),
    )


def capabilities(container: Obj) -> tuple[str, ...]:
    """The capabilities root has in the container, as runc gives them: those it adds, once
    it drops ALL (the DaemonSet does, and the session checks what the process got)."""
    asked = (container.get("securityContext") or {}).get("capabilities") or {}
    if "ALL" not in [str(name).upper() for name in asked.get("drop") or []]:
        raise PodError("the agent's container keeps the runtime's default capabilities")
    added = {str(name).upper().removeprefix("CAP_") for name in asked.get("add") or []}
    unknown = sorted(added - set(CAPABILITIES))
    if unknown:
        raise PodError(f"the agent's container: {unknown[0]!r} is no capability")
    return tuple(sorted(added, key=CAPABILITIES.index))


def host_paths(pod: Obj, container: Obj) -> tuple[tuple[str, str], ...]:
    """Each hostPath volume the container mounts: (the node's path, the mount path)."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    return tuple(
        (volumes[m["name"]]["hostPath"]["path"], m["mountPath"])
        for m in container.get("volumeMounts") or []
        if "hostPath" in volumes.get(m["name"], {})
    )


def option_values(argv: Sequence[str], option: str) -> list[str]:
    """Every value of ``option`` in ``argv``, given as ``--name value`` or ``--name=value``."""
    values = []
    for index, word in enumerate(argv):
        if word == option and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif word.startswith(f"{option}="):
            values.append(word.partition("=")[2])
    return values


# -- the running pod --------------------------------------------------------------------------


@dataclass(frozen=True)
class Privileges:
    """What the agent's process was given, from ``/proc/PID/status`` once it ran."""

    uid: int
    effective: tuple[str, ...]
    permitted: tuple[str, ...]
    bounding: tuple[str, ...]
    inheritable: tuple[str, ...]
    ambient: tuple[str, ...]
    no_new_privs: bool
    pid_namespace_levels: int  # 1: the host's PID namespace
    sees_host_pids: bool  # its /proc shows this session's own process

    @classmethod
    def of(cls, pid: int) -> Privileges:
        fields = dict(
            (key, value.strip())
            for key, _, value in (
                line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
        )
        return cls(
            uid=int(fields["Uid"].split()[1]),
            **{
                name: capability_names(fields[key])
                for name, key in (
                    ("effective", "CapEff"),
                    ("permitted", "CapPrm"),
                    ("bounding", "CapBnd"),
                    ("inheritable", "CapInh"),
                    ("ambient", "CapAmb"),
                )
            },
            no_new_privs=fields["NoNewPrivs"] == "1",
            pid_namespace_levels=len(fields["NSpid"].split()),
            sees_host_pids=Path(f"/proc/{pid}/root/proc/{os.getpid()}").exists(),
        )


def all_capabilities() -> list[str]:
    """Every capability this kernel has, by name (its number where the table has none)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return [CAPABILITIES[n] if n < len(CAPABILITIES) else str(n) for n in range(last + 1)]


def capability_names(mask: str) -> tuple[str, ...]:
    """The capabilities a ``/proc/PID/status`` mask holds, by name."""
    bits = int(mask, 16)
    return tuple(name for n, name in enumerate(all_capabilities()) if bits >> n & 1)


class RunningAgent:
    """The agent's pod, started by podman, its network namespace named ``netns``."""

    def __init__(
        self, pod: AgentPod, netns: str, engine: Podman, played: Played, placed: Placed, pid: int
    ) -> None:
        self.pod = pod
        self.netns = netns
        self.engine = engine
        self.played = played
        self.placed = placed
        self.pid = pid
        self.namespace = NetNamespace(
            inode=os.stat(f"/run/netns/{netns}").st_ino, holders=(pid,), own=False
        )
        self.started = describe(engine.inspect(played.container_id))
        self.privileges: Privileges | None = None
        self.exit_status: int | None = None

    def scrape(self) -> str:
        """``/metrics``, from inside the pod's network namespace, at the pod's address."""
        sock = socket_in(self.namespace, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(SCRAPE_TIMEOUT_S)
            sock.connect((AGENT_POD_IP, self.pod.port))
            connection = http.client.HTTPConnection(AGENT_POD_IP, self.pod.port)
            connection.sock = sock
            connection.request("GET", self.pod.path)
            answer = connection.getresponse()
            body = answer.read().decode()
        except http.client.HTTPException as error:  # an answer that is no HTTP: as unreachable
            raise OSError(f"{self.pod.path}: {type(error).__name__}: {error}") from None
        finally:
            sock.close()
        if answer.status != 200:
            raise OSError(f"{self.pod.path} answered {answer.status}")
        return body

    def wait_until_ready(self) -> None:
        """Until ``/metrics`` answers with a snapshot taken; ``AgentError`` when the process
        exits first or it takes longer than ``READY_TIMEOUT_S``."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not alive(self.pid):
                raise AgentError(f"the agent exited{self._said()}")
            with contextlib.suppress(OSError, NamespaceUnavailableError):  # not listening yet
                if parse(time.time(), self.scrape()).snapshots >= 1:
                    self.privileges = Privileges.of(self.pid)
                    return
            time.sleep(SCRAPE_PERIOD_S)
        raise AgentError(
            f"the agent's /metrics showed no snapshot within {READY_TIMEOUT_S:g} s{self._said()}"
        )

    def _said(self) -> str:
        said = self.engine.log(self.played).strip()
        return f": {said[-LOG_KEPT:]}" if said else ""

    def stop(self) -> None:
        """SIGTERM, as the kubelet stops a container, then SIGKILL after the grace."""
        self.exit_status = self.engine.stop(self.played, STOP_GRACE_S)


def describe(inspected: Mapping[str, Any]) -> dict[str, Any]:
    """How the engine started a container, from ``podman container inspect``."""
    config, host = inspected["Config"], inspected["HostConfig"]
    return {
        "container_id": inspected["Id"],
        "argv": [inspected["Path"], *inspected["Args"]],
        "env": dict(item.split("=", 1) for item in config.get("Env") or []),
        "user": config.get("User") or "",
        "read_only_root": bool(host.get("ReadonlyRootfs")),
        "pid_mode": host.get("PidMode", ""),
    }


def netns_name(prefix: str, pid: int, role: str = "agent") -> str:
    """The agent pod's network namespace (``agent``) and its podman's (``node``), named
    after the session that made them."""
    return f"{prefix}{pid}-{role}"


def remove_stale(prefix: str) -> list[str]:
    """The agent namespaces of sessions no longer running, removed with what runs in them
    (an agent a killed session left behind)."""
    from tcpecho.lab import topology as net

    stale = []
    for name in net.leftover_namespaces(prefix):
        found = re.fullmatch(rf"{re.escape(prefix)}(\d+)-(agent|node)", name)
        if found is not None and not Path(f"/proc/{found.group(1)}").exists():
            stale.append(name)
    net.remove_namespaces(stale)
    return stale


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AgentError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def started(
    pod: AgentPod, engine: Podman, node: Node, prefix: str = "tcpecho-pods-"
) -> Iterator[RunningAgent]:
    """The agent's pod, played by ``engine``, running and ready, its network namespace
    wired with the pod's address; stopped, removed and its namespaces gone afterwards."""
    from pyroute2 import netns

    node_ns, pod_ns = netns_name(prefix, os.getpid(), "node"), netns_name(prefix, os.getpid())
    _ip("netns", "add", node_ns)
    played = None
    try:
        played = engine.play(pod.pod, node_ns)
        netns.attach(pod_ns, played.netns_pid)
        # The pod's address, where the pod's network namespace answers it; on loopback, as
        # nothing outside the namespace is to reach it.
        _ip("-n", pod_ns, "addr", "add", f"{AGENT_POD_IP}/32", "dev", "lo")
        placed = Placed(
            pod.namespace,
            pod.name,
            str(uuid.uuid4()),
            played.container,
            played.container_id,
            controllers.qos_class(pod.pod),
        )
        node.add_pod(placed)
        pid = engine.start(played, played.container_id, node_ns)
        node.join(placed, pid)
        running = RunningAgent(pod, pod_ns, engine, played, placed, pid)
        try:
            running.wait_until_ready()
            yield running
        finally:
            with contextlib.suppress(EngineError):
                running.stop()
    except EngineError as error:
        raise AgentError(str(error)) from None
    finally:
        if played is not None:
            with contextlib.suppress(EngineError):  # the engine's close tries again
                engine.remove(played)
        for name in (pod_ns, node_ns):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


class Scraper:
    """Scrapes the agent every ``SCRAPE_PERIOD_S`` in a thread of its own, from ``start`` to
    ``stop``; ``scrapes`` holds each answer with the wall time it came (a failed scrape is
    counted in ``failures``)."""

    def __init__(self, agent: RunningAgent, period_s: float = SCRAPE_PERIOD_S) -> None:
        self.agent = agent
        self.period_s = period_s
        self.scrapes: list[tuple[float, str]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcpecho-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                text = self.agent.scrape()
            except (OSError, NamespaceUnavailableError):
                self.failures += 1
                continue
            self.scrapes.append((time.time(), text))


# -- what a scrape says ---------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metrics:
    """One scrape, parsed by prometheus_client's parser: its samples by name."""

    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]]

    def values(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (found, value)
            for found, value in self.samples.get(name, [])
            if all(found.get(k) == v for k, v in labels.items())
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(value for _, value in self.values(name, **labels))

    @property
    def snapshots(self) -> int:
        return int(self.total(f"{SNAPSHOTS}_count"))

    @property
    def snapshot_seconds(self) -> float:
        return self.total(f"{SNAPSHOTS}_sum")


def parse(at: float, text: str) -> Metrics:
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Metrics(at, samples)


@dataclass(frozen=True)
class PodFigures:
    """What one snapshot exported of one pod."""

    connections: dict[str, int]  # by state
    stuck: int
    longest_stuck_s: float | None
    soonest_give_up_s: float | None
    at_risk: dict[str, int]  # by "code/peer"

    @classmethod
    def of(cls, metrics: Metrics, namespace: str, pod: str) -> PodFigures:
        def one(name: str) -> float | None:
            found = metrics.values(name, namespace=namespace, pod=pod)
            return found[0][1] if found else None

        return cls(
            connections={
                labels["state"]: int(value)
                for labels, value in metrics.values(
                    "tcpecho_node_connections", namespace=namespace, pod=pod
                )
            },
            stuck=int(one("tcpecho_node_stuck_connections") or 0),
            longest_stuck_s=one("tcpecho_node_longest_stuck_seconds"),
            soonest_give_up_s=one("tcpecho_node_soonest_give_up_seconds"),
            at_risk={
                f"{labels['code']}/{labels['peer']}": int(value)
                for labels, value in metrics.values(
                    "tcpecho_node_at_risk_connections", namespace=namespace, pod=pod
                )
                if value
            },
        )

    @property
    def gives_up_after_s(self) -> float | None:
        """The agent's give-up, on the stuck connection's clock: stuck for, plus left."""
        if self.longest_stuck_s is None or self.soonest_give_up_s is None:
            return None
        return round(self.longest_stuck_s + self.soonest_give_up_s, 3)

    def as_json(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "stuck_connections": self.stuck,
            "longest_stuck_s": self.longest_stuck_s,
            "soonest_give_up_s": self.soonest_give_up_s,
            "gives_up_after_s": self.gives_up_after_s,
            "at_risk": self.at_risk,
        }


# -- the checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class CaseView:
    """What the agent exported of one case's client pod, and the checks on it."""

    namespace: str
    pod: str
    window: tuple[float, float] | None  # wall times: the snapshot had to start and be seen in
    scraped_at: float | None
    figures: PodFigures | None
    checks: tuple[Check, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)


def window(result: Result, active: bool) -> tuple[float, float] | None:
    """From the first retransmission of the client's unanswered request (the fault, for an
    idle client) to its failure (the end of the watch, without one), in wall time."""
    if result.fault_at is None:
        return None
    logged = [
        found for raw in result.client_events if (found := events.parse_line(json.dumps(raw)))
    ]
    failures = [
        (e.event, e.timestamp) for e in logged if isinstance(e.event, events.ConnectionFailed)
    ]
    if not failures:
        return result.fault_at, result.fault_at + (result.observed_s or 0.0)
    failed, end = failures[0]
    sent = [
        entry.timestamp
        for entry in logged
        if isinstance(entry.event, events.RequestSent) and entry.event.seq == failed.seq
    ]
    if active and sent:
        start = max(result.fault_at, sent[0] + FIRST_RETRANSMISSION_S)
    else:
        start = result.fault_at
    return start, end


def first_snapshot_within(scrapes: Sequence[Metrics], start: float, end: float) -> Metrics | None:
    """The first scrape, taken by ``end``, that shows a snapshot which started after
    ``start``: one more snapshot than the scrape before it, which was taken at least that
    snapshot's duration after ``start``."""
    for before, after in itertools.pairwise(scrapes):
        if after.at > end:
            return None
        took = after.snapshot_seconds - before.snapshot_seconds
        if after.snapshots == before.snapshots + 1 and before.at - took >= start:
            return after
    return None


def snapshot_durations(scrapes: Sequence[Metrics]) -> list[float]:
    """How long each snapshot the scrapes saw finish took (one more between two scrapes)."""
    return [
        round(after.snapshot_seconds - before.snapshot_seconds, 4)
        for before, after in itertools.pairwise(scrapes)
        if after.snapshots == before.snapshots + 1
    ]


@dataclass(frozen=True)
class ClientPod:
    """A case's client pod as the agent should name it, and its container's settings."""

    namespace: str
    pod: str
    environment: Mapping[str, str]


def protection(tcp: TcpOptions, deadlines: Deadlines) -> str:
    """``unprotected``: nothing bounds a lost request or notices an idle peer;
    ``protected``: a user timeout and keepalive; ``partial`` otherwise."""
    user_timeout = bool(tcp.user_timeout_ms)
    if not user_timeout and not tcp.keepalive and deadlines.read_timeout_s is None:
        return "unprotected"
    return "protected" if user_timeout and tcp.keepalive else "partial"


def judge(client: ClientPod, active: bool, result: Result, scrapes: Sequence[Metrics]) -> CaseView:
    """What the agent exported of ``client``'s pod in the case's window, and the checks."""
    from tcpecho.cli import client_settings_from_environment

    span = window(result, active)
    shown = None if span is None else first_snapshot_within(scrapes, *span)
    if span is None or shown is None:
        missing = Check("a snapshot in the case's window", False, _no_snapshot(span, scrapes))
        return CaseView(client.namespace, client.pod, span, None, None, (missing,))
    figures = PodFigures.of(shown, client.namespace, client.pod)
    tcp, deadlines = client_settings_from_environment(client.environment)
    checks = [
        Check(
            "names the client pod",
            sum(figures.connections.values()) >= 1,
            f"{client.namespace}/{client.pod}: {figures.connections or 'no connection'}",
        )
    ]
    if active:
        checks.append(
            Check("its connection is stuck", figures.stuck >= 1, f"stuck {figures.stuck}")
        )
    checks += _give_up_checks(figures, result) if active else []
    checks += _risk_checks(figures, protection(tcp, deadlines))
    return CaseView(client.namespace, client.pod, span, shown.at, figures, tuple(checks))


def _no_snapshot(span: tuple[float, float] | None, scrapes: Sequence[Metrics]) -> str:
    """Why no snapshot could be judged: no fault, or snapshots too slow for the window."""
    if span is None:
        return "the case had no fault"
    took = snapshot_durations(scrapes)
    slowest = f"; its snapshots took up to {max(took):.1f} s" if took else ""
    return (
        f"no snapshot of the agent started after the window's start and was seen within its "
        f"{span[1] - span[0]:.1f} s{slowest}"
    )


def _give_up_checks(figures: PodFigures, result: Result) -> list[Check]:
    """Where the kernel ends the wait, the agent's give-up within the model's range."""
    prediction = result.prediction
    if prediction is None or prediction.mechanism not in KERNEL_ENDED:
        return []
    after = figures.gives_up_after_s
    low, high = prediction.low_s - ROUNDING_S, prediction.high_s + ROUNDING_S
    ok = after is not None and low <= after <= high
    said = "none" if after is None else f"{after:.2f} s"
    return [
        Check(
            "gives up within the model's range",
            ok,
            f"stuck {figures.longest_stuck_s} s + gives up in {figures.soonest_give_up_s} s = "
            f"{said}; model {prediction.low_s:.2f}-{prediction.high_s:.2f} s "
            f"({prediction.mechanism})",
        )
    ]


def _risk_checks(figures: PodFigures, protected: str) -> list[Check]:
    if protected == "unprotected":
        count = figures.at_risk.get("no-bound/service", 0)
        return [
            Check(
                "at risk no-bound to a Service", count == 1, f"at risk {figures.at_risk or 'none'}"
            )
        ]
    if protected == "protected":
        return [Check("not at risk", not figures.at_risk, f"at risk {figures.at_risk or 'none'}")]
    return []
