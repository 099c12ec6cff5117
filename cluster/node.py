"""The node the pods session's pods run on, laid out as a kubelet lays one out (``Node``).

A node agent names a connection's pod from what the kubelet and its runtime leave on every
node (``tcpecho.watch.pods``): the process's cgroup gives the pod UID and the container ID,
the kubelet's log directories the namespace and pod, its container log links the container.
Podman lays out none of it (its cgroups are ``libpod_parent/<pod id>/libpod-<id>``, and it
keeps no ``/var/log/pods``), so the session lays it out for each pod podman starts, as the
kubelet with the systemd cgroup driver and containerd would, with podman's container ID:

- in the host's cgroup v2 hierarchy (``/sys/fs/cgroup/unified`` on a hybrid host,
  ``/sys/fs/cgroup`` on a v2 one), under a cgroup of the session's own (``top``):
  ``kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/
  cri-containerd-<id>.scope`` (``container_cgroup``), which the container's process joins
  as soon as podman has started it (``join``), before the lab's fault;
- under the node's root (``root``, the host's ``/``, where the agent's DaemonSet mounts
  them from): ``var/log/pods/<namespace>_<pod>_<uid>/<container>/0.log`` and the link
  ``var/log/containers/<pod>_<namespace>_<container>-<id>.log`` to it, as the kubelet
  writes them. The log files stay empty: the lab reads the containers' logs from podman.

``close`` kills whatever is left in the cgroups (``cgroup.kill``: only the session's pods
run there) and removes them, innermost first, and removes the log entries it made (and the
two log directories, when it made them). What it made outside its cgroups is recorded under
``/run/tcpecho-pods`` until then, so that ``remove_stale`` removes what a session that was
killed left, cgroups and log entries alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PREFIX = "tcpecho-pods-"
STATE_DIR = Path("/run/tcpecho-pods")
RECORD_PREFIX = "node-"
LINK_NAME_MAX = 251  # the kubelet cuts a link's name (without ``.log``) for ext4's 255 bytes
RMDIR_ATTEMPTS = 100  # the kernel empties a cgroup just after its last process is reaped
RMDIR_PAUSE_S = 0.05


@dataclass(frozen=True)
class Placed:
    """A pod's container as the kubelet places it on the node."""

    namespace: str
    pod: str
    pod_uid: str  # the API server's UID for the pod
    container: str
    container_id: str  # the runtime's, 64 hex digits
    qos_class: str  # Guaranteed, Burstable or BestEffort


def pod_cgroup(placed: Placed) -> str:
    """The pod's cgroup as the kubelet names it with the systemd driver, below the cgroup
    root: ``kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid>.slice``, the
    UID's ``-`` escaped to ``_`` (pod_container_manager_linux.go, cgroup_manager_linux.go)."""
    uid = placed.pod_uid.replace("-", "_")
    if placed.qos_class == "Guaranteed":
        return f"kubepods.slice/kubepods-pod{uid}.slice"
    qos = placed.qos_class.lower()
    return f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"


def container_cgroup(placed: Placed) -> str:
    """The container's cgroup as containerd names it with the systemd driver, below the
    pod's: ``cri-containerd-<id>.scope``."""
    return f"{pod_cgroup(placed)}/cri-containerd-{placed.container_id}.scope"


class NodeError(RuntimeError):
    """The node could not be laid out (no cgroup v2 hierarchy, a cgroup refused)."""


def cgroup2_mount(mountinfo: str | None = None) -> Path:
    """Where this machine mounts the cgroup v2 hierarchy (the first, as the kernel lists)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    for line in text.splitlines():
        fields = line.split()
        if " - cgroup2 " in line and len(fields) > 4:
            return Path(fields[4])
    raise NodeError("this machine mounts no cgroup v2 hierarchy: no kubelet cgroups")


class Node:
    """The session's node: ``root`` for its log directories, ``top`` for its cgroups."""

    def __init__(self, root: Path = Path("/"), prefix: str = PREFIX, mount: Path | None = None):
        self.root = root
        # The session's PID, for a later session to tell whether it still runs, and a token:
        # two nodes of one process never share a cgroup.
        self.top = (mount or cgroup2_mount()) / f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
        self.made: list[Path] = []  # cgroups
        self.written: list[str] = []  # what remove_written takes, removed in reverse
        self.record = STATE_DIR / f"{RECORD_PREFIX}{os.getpid()}-{self.top.name}"

    @property
    def pod_logs(self) -> Path:
        return self.root / "var" / "log" / "pods"

    @property
    def container_logs(self) -> Path:
        return self.root / "var" / "log" / "containers"

    def __enter__(self) -> Node:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        for directory in (self.pod_logs, self.container_logs):
            if not directory.is_dir():
                self._wrote(directory, whole=False)
                directory.mkdir(parents=True)
        self._make(self.top)
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add_pod(self, placed: Placed) -> None:
        """The pod's cgroups, and its log directory and container link."""
        place = self.top
        for part in container_cgroup(placed).split("/"):
            place = place / part
            if not place.exists():
                self._make(place)
        directory = f"{placed.namespace}_{placed.pod}_{placed.pod_uid}"
        log = self.pod_logs / directory / placed.container / "0.log"
        self._wrote(self.pod_logs / directory)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        link = f"{placed.pod}_{placed.namespace}_{placed.container}-{placed.container_id}"
        target = Path("/var/log/pods") / directory / placed.container / "0.log"
        linked = self.container_logs / f"{link[:LINK_NAME_MAX]}.log"
        self._wrote(linked)
        linked.symlink_to(target)

    def cgroup(self, placed: Placed) -> Path:
        """The container's cgroup directory."""
        return self.top / container_cgroup(placed)

    def join(self, placed: Placed, pid: int) -> None:
        """Move the container's process (all its threads) into its kubelet cgroup."""
        try:
            (self.cgroup(placed) / "cgroup.procs").write_text(str(pid))
        except OSError as error:
            raise NodeError(f"cannot move {pid} into {self.cgroup(placed)}: {error}") from None

    def _make(self, place: Path) -> None:
        try:
            place.mkdir()
        except OSError as error:
            raise NodeError(f"cannot make the cgroup {place}: {error.strerror}") from None
        self.made.append(place)

    def _wrote(self, path: Path, whole: bool = True) -> None:
        """Recorded before it is made: a session killed in between leaves it named.
        ``whole``: removed with what is in it; else only while empty (another session's
        pods may have entries there)."""
        line = f"{'whole' if whole else 'empty'} {path}"
        self.written.append(line)
        with self.record.open("a") as record:
            record.write(line + "\n")

    def close(self) -> None:
        """Kill what is left in the cgroups, then remove them, innermost first; then the
        log entries and directories made."""
        for place in reversed(self.made):
            remove_cgroup(place)
        self.made.clear()
        remove_written(reversed(self.written))
        self.written.clear()
        self.record.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            STATE_DIR.rmdir()  # only when empty: another session's records stay


def remove_written(lines: Iterable[str]) -> None:
    """The log entries and directories a node made (``whole <path>``, ``empty <path>``)."""
    for line in lines:
        how, _, name = line.partition(" ")
        path = Path(name)
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif how == "whole":
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.rmdir()


def remove_cgroup(place: Path) -> None:
    """Remove one cgroup (its children first), killing what still runs in it."""
    if not place.is_dir():
        return
    for child in [p for p in place.iterdir() if p.is_dir()]:
        remove_cgroup(child)
    for attempt in range(RMDIR_ATTEMPTS):
        try:
            place.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == RMDIR_ATTEMPTS - 1:
                raise
            with contextlib.suppress(OSError):  # gone, or a kernel without cgroup.kill
                (place / "cgroup.kill").write_text("1")
            time.sleep(RMDIR_PAUSE_S)


def remove_stale(prefix: str = PREFIX, mount: Path | None = None) -> list[Path]:
    """The cgroups and log entries of earlier sessions that are no longer running, removed;
    the cgroups."""
    top = mount or cgroup2_mount()
    removed = []
    for place in sorted(top.glob(f"{prefix}*")):
        found = re.fullmatch(rf"{re.escape(prefix)}(\d+)-[0-9a-f]+", place.name)
        if found is None or Path(f"/proc/{found.group(1)}").exists():
            continue
        remove_cgroup(place)
        removed.append(place)
    for record in sorted(STATE_DIR.glob(f"{RECORD_PREFIX}*")) if STATE_DIR.is_dir() else []:
        pid = record.name.removeprefix(RECORD_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_written(reversed(record.read_text().splitlines()))
            record.unlink(missing_ok=True)
    return removed
