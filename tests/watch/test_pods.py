"""Pod identity without the API server (``tcpecho.watch.pods``): ``/proc/PID/cgroup`` texts
for each cgroup driver and runtime, the kubelet's log directories and links as it lays them
out, and, as root, real cgroups laid out as the kubelet and the runtimes lay them, with real
processes in them, read as the node agent reads them (in its own cgroup namespace too)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tcpecho
from tcpecho.watch.pods import (
    PodCgroup,
    PodIdentity,
    PodLookup,
    PodSources,
    Skipped,
    pod_cgroup_of,
    read_kubelet_logs,
)
from tests.ci_checks import skip_unpromised

SAMPLES = Path(__file__).parent / "cgroup_samples"
requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (makes cgroups and moves processes into them)"
)
PREFIX = "tpodB-"

U1, U2, U3 = (
    "b39fb442-f5fd-4ee8-a5e3-cfa6b4889458",
    "9c28b7a6-9822-422c-ae0b-7429174ff1f4",
    "8e4febc7-dc0d-4911-a75e-39c35c57b42d",
)
U4, U5, U6 = (
    "98f71c90-0a39-4712-a5a1-c2312d499820",
    "4448302a-44ee-4c92-ab14-2c4ad9f41d87",
    "aa8347fe-f83e-40d6-a972-991c1c9e933a",
)
U7, U8, U9 = (
    "f9fed53d-1778-4c53-ac59-ae48244afb2d",
    "b128680e-4955-4751-acb4-40bb161e0d1b",
    "2e8f5d22-cf59-4bd8-a1b1-80fcb0319e3a",
)
U10, U11 = "4f4b142d-b7b4-4208-ae50-1fd7b3374c0b", "b5e73804-f28b-49ef-abba-fe1f5f23be90"
STATIC_UID = "a81259cef8e959c624df1d456e5d3297"  # a static pod's: MD5 in hex, no dashes
C1 = "225ef64e9ecabbad5b4da660887c5e41bc0e9f9aecb44cd68421d0fd8a2283f7"
C2 = "9b24028d16bc9753f4f837746c63dc2ce2c973d135293681b7db6e8e5dadb80a"
C3 = "a1b70330683520b933e22c248cc641d3e89fc26c19f2998e504f8984c2cba785"
C4 = "3def6468d50e94b50ee02c39360d60a0606b02daae5add8b6aea543e54047564"
C5 = "c9463eb4c86871c75d95681853bd12560d5f748e8ed37d6f072188a6d1fa8636"
C6 = "4e8e4293e7c2877005eb5bc3e8c2bddfd0bf214947e7c1499ea85a6159e43ae0"
C7 = "d5ede0969dac56c9e926037d95cd01796e3f9a2b31163d27836850d4eccaebe9"
C8 = "9ce6e4caaecef80a433158d183fa1a0640d95bed054f43e24a3666ec0723fb58"
C9 = "03af452e4b5b5c7ef578cffecb66d110baeb90ac4626a792ba9473fe9237b2c7"
C10 = "5e2a4cb2d64c993a9325a78e340a5364ce633952620318aded56798b20481770"
C12 = "746af55e4998a881c1ebc04899868cf0b86690f457c79e0c9a3e8b6b90ef4815"
C13 = "0c810d2318487fdffff8e809bd0cd08305456f47b481b90f5655be8d7a30e7ac"

# Each sample file's pod, as the naming it follows gives it. The kubelet: pod cgroups
# ``pod<uid>`` under kubepods or its QoS class (pkg/kubelet/cm/pod_container_manager_linux.go,
# qos_container_manager_linux.go); the systemd driver's slices with '-' escaped to '_'
# (cgroup_manager_linux.go ToSystemd); --cgroup-root prefixing them (kind's /kubelet).
# containerd: <id> with cgroupfs, cri-containerd-<id>.scope with systemd (internal/cri/server/
# podsandbox/helpers_linux.go getCgroupsPath). CRI-O: crio-<id>, crio-conmon-<id> for its
# monitor, .scope with systemd (internal/config/cgmgr/cgroupfs_linux.go, systemd_linux.go),
# crun's extra ``container`` cgroup (cgmgr_linux.go crunContainerCgroupManager). Docker
# through cri-dockerd: docker-<id>.scope. A cgroupfs kubelet under another prefix is EKS on
# Fargate's layout (/ecs/<task>/<task>-<n>/kubepods/...). Paths in the reader's own cgroup
# namespace climb with '..' (cgroup_namespaces(7)); a removed cgroup of a process not yet
# reaped is marked ' (deleted)' (cgroup-v2.rst).
EXPECTED: dict[str, PodCgroup | None] = {
    "cgroupfs-containerd-v2-besteffort": PodCgroup(U1, C1),
    "cgroupfs-containerd-v2-guaranteed": PodCgroup(U2, C2),
    "cgroupfs-containerd-hybrid-burstable": PodCgroup(U3, C3),
    "cgroupfs-crio-hybrid-besteffort": PodCgroup(U4, C4),
    "cgroupfs-crio-conmon-hybrid": PodCgroup(U4, None, monitor_of=C4),
    "cgroupfs-static-pod-v2": PodCgroup(STATIC_UID, C10),
    "cgroupfs-under-a-prefix-hybrid": PodCgroup(U10, C12),
    "systemd-containerd-v2-besteffort": PodCgroup(U5, C5),
    "systemd-containerd-v2-guaranteed": PodCgroup(U6, C6),
    "systemd-containerd-hybrid-burstable": PodCgroup(U11, C13),
    "systemd-crio-crun-v2-burstable": PodCgroup(U7, C7),
    "systemd-crio-conmon-v2": PodCgroup(U7, None, monitor_of=C7),
    "systemd-docker-hybrid-besteffort": PodCgroup(U8, C8),
    "systemd-cgroup-root-kubelet-v2": PodCgroup(U9, C9),
    "systemd-pod-cgroup-itself-v2": PodCgroup(U5, None),
    "cgroupns-systemd-other-pod-v2": PodCgroup(U5, C5),
    "cgroupns-cgroupfs-other-pod-v2": PodCgroup(U1, C1),
    "cgroupns-cgroupfs-other-qos-v2": PodCgroup(U3, C3),
    "exited-cgroup-removed-v2": PodCgroup(U5, C5),
    # The host's, and cgroups that look like pods' but are not the kubelet's.
    "host-service-v2": None,
    "host-session-hybrid": None,
    "host-root-hybrid": None,
    "host-init-v2": None,
    "docker-outside-kubernetes-v2": None,
    "podman-pod-v2": None,
    "qos-slice-v2": None,
    "pod-named-cgroup-at-root-v2": None,
    "cgroupns-host-v2": None,
    "cgroupns-not-a-uid-v2": None,
    # The reader's own pod, seen from its own cgroup namespace: the kernel hides the pod's
    # cgroup, so it reads as the host's (the documented limit).
    "cgroupns-own-pod-v2": None,
}


def test_every_sample_has_its_expectation() -> None:
    assert {path.stem for path in SAMPLES.glob("*.cgroup")} == set(EXPECTED)


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_the_pod_of_a_cgroup_file(sample: str) -> None:
    text = (SAMPLES / f"{sample}.cgroup").read_text()
    assert pod_cgroup_of(text) == EXPECTED[sample]


def test_odd_cgroup_lines_are_no_pod() -> None:
    assert pod_cgroup_of("") is None
    assert pod_cgroup_of("garbage\n\n0\n:\n") is None
    assert pod_cgroup_of(f"0::/kubepods/besteffort/pod{U1}/{C1}:with:colons") == PodCgroup(
        U1, f"{C1}:with:colons"
    )


# The kubelet's logs, as it lays them out ----------------------------------------------------


@dataclass
class LoggedPod:
    namespace: str
    name: str
    uid: str
    containers: dict[str, str] = field(default_factory=dict)  # name -> container ID


def lay_out_logs(root: Path, pods: list[LoggedPod]) -> PodSources:
    """``<root>/pods/<namespace>_<pod>_<uid>/<container>/0.log`` with one CRI log line, and
    ``<root>/containers/<pod>_<namespace>_<container>-<id>.log`` linking to it, as the
    kubelet lays them out (kuberuntime/helpers.go, legacy.go: a link's name without its
    ``.log`` is cut to 251 bytes, for ext4's 255)."""
    pods_root, links_root = root / "pods", root / "containers"
    links_root.mkdir(parents=True, exist_ok=True)
    for pod in pods:
        directory = pods_root / f"{pod.namespace}_{pod.name}_{pod.uid}"
        directory.mkdir(parents=True, exist_ok=True)
        for container, container_id in pod.containers.items():
            log = directory / container / "0.log"
            log.parent.mkdir()
            log.write_text("2024-05-01T10:00:00.000000000Z stdout F started\n")
            name = f"{pod.name}_{pod.namespace}_{container}-{container_id}"
            (links_root / f"{name[:251]}.log").symlink_to(log)
    return PodSources(pod_logs=pods_root, container_logs=links_root)


def test_the_logs_name_pods_and_containers(tmp_path: Path) -> None:
    sources = lay_out_logs(
        tmp_path,
        [
            LoggedPod("shop", "web-7d4b9c-x2x9z", U1, {"app": C1, "istio-proxy": C2}),
            LoggedPod("kube-system", "etcd-node-1", STATIC_UID, {"etcd": C3}),
        ],
    )
    skipped = Skipped()
    logs = read_kubelet_logs(sources, skipped)
    assert logs.pods[U1].namespace == "shop"
    assert logs.pods[U1].pod == "web-7d4b9c-x2x9z"
    assert logs.pods[STATIC_UID].pod == "etcd-node-1"
    proxy = logs.link(C2)
    assert proxy is not None
    assert (proxy.container, proxy.pod, proxy.namespace, proxy.uid) == (
        "istio-proxy",
        "web-7d4b9c-x2x9z",
        "shop",
        U1,
    )
    assert logs.link(C4) is None
    assert skipped == Skipped()


def test_odd_names_are_counted_and_names_kept_as_read(tmp_path: Path) -> None:
    sources = lay_out_logs(tmp_path, [LoggedPod("ns", "we\x1b[31mb", U1, {"c\tx": C1})])
    assert sources.container_logs is not None
    for odd in ("no-underscores", "a_b_c_d", "_pod_uid", "ns__uid"):
        (sources.pod_logs / odd).mkdir()
    (sources.container_logs / "pod_ns_container-nothex.log").symlink_to("/nowhere")
    (sources.container_logs / "pod_ns_container-abc.log").symlink_to("/nowhere")  # too short
    (sources.container_logs / "a_b_c_d-0123456789.log").symlink_to("/nowhere")
    (sources.container_logs / "not-a-log").write_text("")
    os.mkdir(os.fsencode(sources.pod_logs) + b"/ns_p\xffd_" + U2.encode())
    skipped = Skipped()
    logs = read_kubelet_logs(sources, skipped)
    assert logs.pods[U1].pod == "we\x1b[31mb"  # escaping is the renderer's
    link = logs.link(C1)
    assert link is not None
    assert link.container == "c\tx"
    assert logs.pods[U2].pod == "p\ufffdd"
    assert skipped == Skipped(odd_log_names=8, undecodable_names=1)


def test_a_link_cut_to_255_bytes_names_its_container_by_the_start_of_the_id(
    tmp_path: Path,
) -> None:
    """The kubelet cuts a link's name to 255 bytes (legacy.go logSymlink): a long pod name
    leaves only the start of the container ID."""
    pod = "batch-" + "x" * 170
    sources = lay_out_logs(tmp_path, [LoggedPod("jobs", pod, U1, {"worker": C1})])
    assert sources.container_logs is not None
    (link,) = sources.container_logs.iterdir()
    assert len(link.name) == 255
    assert link.name.endswith(f"-{C1[:62]}.log")
    skipped = Skipped()
    logs = read_kubelet_logs(sources, skipped)
    found = logs.link(C1)
    assert found is not None
    assert found.container == "worker"
    assert len(found.container_id) < len(C1)
    assert logs.link(C2) is None
    assert skipped == Skipped()


def test_log_roots_that_cannot_be_listed_are_counted(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    sources = PodSources(pod_logs=tmp_path / "absent", container_logs=tmp_path / "a-file")
    skipped = Skipped()
    logs = read_kubelet_logs(sources, skipped)
    assert (logs.pods, logs.links) == ({}, {})
    assert skipped == Skipped(unreadable_log_roots=2)


# Processes that are gone or unreadable -----------------------------------------------------


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"])


def test_processes_gone_after_listing_are_counted_not_raised() -> None:
    """Processes listed from /proc, then gone before their cgroup is read."""
    sleepers = [sleeper() for _ in range(20)]
    listed = sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    ours = {process.pid for process in sleepers}
    assert ours <= set(listed)
    for process in sleepers:
        process.kill()
        process.wait()
    lookup = PodLookup()
    answers = {pid: lookup.of(pid) for pid in listed}
    assert all(answers[pid] is None for pid in ours)
    assert lookup.skipped.vanished >= len(ours)
    assert lookup.skipped.unreadable == 0


def test_an_unreadable_cgroup_file_is_counted(tmp_path: Path) -> None:
    (tmp_path / "4242" / "cgroup").mkdir(parents=True)  # a directory: EISDIR on read
    lookup = PodLookup(PodSources(proc=tmp_path))
    assert lookup.of(4242) is None
    assert lookup.skipped == Skipped(unreadable=1)


def test_the_host_process_reading_is_no_pod() -> None:
    lookup = PodLookup()
    assert lookup.of(os.getpid()) is None
    assert lookup.skipped == Skipped()


# Real cgroups, laid out as the kubelet and the runtimes lay them ----------------------------


def cgroup_mounts() -> dict[str, Path]:
    """Where this host mounts the cgroup v2 hierarchy (``unified``) and the v1 ``pids``
    controller, when it does: on a hybrid host v2 is /sys/fs/cgroup/unified."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, options, *_ = line.split()
        if kind == "cgroup2":
            found.setdefault("unified", Path(where))
        elif kind == "cgroup" and "pids" in options.split(","):
            found.setdefault("pids", Path(where))
    return found


def own_cgroup(hierarchy: str) -> str:
    """This process's cgroup in ``hierarchy`` (``unified``, or a v1 controller)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if (hierarchy == "unified" and number == "0" and not controllers) or (
            hierarchy in controllers.split(",")
        ):
            return path
    raise AssertionError(f"this process is in no {hierarchy} cgroup")


class CgroupTree:
    """Cgroups made under one ``tpodB-`` cgroup of a hierarchy, with the processes moved
    into them; ``close`` moves them back out, kills them and removes the cgroups, innermost
    first."""

    def __init__(self, hierarchy: str, mount: Path) -> None:
        self.home = mount / own_cgroup(hierarchy).lstrip("/")
        self.top = mount / f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.made: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def path(self, relative: str) -> str:
        """The cgroup's path as /proc/PID/cgroup shows it to a reader at the root."""
        return "/" + str((self.top / relative).relative_to(self.top.parent))

    def make(self, relative: str) -> Path:
        """The cgroup ``relative`` to the top, made with each missing parent."""
        places = [self.top]
        for part in relative.split("/"):
            places.append(places[-1] / part)
        for place in places:
            if not place.exists():
                place.mkdir()
                self.made.append(place)
        return places[-1]

    def run_in(self, relative: str) -> int:
        """A new ``sleep`` moved into the cgroup ``relative`` (made if need be): its PID."""
        process = sleeper()
        self.processes.append(process)
        self.move(process.pid, relative)
        return process.pid

    def move(self, pid: int, relative: str) -> None:
        (self.make(relative) / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):  # gone already
                (self.home / "cgroup.procs").write_text(str(process.pid))
            process.kill()
            process.wait()
        for place in reversed(self.made):
            for attempt in range(50):  # the kernel empties a cgroup just after its last exit
                try:
                    place.rmdir()
                    break
                except OSError:
                    if attempt == 49:
                        raise
                    time.sleep(0.02)


@contextlib.contextmanager
def cgroup_tree(hierarchy: str) -> Iterator[CgroupTree]:
    mount = cgroup_mounts().get(hierarchy)
    if mount is None:
        skip_unpromised(f"this host mounts no {hierarchy} cgroup hierarchy")
    tree = CgroupTree(hierarchy, mount)
    try:
        yield tree
    finally:
        tree.close()


@pytest.fixture
def unified() -> Iterator[CgroupTree]:
    with cgroup_tree("unified") as tree:
        yield tree


SYSTEMD_POD_A = (
    f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U1.replace('-', '_')}.slice"
)
CGROUPFS_POD_B = f"kubepods/burstable/pod{STATIC_UID}"
CGROUPFS_POD_C = f"kubepods/pod{U3}"
HOST_SERVICE = "system.slice/containerd.service"
SANDBOX_A = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def lay_out_node(tree: CgroupTree, tmp_path: Path) -> tuple[dict[str, int], PodSources]:
    """Three pods and a host service in ``tree``, a ``sleep`` in each place; the logs of
    the first two. Pod A: systemd driver, containerd, its sandbox and ``app``. Pod B: a
    static pod, cgroupfs driver, CRI-O, ``etcd`` and its conmon. Pod C: cgroupfs, containerd,
    no logs at all."""
    pids = {
        "app": tree.run_in(f"{SYSTEMD_POD_A}/cri-containerd-{C1}.scope"),
        "sandbox": tree.run_in(f"{SYSTEMD_POD_A}/cri-containerd-{SANDBOX_A}.scope"),
        "etcd": tree.run_in(f"{CGROUPFS_POD_B}/crio-{C2}"),
        "conmon": tree.run_in(f"{CGROUPFS_POD_B}/crio-conmon-{C2}"),
        "lonely": tree.run_in(f"{CGROUPFS_POD_C}/{C3}"),
        "host": tree.run_in(HOST_SERVICE),
    }
    sources = lay_out_logs(
        tmp_path,
        [
            LoggedPod("shop", "web-7d4b9c-x2x9z", U1, {"app": C1}),
            LoggedPod("kube-system", "etcd-node-1", STATIC_UID, {"etcd": C2}),
        ],
    )
    return pids, sources


@requires_root
def test_real_cgroups_name_each_process_pod(unified: CgroupTree, tmp_path: Path) -> None:
    pids, sources = lay_out_node(unified, tmp_path)
    text = Path(f"/proc/{pids['app']}/cgroup").read_text()
    assert f"0::{unified.path(SYSTEMD_POD_A)}/cri-containerd-{C1}.scope" in text.splitlines()
    lookup = PodLookup(sources)
    assert lookup.of(pids["app"]) == PodIdentity("shop", "web-7d4b9c-x2x9z", "app", U1, C1)
    # The sandbox is the pod, with no container name: its ID names no container's link.
    assert lookup.of(pids["sandbox"]) == PodIdentity(
        "shop", "web-7d4b9c-x2x9z", None, U1, SANDBOX_A
    )
    assert lookup.of(pids["etcd"]) == PodIdentity(
        "kube-system", "etcd-node-1", "etcd", STATIC_UID, C2
    )
    assert lookup.of(pids["conmon"]) == PodIdentity(
        "kube-system", "etcd-node-1", None, STATIC_UID, None
    )
    assert lookup.of(pids["lonely"]) == PodIdentity(None, None, None, U3, C3)
    assert lookup.of(pids["host"]) is None
    assert lookup.of(os.getpid()) is None
    assert lookup.skipped == Skipped(pods_without_logs=1)


@requires_root
def test_the_logs_are_read_once_a_snapshot(unified: CgroupTree, tmp_path: Path) -> None:
    pids, sources = lay_out_node(unified, tmp_path)
    lookup = PodLookup(sources)
    assert lookup.of(pids["app"]) is not None
    # The pod is deleted meanwhile: this snapshot keeps what it read, the next one sees it.
    for link in (tmp_path / "containers").iterdir():
        link.unlink()
    (tmp_path / "pods" / f"shop_web-7d4b9c-x2x9z_{U1}").rename(tmp_path / "gone")
    named = lookup.of(pids["sandbox"])
    assert named is not None
    assert (named.namespace, named.pod) == ("shop", "web-7d4b9c-x2x9z")
    assert lookup.skipped == Skipped()
    later = PodLookup(sources)
    assert later.of(pids["sandbox"]) == PodIdentity(None, None, None, U1, SANDBOX_A)
    assert later.of(pids["etcd"]) == PodIdentity("kube-system", "etcd-node-1", None, STATIC_UID, C2)
    assert later.skipped == Skipped(pods_without_logs=1)


@requires_root
def test_a_pod_on_a_v1_hierarchy(tmp_path: Path) -> None:
    """A hybrid host's kubelet in v1 mode with the cgroupfs driver: the pod is on the v1
    lines, while the v2 line shows where the process was before."""
    with cgroup_tree("pids") as tree:
        pid = tree.run_in(f"kubepods/besteffort/pod{U4}/{C4}")
        sources = lay_out_logs(tmp_path, [LoggedPod("batch", "report-28475", U4, {"job": C4})])
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        assert f"0::{own_cgroup('unified')}" in lines
        lookup = PodLookup(sources)
        assert lookup.of(pid) == PodIdentity("batch", "report-28475", "job", U4, C4)


def kill_unreaped(pid: int) -> None:
    """Kill ``pid`` and wait until it is a zombie: exited, not reaped (its parent has not
    waited for it yet)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed process never became a zombie"
        time.sleep(0.01)


@requires_root
def test_an_exited_process_on_v1_is_counted_as_gone() -> None:
    """On cgroup v1 a process that exited but is not reaped shows the root cgroup in every
    hierarchy: not the host's, but gone."""
    with cgroup_tree("pids") as tree:
        pid = tree.run_in(f"{CGROUPFS_POD_C}/{C3}")
        kill_unreaped(pid)
        assert f"0::{own_cgroup('unified')}" in Path(f"/proc/{pid}/cgroup").read_text()
        lookup = PodLookup()
        assert lookup.of(pid) is None
        assert lookup.skipped == Skipped(vanished=1)


@requires_root
def test_an_exited_process_on_v2_keeps_its_pod(unified: CgroupTree) -> None:
    """On cgroup v2 it keeps its cgroup, marked ``(deleted)`` once the runtime removes it."""
    pid = unified.run_in(f"{CGROUPFS_POD_C}/{C3}")
    kill_unreaped(pid)
    container = unified.made.pop()
    container.rmdir()
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    assert f"0::{unified.path(CGROUPFS_POD_C)}/{C3} (deleted)" in lines
    lookup = PodLookup()
    assert lookup.of(pid) == PodIdentity(None, None, None, U3, C3)


# The agent in its own cgroup namespace -------------------------------------------------------

AGENT_POD = f"kubepods/besteffort/pod{U5}"
OTHER_POD = f"kubepods/besteffort/pod{U6}"

LOOK = """
import dataclasses, json, sys
from pathlib import Path
from tcpecho.watch.pods import PodLookup, PodSources
lookup = PodLookup(PodSources(pod_logs=Path(sys.argv[1]), container_logs=Path(sys.argv[2])))
found = {pid: lookup.of(int(pid)) for pid in sys.argv[3:]}
print(json.dumps({
    "own": Path("/proc/self/cgroup").read_text(),
    "found": {pid: found[pid] and dataclasses.asdict(found[pid]) for pid in found},
    "skipped": dataclasses.asdict(lookup.skipped),
}))
"""


def look_from(
    tree: CgroupTree, relative: str, sources: PodSources, pids: list[int]
) -> dict[str, Any]:
    """What ``PodLookup`` answers for ``pids`` in a process of its own cgroup namespace,
    rooted at the cgroup ``relative``: an unprivileged container on cgroup v2."""
    procs = tree.make(relative) / "cgroup.procs"
    code = f'echo $$ > "{procs}" && exec unshare --cgroup "$@"'
    argv = ["sh", "-c", code, "sh", sys.executable, "-c", LOOK]
    argv += [str(sources.pod_logs), str(sources.container_logs), *map(str, pids)]
    package = str(Path(tcpecho.__file__).resolve().parents[1])
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": package}
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


@requires_root
def test_the_agent_in_its_own_cgroup_namespace(unified: CgroupTree, tmp_path: Path) -> None:
    pids, sources = lay_out_node(unified, tmp_path)
    other = unified.run_in(f"{OTHER_POD}/{C6}")
    sibling = unified.run_in(f"{AGENT_POD}/{C7}")
    lay_out_logs(tmp_path, [LoggedPod("web", "front-5f9c", U6, {"nginx": C6})])
    asked = [pids["app"], pids["etcd"], other, pids["host"], sibling]
    seen = look_from(unified, f"{AGENT_POD}/{C5}", sources, asked)
    assert seen["own"].splitlines()[-1] == "0::/"  # the agent's root is its container
    as_found = {int(pid): identity for pid, identity in seen["found"].items()}
    assert as_found[pids["app"]] == dataclasses.asdict(
        PodIdentity("shop", "web-7d4b9c-x2x9z", "app", U1, C1)
    )
    assert as_found[pids["etcd"]]["container"] == "etcd"
    # Another pod of the agent's QoS class: only '..' above its pod cgroup.
    other_text = Path(f"/proc/{other}/cgroup").read_text()
    assert f"0::{unified.path(OTHER_POD)}/{C6}" in other_text.splitlines()
    assert as_found[other] == dataclasses.asdict(PodIdentity("web", "front-5f9c", "nginx", U6, C6))
    assert as_found[pids["host"]] is None
    # The agent's own pod is hidden from it: its other container reads as the host's.
    assert as_found[sibling] is None
    assert seen["skipped"] == dataclasses.asdict(Skipped())


@requires_root
def test_a_cut_link_of_another_pod_names_no_container(unified: CgroupTree, tmp_path: Path) -> None:
    """A link cut so short that its ID also starts a container of another pod: the pod it
    points into decides, and the other pod's container is left unnamed (counted)."""
    long_pod = "report-" + "x" * 175
    sources = lay_out_logs(
        tmp_path,
        [
            LoggedPod("jobs", long_pod, U1, {"worker": C1}),
            LoggedPod("shop", "web-7d4b9c-x2x9z", U2, {}),
        ],
    )
    assert sources.container_logs is not None
    (link,) = sources.container_logs.iterdir()
    cut_id = link.name.removesuffix(".log").rpartition("-")[2]
    assert 6 <= len(cut_id) < len(C1)
    stranger = cut_id + "f" * (64 - len(cut_id))
    assert stranger != C1
    worker = unified.run_in(f"kubepods/besteffort/pod{U1}/{C1}")
    other = unified.run_in(f"kubepods/besteffort/pod{U2}/{stranger}")
    lookup = PodLookup(sources)
    assert lookup.of(worker) == PodIdentity("jobs", long_pod, "worker", U1, C1)
    assert lookup.of(other) == PodIdentity("shop", "web-7d4b9c-x2x9z", None, U2, stranger)
    assert lookup.skipped == Skipped(odd_log_names=1)
