"""Podman, the engine that runs the pods session's pods: ``podman kube play`` of the Pods the
workloads' controllers would create (``cluster/controllers.py``), as this machine can run it.

Debian's podman 4.3 runs here with settings of the session's own, in a ``containers.conf``
given through ``CONTAINERS_CONF`` (the host's configuration is never changed):

- runc, as crun refuses this host's hybrid cgroup layout ("cgroups in hybrid mode not
  supported"), and the cgroupfs manager (no systemd here);
- ``default_ulimits = []``: podman's default nofile and nproc limits are above this
  sandbox's hard limits (``setrlimit ... Operation not permitted``);
- a CNI network of the session's (``network_config_dir``), ``tcpecho-pods``, whose only
  plugin is ``loopback``: each pod gets a network namespace of its own with ``lo`` alone,
  which the lab wires as a CNI plugin would (``tcpecho.lab.pods``). Podman refuses a
  ``containerPort`` under ``--network none`` or ``host`` ("PortMappings can only be used
  with Bridge or slirp4netns networking") but plays it on a network, so the manifests are
  played with their ports. Podman 4.3 reads a ``containerPort`` without ``hostPort`` as a
  host port and holds it open (its conmon listens on it) in the network namespace podman
  runs in: so podman runs in the pod's node's namespace (``nsenter --net``), never the
  host's, where a kubelet would open no port at all;
- ``base_hosts_file``: the cluster DNS's answers for the Services (their names at their
  ClusterIPs), which podman puts in every container's ``/etc/hosts`` beside the pod's own
  name; the lab runs no DNS server, and the played Pods stay as their controllers make them;
- for a pod that asks ``hostPID``, ``pidns = "host"``: podman 4.3's ``kube play`` ignores
  ``hostPID`` (supported from 4.5, containers/podman#17168), and a node agent without the
  host's processes sees no pod.

Pods are created with ``--start=false``: the infra container, started first, holds the
pod's network namespace (``Played.netns_pid``), which the lab wires before the containers
start. ``remove`` is the engine's force delete, ``podman pod rm -f -t 0``. Podman leaves
the removed pod's cgroup in the systemd and unified hierarchies (``libpod_parent/<id>``)
and builds its pause image on its first pod; those the session removes too, so the host's
podman is left as it was found. Each pod made is recorded under ``/run/tcpecho-pods`` until
it is removed, so that a session that was killed has its pods removed by the next one
(``remove_stale``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.controllers import Obj, container_of

NETWORK = "tcpecho-pods"
STATE_DIR = Path("/run/tcpecho-pods")
RECORD_PREFIX = "podman-"
PAUSE_IMAGE = "localhost/podman-pause"
CGROUP_PARENT = "libpod_parent"  # the cgroupfs manager's parent of every pod's cgroup
COMMAND_TIMEOUT_S = 120.0
REMOVE_ATTEMPTS = 3
REMOVE_PAUSE_S = 1.0
CONF = """\
# The pods session's podman (cluster/podman.py); the host's configuration stays as it is.
[containers]
default_ulimits = []
base_hosts_file = "{hosts}"
pidns = "{pidns}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"

[network]
network_backend = "cni"
network_config_dir = "{networks}"
"""
LOOPBACK_ONLY = {"cniVersion": "0.4.0", "name": NETWORK, "plugins": [{"type": "loopback"}]}


class EngineError(RuntimeError):
    """Podman refused or failed; the message says which command and what podman said."""


@dataclass(frozen=True)
class Played:
    """A pod as podman created it: its infra container holds the network namespace."""

    pod: str  # the Pod's name, as played
    namespace: str  # the Kubernetes namespace it stands in
    container: str  # the container's name in the manifest
    pod_id: str
    infra_id: str
    container_id: str
    host_pid: bool
    netns_pid: int = 0  # the infra container's process, once started


class Podman:
    """The session's podman: its configuration files in ``directory`` (the caller's), every
    pod it plays removed on ``close``, with what podman leaves of them."""

    def __init__(self, directory: Path, hosts: Mapping[str, Sequence[str]]) -> None:
        self.directory = directory
        self.hosts = hosts  # address -> the names the cluster DNS answers with it
        self.record = STATE_DIR / f"{RECORD_PREFIX}{os.getpid()}"
        self._pause_images: set[str] = set()
        self._cgroup_parents: list[Path] = []
        self._played: dict[str, Played] = {}
        self.version = ""

    def __enter__(self) -> Podman:
        networks = self.directory / "networks"
        networks.mkdir(parents=True, exist_ok=True)
        (networks / f"{NETWORK}.conflist").write_text(json.dumps(LOOPBACK_ONLY))
        hosts = "".join(f"{a}\t{' '.join(names)}\n" for a, names in self.hosts.items())
        (self.directory / "hosts").write_text(hosts)
        for pidns in ("private", "host"):
            (self.directory / f"{pidns}.conf").write_text(
                CONF.format(hosts=self.directory / "hosts", pidns=pidns, networks=networks)
            )
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._pause_images = set(self._images(PAUSE_IMAGE))
        self._cgroup_parents = [p for p in _cgroup_mounts() if not (p / CGROUP_PARENT).exists()]
        self.version = "podman " + self._run(["version", "--format", "{{.Client.Version}}"])
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def configuration(self, host_pid: bool = False) -> Path:
        return self.directory / ("host.conf" if host_pid else "private.conf")

    def _run(self, args: Sequence[str], node_ns: str | None = None, host_pid: bool = False) -> str:
        """``podman args`` with the session's configuration (in ``node_ns``'s network
        namespace where given); its output, or ``EngineError`` with podman's last word."""
        prefix = ["nsenter", f"--net=/run/netns/{node_ns}"] if node_ns else []
        env = {**os.environ, "CONTAINERS_CONF": str(self.configuration(host_pid))}
        try:
            done = subprocess.run(
                [*prefix, "podman", *args],
                capture_output=True,
                text=True,
                env=env,
                check=False,
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise EngineError(f"podman {' '.join(args[:2])}: no answer within "
                              f"{COMMAND_TIMEOUT_S:g} s") from None  # fmt: skip
        if done.returncode != 0:
            said = [line for line in done.stderr.splitlines() if line.startswith("Error")]
            last = (said or done.stderr.strip().splitlines() or [f"status {done.returncode}"])[-1]
            raise EngineError(f"podman {' '.join(args[:2])}: {last}")
        return done.stdout.strip()

    def _images(self, reference: str) -> list[str]:
        listed = self._run(["images", "--filter", f"reference={reference}", "--format", "{{.ID}}"])
        return listed.split()

    # -- pods ------------------------------------------------------------------------------

    def play(self, pod: Obj, node_ns: str) -> Played:
        """Create ``pod`` on the session's network, nothing started but its infra container
        (which makes its network namespace), with podman in ``node_ns``."""
        name, container = pod["metadata"]["name"], container_of(pod)["name"]
        host_pid = bool(pod["spec"].get("hostPID"))
        played_file = self.directory / f"{name}.json"  # JSON is YAML, as kube play reads it
        played_file.write_text(json.dumps(pod, indent=2))
        said = self._run(
            ["kube", "play", "--start=false", "--network", NETWORK, str(played_file)],
            node_ns,
            host_pid,
        )
        lines = said.splitlines()
        pod_id = lines[lines.index("Pod:") + 1].strip()
        self._remember(pod_id)
        inspected = json.loads(self._run(["pod", "inspect", pod_id]))
        by_name = {c["Name"]: c["Id"] for c in inspected["Containers"]}
        played = Played(
            name,
            pod["metadata"].get("namespace", "default"),
            container,
            pod_id,
            inspected["InfraContainerID"],
            by_name[f"{name}-{container}"],
            host_pid,
        )
        self._played[pod_id] = played
        infra_pid = self.start(played, played.infra_id, node_ns)
        played = dataclasses.replace(played, netns_pid=infra_pid)
        self._played[pod_id] = played
        return played

    def start(self, played: Played, container_id: str, node_ns: str | None) -> int:
        """Start one of the pod's containers; its process's PID (as this machine sees it)."""
        self._run(["start", container_id], node_ns, played.host_pid)
        pid = int(self.inspect(container_id)["State"]["Pid"])
        if pid <= 0:  # it ran and ended already
            raise self.ended(played, container_id)
        return pid

    def ended(self, played: Played, container_id: str | None = None) -> EngineError:
        """The error for a container that exited at once: its status and its last word."""
        container_id = container_id or played.container_id
        try:  # podman may not have the status yet: wait for it
            status = self._run(["wait", container_id], host_pid=played.host_pid)
        except EngineError:
            status = "unknown"
        said = self.log(played, container_id).strip().splitlines()[-1:]
        return EngineError(
            f"{played.pod}: exited at once (status {status})" + (f": {said[0]}" if said else "")
        )

    def inspect(self, container_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self._run(["container", "inspect", container_id]))
        return found[0]

    def log_command(self, played: Played) -> list[str]:
        """A command whose output is the container's log from its start, ending with it, with
        the container's exit status as its own (``podman wait``)."""
        conf = f"CONTAINERS_CONF={self.configuration(played.host_pid)}"
        follow = 'podman logs --follow "$1"; status=$(podman wait "$1") && exit "$status"'
        return ["env", conf, "sh", "-c", follow, "podman-logs", played.container_id]

    def log(self, played: Played, container_id: str | None = None) -> str:
        """What the container wrote, stdout and stderr, so far."""
        done = subprocess.run(
            ["podman", "logs", container_id or played.container_id],
            capture_output=True,
            text=True,
            env={**os.environ, "CONTAINERS_CONF": str(self.configuration(played.host_pid))},
            check=False,
        )
        return done.stdout + done.stderr

    def stop(self, played: Played, grace_s: float) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``, as a kubelet stops a container; its exit
        status."""
        self._run(["stop", "--time", str(round(grace_s)), played.container_id])
        code = self.inspect(played.container_id)["State"].get("ExitCode")
        return None if code is None else int(code)

    def remove(self, played: Played) -> None:
        """The engine's force delete of the pod; what it leaves of it goes too."""
        if played.pod_id not in self._played:
            return
        left = remove_pods([played.pod_id], self.configuration(played.host_pid))
        if left:  # kept, and recorded: close, or the next session, tries again
            raise EngineError(f"podman pod rm {played.pod}: {left[played.pod_id]}")
        del self._played[played.pod_id]
        self._forget(played.pod_id)

    # -- what the session made -------------------------------------------------------------

    def _remember(self, pod_id: str) -> None:
        """The pod, and what podman made for it that was not there before this session: its
        pause image (built on the first pod) and its cgroups' parent in each hierarchy."""
        made = [f"pod {pod_id}"]
        made += [f"image {i}" for i in set(self._images(PAUSE_IMAGE)) - self._pause_images]
        made += [f"cgroup {m / CGROUP_PARENT}" for m in self._cgroup_parents]
        kept = self.record.read_text().splitlines() if self.record.exists() else []
        lines = kept + [line for line in made if line not in kept]
        self.record.write_text("".join(f"{line}\n" for line in lines))

    def _forget(self, pod_id: str) -> None:
        if self.record.exists():
            lines = self.record.read_text().splitlines()
            kept = [line for line in lines if line != f"pod {pod_id}"]
            self.record.write_text("".join(f"{line}\n" for line in kept))

    def close(self) -> None:
        """Every pod still here removed, then the pause image and the cgroup parents podman
        made for this session's pods; the record goes once nothing of it is left."""
        for played in list(self._played.values()):
            try:
                self.remove(played)
            except EngineError:
                continue  # the record keeps it: the next session removes it
        if self.record.exists():
            lines = self.record.read_text().splitlines()
            if not any(line.startswith("pod ") for line in lines):
                remove_made(lines, self.configuration())
                self.record.unlink()
        with contextlib.suppress(OSError):
            STATE_DIR.rmdir()  # only when empty: another session's records stay


def remove_made(lines: Sequence[str], conf: Path) -> None:
    """What a record names: pods (removed with what podman leaves of them), then pause
    images and cgroup parents, each only where nothing else uses it any more."""
    remove_pods([line.split()[1] for line in lines if line.startswith("pod ")], conf)
    for line in lines:
        kind, _, what = line.partition(" ")
        if kind == "image":  # in use by another session's pods: theirs to keep
            subprocess.run(
                ["podman", "rmi", what],
                capture_output=True,
                env={**os.environ, "CONTAINERS_CONF": str(conf)},
                check=False,
            )
        elif kind == "cgroup":
            with contextlib.suppress(OSError):  # another podman's pods are there
                Path(what).rmdir()


def remove_pods(pod_ids: Sequence[str], conf: Path) -> dict[str, str]:
    """``podman pod rm -f -t 0`` of each (a pod already gone is no error), tried again once
    where podman refused (a container of it still being cleaned up after its exit), then the
    cgroups podman leaves of them; the pods still there, with what podman said."""
    left: dict[str, str] = {}
    for pod_id in pod_ids:
        for attempt in range(REMOVE_ATTEMPTS):
            done = subprocess.run(
                ["podman", "pod", "rm", "--force", "--ignore", "--time", "0", pod_id],
                capture_output=True,
                text=True,
                env={**os.environ, "CONTAINERS_CONF": str(conf)},
                check=False,
                timeout=COMMAND_TIMEOUT_S,
            )
            if done.returncode == 0:
                left.pop(pod_id, None)
                break
            left[pod_id] = (done.stderr.strip().splitlines() or ["refused"])[-1]
            if attempt + 1 < REMOVE_ATTEMPTS:
                time.sleep(REMOVE_PAUSE_S)
    for pod_id in pod_ids:
        for mount in _cgroup_mounts():
            leftover = mount / CGROUP_PARENT / pod_id
            try:
                leftover.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                continue  # not empty: still running, podman's to remove
    return left


def _cgroup_mounts(mountinfo: str | None = None) -> list[Path]:
    """Every cgroup hierarchy this machine mounts (v1 controllers, systemd's, unified)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        separator = fields.index("-") if "-" in fields else -1
        if separator > 0 and fields[separator + 1] in ("cgroup", "cgroup2"):
            mounts.append(Path(fields[4]))
    return mounts


def remove_stale() -> list[str]:
    """What sessions no longer running made (their records under ``STATE_DIR``), removed:
    their pods, pause image and cgroup parents; the pods' IDs."""
    if not STATE_DIR.is_dir():
        return []
    removed: list[str] = []
    for record in sorted(STATE_DIR.glob(f"{RECORD_PREFIX}*")):
        pid = record.name.removeprefix(RECORD_PREFIX)
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        lines = record.read_text().splitlines()
        with (
            tempfile.TemporaryDirectory(prefix="tcpecho-podman-") as directory,
            Podman(Path(directory), {}) as engine,
        ):
            remove_made(lines, engine.configuration())
        record.unlink()
        removed += [line.split()[1] for line in lines if line.startswith("pod ")]
    with contextlib.suppress(OSError):
        STATE_DIR.rmdir()  # only when empty
    return removed
