"""Which Kubernetes pod and container a process is in, from what every kubelet node has and
without the API server (``PodLookup``, ``PodIdentity``).

Two sources, both written by the kubelet and its container runtime on every node:

- The process's cgroup (``/proc/PID/cgroup``) gives the pod UID and the container ID
  (``pod_cgroup_of``). The kubelet puts each pod in a cgroup named ``pod<UID>`` under
  ``kubepods`` (guaranteed pods) or its QoS class, ``kubepods/burstable`` or
  ``kubepods/besteffort`` (kubernetes pkg/kubelet/cm/pod_container_manager_linux.go,
  ``GetPodContainerName``; qos_container_manager_linux.go). With the cgroupfs driver that is
  the path itself; with the systemd driver the same names joined by ``-`` become slices,
  each ``-`` of a name escaped to ``_`` (cgroup_manager_linux.go, ``ToSystemd``,
  ``escapeSystemdCgroupName``): ``kubepods.slice/kubepods-besteffort.slice/
  kubepods-besteffort-pod<uid_with_underscores>.slice``. ``NewCgroupName`` there refuses a
  ``_`` in any name, so turning ``_`` back into ``-`` is exact. A kubelet given
  ``--cgroup-root`` (kind's ``/kubelet``) prefixes every name (``kubelet-kubepods-...``).
  Below the pod's cgroup, the runtime names each container's: containerd ``<id>`` with
  cgroupfs and ``cri-containerd-<id>.scope`` with systemd (containerd
  internal/cri/server/podsandbox/helpers_linux.go, ``getCgroupsPath``, ``slice:prefix:name``
  that runc turns into ``prefix-name.scope``); CRI-O ``crio-<id>`` and ``crio-<id>.scope``,
  its monitor conmon ``crio-conmon-<id>`` and ``crio-conmon-<id>.scope``, which is no
  container (cri-o internal/config/cgmgr/cgroupfs_linux.go, systemd_linux.go,
  ``containerCgroupPath``, ``MoveConmonToCgroup``); Docker through cri-dockerd
  ``docker-<id>.scope``. crun adds a ``container`` cgroup below the container's, and a
  program may make its own: anything deeper is the same container. The pod sandbox (the
  ``pause`` process) is a container of its own whose ID names no container of the pod.
- The kubelet's log directories give the names. ``/var/log/pods/<namespace>_<pod>_<uid>/
  <container>/<restart>.log`` (kuberuntime/helpers.go, ``BuildPodLogsDirectory``; the kubelet
  reads the UID back as the last ``_`` field, ``parsePodUIDFromLogsDirectory``) names the
  namespace and pod of a UID, but nothing there carries the container ID. The kubelet's
  legacy links do: ``/var/log/containers/<pod>_<namespace>_<container>-<id>.log`` pointing at
  that log file (kuberuntime/legacy.go, ``logSymlink``, made in kuberuntime_container.go
  ``startContainer`` once the container has started, and cut to 255 bytes, so the ID can be
  cut short). Without those links, or for the sandbox, the container stays unknown: never
  guessed. Namespace and pod names are DNS-1123 and hold no ``_``, so a directory name of
  three ``_`` fields is the kubelet's; any other is counted and skipped.

A process in no pod is the host's (None). Nothing here raises for a process that is gone,
a file that cannot be read or a name that is odd: each is counted in ``Skipped``. Names are
kept as read, bytes that are not UTF-8 replaced (U+FFFD) and counted; escaping them for a
terminal is the renderer's job.

What the kernel shows depends on the reader's cgroup namespace (cgroup_namespaces(7)): in
one of its own (containerd gives every unprivileged container one on cgroup v2:
internal/cri/server/container_create_linux.go, ``WithLinuxNamespace(CgroupNamespace)``) a path
outside it starts with ``/..``, one ``..`` a level. Pods other than the reader's own still
show their pod cgroup below the common ancestor; the reader's own pod does not (its
containers read as ``/`` or ``/../<container>``), so they read as the host's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

PROC = Path("/proc")
POD_LOGS = Path("/var/log/pods")
CONTAINER_LOGS = Path("/var/log/containers")

# The cgroups a pod's cgroup sits in, with the cgroupfs driver: kubepods itself (guaranteed
# pods) or its QoS class.
_POD_PARENTS = frozenset({"kubepods", "burstable", "besteffort"})
# Where the reader's cgroup namespace hides the parent, only a UID of the kubelet's shapes
# counts: the API server's UUIDs, and a static pod's MD5 in hex (pkg/kubelet/config/common.go,
# ``applyDefaults``).
_HIDDEN_PARENT_UID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|[0-9a-f]{32}")
_MONITOR_PREFIX = "crio-conmon-"  # checked before crio-, which it starts with
_CONTAINER_PREFIXES = ("cri-containerd-", "crio-", "docker-")
# The kubelet resolves a container from as few as 6 characters of its ID in a legacy link's
# name (legacy.go, getContainerIDFromLegacyLogSymlink); runtimes give 64.
_SHORTEST_ID = 6
_FULL_ID = 64
_HEX = re.compile(r"[0-9a-f]+")
_DELETED = " (deleted)"


@dataclass(frozen=True)
class PodIdentity:
    """The pod a process is in. ``namespace`` and ``pod`` are None where no log directory
    or link names the UID; ``container`` is None where no link names the container ID (the
    pod sandbox, CRI-O's conmon, a node without ``/var/log/containers``); ``container_id``
    is None for a process in the pod's own cgroup or in conmon's."""

    namespace: str | None
    pod: str | None
    container: str | None
    uid: str
    container_id: str | None


@dataclass(frozen=True)
class PodCgroup:
    """What a cgroup path says of a pod: its UID (with ``-``, as the API server shows it),
    the container's ID, or which container's monitor (conmon) it is."""

    uid: str
    container_id: str | None
    monitor_of: str | None = None


@dataclass
class Skipped:
    """What a lookup could not read or did not take, counted: nothing is refused silently."""

    vanished: int = 0  # processes gone (or, on v1, exited) before their cgroup was read
    unreadable: int = 0  # cgroup files that exist but could not be read
    unreadable_log_roots: int = 0  # log roots (pods, containers) that could not be listed
    odd_log_names: int = 0  # entries of a log root not named as the kubelet names them
    undecodable_names: int = 0  # names that were not UTF-8, kept with U+FFFD
    pods_without_logs: int = 0  # processes whose pod UID no log directory or link names


@dataclass(frozen=True)
class PodSources:
    """Where the node's processes and the kubelet's logs are (the agent mounts them)."""

    proc: Path = PROC
    pod_logs: Path = POD_LOGS
    container_logs: Path | None = CONTAINER_LOGS  # None: do not look for container names


def pod_cgroup_of(cgroup_file: str) -> PodCgroup | None:
    """The pod a ``/proc/PID/cgroup`` text places its process in, or None: the cgroup v2 line
    (``0::path``) first, then the v1 hierarchies as listed; on a hybrid host the kubelet's
    may be either."""
    unified: list[str] = []
    legacy: list[str] = []
    for line in cgroup_file.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, colon, path = rest.partition(":")  # a cgroup's name may hold ':'
        if colon:
            (unified if hierarchy == "0" and not controllers else legacy).append(path)
    for path in unified + legacy:
        found = pod_cgroup_in(path)
        if found is not None:
            return found
    return None


def pod_cgroup_in(path: str) -> PodCgroup | None:
    """The pod one cgroup path is in, or None; the path as ``/proc/PID/cgroup`` shows it,
    relative to the reader's cgroup namespace (a leading ``/..`` climbs out of it). On
    cgroup v2 an exited process not yet reaped keeps its cgroup, marked ``(deleted)`` once
    that is removed (Documentation/admin-guide/cgroup-v2.rst, "Processes")."""
    path = path.removesuffix(_DELETED)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for index, part in enumerate(parts):
        uid = _pod_uid(part, parts[index - 1] if index else None)
        if uid is not None:
            below = parts[index + 1] if index + 1 < len(parts) else None
            return _in_pod(uid, below)
    return None


def _pod_uid(part: str, parent: str | None) -> str | None:
    """The UID if ``part`` is a pod's cgroup under ``parent``: a systemd slice whose last
    ``-`` field is ``pod<uid>`` below a ``kubepods`` field (the name itself says where it
    is), or a cgroupfs ``pod<uid>`` right under kubepods or its QoS class. Where the reader's
    namespace hides the parent (``..``), the UID must look like one. Pods are never at the
    hierarchy's root, so a ``pod...`` there (no parent) is not one."""
    if part.endswith(".slice"):
        *above, last = part.removesuffix(".slice").split("-")
        if "kubepods" in above and last.startswith("pod") and len(last) > len("pod"):
            return last.removeprefix("pod").replace("_", "-")
        return None
    if not part.startswith("pod") or len(part) == len("pod"):
        return None
    uid = part.removeprefix("pod")
    if parent in _POD_PARENTS or (parent == ".." and _HIDDEN_PARENT_UID.fullmatch(uid)):
        return uid
    return None


def _in_pod(uid: str, below: str | None) -> PodCgroup:
    """The pod ``uid`` with the container whose cgroup is ``below`` the pod's (None: the
    process is in the pod's own cgroup)."""
    if below is None:
        return PodCgroup(uid, None)
    name = below.removesuffix(".scope")
    if name.startswith(_MONITOR_PREFIX):
        return PodCgroup(uid, None, monitor_of=name.removeprefix(_MONITOR_PREFIX) or None)
    for prefix in _CONTAINER_PREFIXES:
        if name.startswith(prefix):
            return PodCgroup(uid, name.removeprefix(prefix) or None)
    return PodCgroup(uid, name)  # containerd and Docker with cgroupfs: the bare ID


@dataclass(frozen=True)
class PodLogDirectory:
    """One pod's log directory, ``<namespace>_<pod>_<uid>``."""

    namespace: str
    pod: str
    uid: str


@dataclass(frozen=True)
class ContainerLogLink:
    """One legacy link, ``<pod>_<namespace>_<container>-<id>.log``; ``container_id`` is the
    start of the ID where the kubelet cut the name to 255 bytes; ``uid`` is from the log
    file it points at (None where it points at none the kubelet would write)."""

    container_id: str
    namespace: str
    pod: str
    container: str
    uid: str | None


@dataclass
class KubeletLogs:
    """The node's pod log directories and container links, as read once."""

    pods: dict[str, PodLogDirectory] = field(default_factory=dict)  # by UID
    links: dict[str, ContainerLogLink] = field(default_factory=dict)  # by container ID
    cut_links: list[ContainerLogLink] = field(default_factory=list)  # IDs cut short

    def link(self, container_id: str | None) -> ContainerLogLink | None:
        if container_id is None:
            return None
        found = self.links.get(container_id)
        if found is not None:
            return found
        for link in self.cut_links:
            if container_id.startswith(link.container_id):
                return link
        return None


def read_kubelet_logs(sources: PodSources, skipped: Skipped) -> KubeletLogs:
    """Every pod log directory and container link under ``sources``, counting in
    ``skipped`` the roots that cannot be listed and the names that are not the kubelet's."""
    logs = KubeletLogs()
    for _, name in _entries(sources.pod_logs, skipped):
        directory = _pod_log_directory(name)
        if directory is None:
            skipped.odd_log_names += 1
        else:
            logs.pods[directory.uid] = directory
    if sources.container_logs is not None:
        for raw, name in _entries(sources.container_logs, skipped):
            link = _container_log_link(name, _link_target(sources.container_logs, raw))
            if link is None:
                skipped.odd_log_names += 1
            elif len(link.container_id) < _FULL_ID:
                logs.cut_links.append(link)
            else:
                logs.links[link.container_id] = link
    return logs


def _entries(root: Path, skipped: Skipped) -> list[tuple[bytes, str]]:
    """The entries of ``root``, as they are and decoded; none (counted) when it cannot be
    listed."""
    try:
        raw = os.listdir(os.fsencode(root))
    except OSError:
        skipped.unreadable_log_roots += 1
        return []
    return [(name, _decoded(name, skipped)) for name in raw]


def _decoded(raw: bytes, skipped: Skipped) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        skipped.undecodable_names += 1
        return raw.decode(errors="replace")


def _pod_log_directory(name: str) -> PodLogDirectory | None:
    fields = name.split("_")
    if len(fields) != 3 or not all(fields):
        return None
    namespace, pod, uid = fields
    return PodLogDirectory(namespace, pod, uid)


def _link_target(root: Path, name: bytes) -> str | None:
    try:
        return os.readlink(os.path.join(os.fsencode(root), name)).decode(errors="replace")
    except OSError:  # gone meanwhile, or not a link
        return None


def _container_log_link(name: str, target: str | None) -> ContainerLogLink | None:
    """The link named ``name`` (pointing at ``target``), or None when the name is not
    ``<pod>_<namespace>_<container>-<id>.log`` with an ID of at least 6 hex digits, or when
    the log file it points at is another container's."""
    fields = name.removesuffix(".log").split("_")
    if not name.endswith(".log") or len(fields) != 3 or not all(fields):
        return None
    pod, namespace, container_and_id = fields
    container, dash, container_id = container_and_id.rpartition("-")
    if not dash or not container or len(container_id) < _SHORTEST_ID:
        return None
    if not _HEX.fullmatch(container_id):
        return None
    uid = None
    parts = PurePosixPath(target).parts if target else ()
    if len(parts) >= 3:
        directory = _pod_log_directory(parts[-3])
        if directory is not None:
            if (directory.namespace, directory.pod, parts[-2]) != (namespace, pod, container):
                return None  # the name was cut into the container's name, or is not this file's
            uid = directory.uid
    return ContainerLogLink(container_id, namespace, pod, container, uid)


def _in_root_only(cgroup_file: str) -> bool:
    """Whether every hierarchy of a ``/proc/PID/cgroup`` text shows the root cgroup (``/``,
    or only ``..`` above the reader's cgroup namespace)."""
    for line in cgroup_file.splitlines():
        path = line.split(":", 2)[-1]
        if any(part not in ("", "..") for part in path.split("/")):
            return False
    return True


class PodLookup:
    """The pod of each process, for one snapshot: the log directories are read once, on the
    first process found in a pod, and each process's answer is kept. A new snapshot takes a
    new lookup, so pods started meanwhile are seen."""

    def __init__(self, sources: PodSources | None = None) -> None:
        self.sources = sources or PodSources()
        self.skipped = Skipped()
        self._logs: KubeletLogs | None = None
        self._identities: dict[int, PodIdentity | None] = {}

    def of(self, pid: int) -> PodIdentity | None:
        """The pod process ``pid`` is in; None for the host's, and for one gone (counted)."""
        if pid not in self._identities:
            self._identities[pid] = self._identity(pid)
        return self._identities[pid]

    @property
    def logs(self) -> KubeletLogs:
        if self._logs is None:
            self._logs = read_kubelet_logs(self.sources, self.skipped)
        return self._logs

    def _identity(self, pid: int) -> PodIdentity | None:
        text = self._cgroup_file(pid)
        if text is None:
            return None
        placement = pod_cgroup_of(text)
        if placement is None:
            # On cgroup v1 a process that has exited but is not yet reaped shows the root
            # cgroup, whatever it was in: one in the root is asked whether it still runs.
            if _in_root_only(text) and self._exited(pid):
                self.skipped.vanished += 1
            return None
        return self._named(placement)

    def _named(self, placement: PodCgroup) -> PodIdentity:
        directory = self.logs.pods.get(placement.uid)
        link = self.logs.link(placement.container_id)
        if link is not None and link.uid not in (None, placement.uid):
            self.skipped.odd_log_names += 1  # a cut ID that starts another pod's container's
            link = None
        if directory is None and link is None:
            self.skipped.pods_without_logs += 1
        named = directory or link
        return PodIdentity(
            namespace=named.namespace if named else None,
            pod=named.pod if named else None,
            container=link.container if link else None,
            uid=placement.uid,
            container_id=placement.container_id,
        )

    def _cgroup_file(self, pid: int) -> str | None:
        try:
            raw = (self.sources.proc / str(pid) / "cgroup").read_bytes()
        except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
            self.skipped.vanished += 1
            return None
        except OSError:
            self.skipped.unreadable += 1
            return None
        return raw.decode(errors="replace")

    def _exited(self, pid: int) -> bool:
        """Whether ``pid`` has exited (a zombie, or gone by now): its state, the field after
        the command's closing parenthesis in ``/proc/PID/stat`` (proc(5))."""
        try:
            stat = (self.sources.proc / str(pid) / "stat").read_bytes()
        except OSError:
            return True
        state = stat.rpartition(b")")[2].split()[:1]
        return state in ([b"Z"], [b"X"])
