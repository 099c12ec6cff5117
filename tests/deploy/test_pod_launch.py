"""A rendered pod started from the built image by ``cluster/kubelet.py``'s command line, looked at
from outside as one would look at a container: PID 1 of its own PID namespace, the manifest's
user and group with no privileges, exactly the environment and argv decided, a read-only root,
the kubelet's files, its hostname, and the Service's name resolved by the image's own resolver.

The node agent's DaemonSet pod too, started as the pods session starts it (``cluster/agent.py``
on a ``cluster/node.py`` node): in the host's PID namespace, root with exactly the
capabilities it lists, the kubelet's log directories mounted read-only, in its kubelet cgroup
(where the watch's own pod lookup names it), answering ``/metrics`` in its pod's network
namespace.

``nox -s pods`` builds the image and names it in ``TCPECHO_TEST_IMAGE``; it then runs every
overlay's pods through the lab (``python -m cluster.pods``).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import agent, kubelet, pods
from cluster import node as node_module
from cluster.kubelet import Launch
from cluster.node import Node

from tcpecho.lab import topology as net
from tcpecho.watch.pods import PodIdentity, PodLookup, PodSources

IMAGE = os.environ.get("TCPECHO_TEST_IMAGE", "")
USER = ["-S", "10001", "-G", "10001"]  # nsenter as the pod's user
PREFIX = "tpsaF-"  # this file's network namespaces and cgroups


def why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (buildah mount, namespaces, mounts)"
    missing = [tool for tool in (*pods.TOOLS, "nsenter") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/system-packages and nox -s pods give them)"
    if not IMAGE:
        return "no image given: scripts/nox -s pods builds one and sets TCPECHO_TEST_IMAGE"
    return None


pytestmark = [
    pytest.mark.pods,
    pytest.mark.skipif(why_not_runnable() is not None, reason=str(why_not_runnable())),
]


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    with pods.mounted_image(IMAGE) as root:
        yield root


def first_child(pid: int, timeout_s: float = 10.0) -> int:
    """unshare's forked child: PID 1 of the new PID namespace, the container's process."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = children.read_text().split() if children.exists() else []
        if found:
            return int(found[0])
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def wait_for_line(process: subprocess.Popen[bytes], word: bytes, timeout_s: float = 60.0) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen: list[bytes] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            assert line, f"the pod exited: {process.stderr.read() if process.stderr else ''!r}"
            if word in line:
                return
            seen.append(line)
    # Say what the pod did say, and where its process stands, before the fixture kills it.
    tree = subprocess.run(
        ["ps", "-o", "pid,stat,wchan:20,etime,args", "--forest", "-g", str(process.pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stderr = process.stderr.read() if process.stderr else b""
    raise AssertionError(
        f"no {word!r} within {timeout_s} s; stdout {seen!r}; stderr {stderr[-2000:]!r}; {tree}"
    )


@pytest.fixture
def server_pod(rootfs: Path, tmp_path: Path) -> Iterator[tuple[Launch, int]]:
    """The default overlay's server pod, running in a network namespace of this test's."""
    objects = pods.render("kubectl", pods.OVERLAYS_DIR / "default")
    spec = pods.pod_case("default", "active", objects, pods.image_config(IMAGE)).server
    kubelet.prepare(spec, tmp_path)
    namespace = f"{net.PREFIX}podtest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *kubelet.argv(spec, rootfs, tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # Unbuffered: wait_for_line selects on the pipe, and a buffered readline could
            # take server_started into Python's buffer with the line before it, where select
            # never sees it (the pod then looked silent for the whole wait).
            bufsize=0,
        )
        try:
            wait_for_line(process, b'"server_started"')
            yield spec, first_child(process.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone if the wait above failed
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


def status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}


def inside(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` from the pod's root, in its mount, UTS and network namespaces, as its user."""
    command = ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-r", *USER, *argv]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_the_pod_is_pid_1_as_its_user_without_privileges(server_pod: tuple[Launch, int]) -> None:
    _, pid = server_pod
    found = status(pid)
    assert found["NSpid"][-1] == "1"
    assert found["Uid"] == ["10001"] * 4
    assert found["Gid"] == ["10001"] * 4
    assert found["Groups"] == ["10001"]
    assert found["NoNewPrivs"] == ["1"]
    assert int(found["CapEff"][0], 16) == 0


def test_the_pod_has_exactly_its_environment_and_argv(server_pod: tuple[Launch, int]) -> None:
    spec, pid = server_pod
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    assert [item for item in environ if item] == [f"{k}={v}" for k, v in spec.env]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    # The ENTRYPOINT `tcpecho` found on the image's PATH, a script run by the venv's python.
    assert cmdline[1:] == ["/opt/venv/bin/tcpecho", "server", "--catch-sigterm"]


def test_the_pods_root_is_read_only_with_the_kubelets_files(
    server_pod: tuple[Launch, int],
) -> None:
    spec, pid = server_pod
    root = next(
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    assert root[5].split(",")[0] == "ro"
    written = inside(pid, "touch", "/probe")
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    assert Path(f"/proc/{pid}/root/etc/hosts").read_text() == spec.hosts
    assert inside(pid, "hostname").stdout.strip() == spec.pod


def test_the_services_name_resolves_inside_the_pod(server_pod: tuple[Launch, int]) -> None:
    _, pid = server_pod
    for name in ("server", "server.tcpecho-default.svc.cluster.local"):
        resolved = inside(pid, "getent", "hosts", name)
        assert resolved.stdout.split()[:1] == [net.CLUSTER_IP], resolved


# -- the node agent's pod ------------------------------------------------------------------------

LISTED = ("DAC_READ_SEARCH", "SYS_PTRACE", "SYS_ADMIN")
MARKER = "tcpecho-system_marker_0a1b2c3d-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def running_agent(
    rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[agent.RunningAgent, Node]]:
    """The DaemonSet's pod, started as the pods session starts it, on a node of this test's
    (a log directory of another pod already there); stopped and removed afterwards."""
    workdir = tmp_path_factory.mktemp("agent")
    pod = agent.agent_pod(pods.render("kubectl", pods.NODE_AGENT_DIR), pods.image_config(IMAGE))
    with Node(workdir / "node", prefix=PREFIX) as node:
        (node.pod_logs / MARKER).mkdir()
        node.add_pod(pod.spec)
        netns = agent.netns_name(PREFIX, os.getpid())
        with agent.started(pod, rootfs, workdir, node, netns) as running:
            yield running, node


def mask(names: tuple[str, ...]) -> int:
    return sum(1 << kubelet.CAPABILITIES.index(name) for name in names)


def test_a_host_pid_container_sees_the_hosts_pids(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, _ = running_agent
    pid = running.process.pid
    assert len(status(pid)["NSpid"]) == 1  # no PID namespace of its own
    # Its /proc is the host's: this test's process, and the agent's own host PID.
    for seen in (os.getpid(), pid):
        assert Path(f"/proc/{pid}/root/proc/{seen}/status").exists()


def test_the_capability_set_is_exactly_the_listed_one(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, _ = running_agent
    assert running.pod.spec.capabilities == LISTED
    found = status(running.process.pid)
    assert found["Uid"] == ["0"] * 4
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(found[key][0], 16) == mask(LISTED), key
    assert int(found["CapInh"][0], 16) == int(found["CapAmb"][0], 16) == 0
    assert found["NoNewPrivs"] == ["1"]
    assert running.privileges is not None
    assert running.privileges.effective == LISTED


def test_a_read_only_host_path_is_read_only(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, node = running_agent
    pid = running.process.pid
    assert (Path(f"/proc/{pid}/root/var/log/pods") / MARKER).is_dir()  # the node's directory
    mounts = {
        line.split()[4]: line.split()[5].split(",")
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    }
    assert "ro" in mounts["/var/log/pods"]
    assert "ro" in mounts["/var/log/containers"]
    written = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-r", "touch", "/var/log/pods/probe"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    assert not (node.pod_logs / "probe").exists()


def test_the_agent_is_in_its_kubelet_cgroup_where_the_watch_names_its_pod(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, node = running_agent
    spec, pid = running.pod.spec, running.process.pid
    unified = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if line.startswith("0::")
    )
    assert unified.endswith("/" + kubelet.container_cgroup(spec))
    assert unified.startswith(f"/{node.top.name}/kubepods.slice/kubepods-burstable.slice/")
    lookup = PodLookup(PodSources(pod_logs=node.pod_logs, container_logs=node.container_logs))
    assert lookup.of(pid) == PodIdentity(
        spec.namespace, spec.pod, spec.container, spec.pod_uid, spec.container_id
    )


def test_the_agent_answers_in_its_pods_network_namespace(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, _ = running_agent
    scraped = agent.parse(time.time(), running.scrape())
    assert scraped.snapshots >= 1
    assert scraped.total("tcpecho_node_namespaces") >= 2  # this host's, and the agent pod's
    # The pod's address is its namespace's own: the host's namespace has no such address.
    addresses = subprocess.run(
        ["ip", "-o", "address", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert f" {agent.AGENT_POD_IP}/" not in addresses


# -- the node's cgroups ----------------------------------------------------------------------------


def test_a_container_joins_its_cgroup_and_what_is_left_there_goes_with_the_node(
    tmp_path: Path,
) -> None:
    spec = pods.pod_case(
        "default",
        "active",
        pods.render("kubectl", pods.OVERLAYS_DIR / "default"),
        pods.image_config(IMAGE),
    ).client
    with Node(tmp_path / "node", prefix=PREFIX) as node:
        node.add_pod(spec)
        # The join as the pods' command lines start with it, through this process's root.
        argv = ["sh", "-c", kubelet.JOIN_CGROUP, "kubelet-cgroup", str(node.procs(spec))]
        left = subprocess.Popen([*argv, "sleep", "600"], start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while str(left.pid) not in (node.cgroup(spec) / "cgroup.procs").read_text().split():
                assert time.monotonic() < deadline, "the process never joined its cgroup"
                time.sleep(0.02)
            top = node.top
            node.close()  # the process is still there: killed with the cgroup
            assert left.wait(10) == -signal.SIGKILL
            assert not top.exists()
        finally:
            if left.poll() is None:
                os.killpg(left.pid, signal.SIGKILL)
                left.wait()


def test_a_killed_sessions_cgroups_are_removed_and_a_live_ones_kept() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its PID names no process now
    mount = node_module.cgroup2_mount()
    stale, live = mount / f"{PREFIX}{gone.pid}-0dead0", mount / f"{PREFIX}{os.getpid()}-0a11e0"
    try:
        (stale / "kubepods.slice").mkdir(parents=True)
        live.mkdir()
        assert node_module.remove_stale(PREFIX) == [stale]
        assert not stale.exists()
        assert live.exists()
    finally:
        for place in (stale / "kubepods.slice", stale, live):
            with contextlib.suppress(FileNotFoundError):
                place.rmdir()


def test_a_killed_sessions_agent_namespace_is_removed_and_a_live_ones_kept() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    # The parent's PID stands for a session still running (this process's own namespace is
    # the agent fixture's).
    stale, live = agent.netns_name(PREFIX, gone.pid), agent.netns_name(PREFIX, os.getppid())
    try:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        assert agent.remove_stale(PREFIX) == [stale]
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert live in left
        assert stale not in left
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
