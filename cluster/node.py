"""The node the pods session starts its pods on, laid out as a kubelet lays one out (``Node``).

A node agent names a connection's pod from what the kubelet and its runtime leave on every
node (``tcpecho.watch.pods``): the process's cgroup gives the pod UID and the container ID,
the kubelet's log directories the namespace and pod, its container log links the container.
So each pod the session starts gets them, as the kubelet with the systemd cgroup driver and
containerd would give them:

- in the host's cgroup v2 hierarchy (``/sys/fs/cgroup/unified`` on a hybrid host,
  ``/sys/fs/cgroup`` on a v2 one), under a cgroup of the session's own (``top``):
  ``kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/
  cri-containerd-<id>.scope`` (``kubelet.container_cgroup``), which the container's first
  process joins before it runs (``procs``);
- under a directory standing for the node's root (``root``): ``var/log/pods/<namespace>_
  <pod>_<uid>/<container>/0.log`` and the link ``var/log/containers/<pod>_<namespace>_
  <container>-<id>.log`` to it, the target written as the node's path
  (``/var/log/pods/...``), as the kubelet writes it. The log files stay empty: the lab reads
  the containers' output itself.

``close`` kills whatever is left in the cgroups (``cgroup.kill``: only the session's pods
run there) and removes them, innermost first; the directories go with the session's
working directory. ``remove_stale`` removes the cgroups of sessions that were killed before
they could.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path

from cluster.kubelet import Launch, container_cgroup

PREFIX = "tcpecho-pods-"
LINK_NAME_MAX = 251  # the kubelet cuts a link's name (without ``.log``) for ext4's 255 bytes
RMDIR_ATTEMPTS = 100  # the kernel empties a cgroup just after its last process is reaped
RMDIR_PAUSE_S = 0.05


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
    """The session's node: ``root`` for its hostPaths and logs, ``top`` for its cgroups."""

    def __init__(self, root: Path, prefix: str = PREFIX, mount: Path | None = None) -> None:
        self.root = root
        # The session's PID, for a later session to tell whether it still runs, and a token:
        # two nodes of one process never share a cgroup.
        self.top = (mount or cgroup2_mount()) / f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
        self.made: list[Path] = []

    @property
    def pod_logs(self) -> Path:
        return self.root / "var" / "log" / "pods"

    @property
    def container_logs(self) -> Path:
        return self.root / "var" / "log" / "containers"

    def __enter__(self) -> Node:
        for directory in (self.pod_logs, self.container_logs):
            directory.mkdir(parents=True, exist_ok=True)
        self._make(self.top)
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add_pod(self, spec: Launch) -> None:
        """The pod's cgroups, and its log directory and container link."""
        place = self.top
        for part in container_cgroup(spec).split("/"):
            place = place / part
            if not place.exists():
                self._make(place)
        directory = f"{spec.namespace}_{spec.pod}_{spec.pod_uid}"
        log = self.pod_logs / directory / spec.container / "0.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        link = f"{spec.pod}_{spec.namespace}_{spec.container}-{spec.container_id}"
        target = Path("/var/log/pods") / directory / spec.container / "0.log"
        (self.container_logs / f"{link[:LINK_NAME_MAX]}.log").symlink_to(target)

    def cgroup(self, spec: Launch) -> Path:
        """The container's cgroup directory."""
        return self.top / container_cgroup(spec)

    def procs(self, spec: Launch) -> Path:
        """The container's ``cgroup.procs`` as a command run by ``ip netns exec`` reaches it:
        that mounts a sysfs of the namespace's own over ``/sys``, without the cgroup mounts,
        so the path goes through this process's root, which still has them."""
        inside = self.cgroup(spec).relative_to("/")
        return Path(f"/proc/{os.getpid()}/root") / inside / "cgroup.procs"

    def _make(self, place: Path) -> None:
        try:
            place.mkdir()
        except OSError as error:
            raise NodeError(f"cannot make the cgroup {place}: {error.strerror}") from None
        self.made.append(place)

    def close(self) -> None:
        """Kill what is left in the cgroups, then remove them, innermost first."""
        for place in reversed(self.made):
            remove_cgroup(place)
        self.made.clear()


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
    """The cgroups of earlier sessions that are no longer running, removed."""
    top = mount or cgroup2_mount()
    removed = []
    for place in sorted(top.glob(f"{prefix}*")):
        found = re.fullmatch(rf"{re.escape(prefix)}(\d+)-[0-9a-f]+", place.name)
        if found is None or Path(f"/proc/{found.group(1)}").exists():
            continue
        remove_cgroup(place)
        removed.append(place)
    return removed
