"""Pods played by podman as the pods session plays them (``cluster/podman.py``), from the built
image, looked at from outside as one would look at a container: the default overlay's server
pod (PID 1 of its own PID namespace, the manifest's user and group with no privileges, the
manifest's environment and argv, a read-only root, the Service's name resolved by the image's
own resolver, a network namespace of its own with loopback alone, its ports held in its
node's namespace and not the host's), the engine's force delete leaving nothing, and the pods
of a session that was killed removed by the next.

The node agent's DaemonSet pod too, played as the pods session plays it (``cluster/agent.py``
on a ``cluster/node.py`` node): in the host's PID namespace, root with exactly the
capabilities it lists, the kubelet's log directories mounted read-only, in its kubelet cgroup
(where the watch's own pod lookup names it), answering ``/metrics`` in its pod's network
namespace.

``nox -s pods`` builds the image and names it in ``TCPECHO_TEST_IMAGE``; it then runs every
overlay's pods through the lab (``python -m cluster.pods``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import agent, controllers, podman, pods
from cluster import node as node_module
from cluster.node import Node, Placed
from cluster.podman import Played, Podman

from tcpecho.lab import topology as net
from tcpecho.process import alive
from tcpecho.watch.pods import PodIdentity, PodLookup, PodSources

IMAGE = os.environ.get("TCPECHO_TEST_IMAGE", "")
PREFIX = "tpsaF-"  # this file's network namespaces and cgroups
ROOT = Path(__file__).resolve().parent.parent.parent


def why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (podman, namespaces, cgroups)"
    missing = [tool for tool in pods.TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/system-packages and nox -s pods give them)"
    if not IMAGE:
        return "no image given: scripts/nox -s pods builds one and sets TCPECHO_TEST_IMAGE"
    return None


pytestmark = [
    pytest.mark.pods,
    pytest.mark.skipif(why_not_runnable() is not None, reason=str(why_not_runnable())),
]


@contextlib.contextmanager
def network_namespace(name: str) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def default_case() -> pods.PodCase:
    with tempfile.TemporaryDirectory(prefix="tcpecho-test-podman-") as workdir:
        rendered = pods.render_overlay(
            "kubectl", pods.OVERLAYS_DIR / "default", IMAGE, Path(workdir)
        )
    return pods.pod_case("default", "active", rendered)


@pytest.fixture(scope="module")
def engine(default_case: pods.PodCase) -> Iterator[Podman]:
    with (
        tempfile.TemporaryDirectory(prefix="tcpecho-test-podman-") as workdir,
        Podman(Path(workdir), pods.cluster_dns([default_case])) as engine,
    ):
        yield engine


@pytest.fixture(scope="module")
def server_pod(engine: Podman, default_case: pods.PodCase) -> Iterator[tuple[Played, int, str]]:
    """The default overlay's server pod, played in a node namespace of this test's, its
    container started: (the pod, its process, the node namespace)."""
    with network_namespace(f"{PREFIX}{os.getpid()}-server-node") as node_ns:
        played = engine.play(default_case.server, node_ns)
        try:
            pid = engine.start(played, played.container_id, node_ns)
            yield played, pid, node_ns
        finally:
            engine.remove(played)


def status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}


def inside(pid: int, *argv: str, user: bool = True) -> subprocess.CompletedProcess[str]:
    """``argv`` from the pod's root, in its mount, UTS and network namespaces (as its user)."""
    who = ["-S", "10001", "-G", "10001"] if user else []
    command = ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-r", *who, *argv]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_the_pod_is_pid_1_as_its_user_without_privileges(
    server_pod: tuple[Played, int, str],
) -> None:
    _, pid, _ = server_pod
    found = status(pid)
    assert found["NSpid"][-1] == "1"
    assert found["Uid"] == ["10001"] * 4
    assert found["Gid"] == ["10001"] * 4
    assert found["NoNewPrivs"] == ["1"]
    assert int(found["CapEff"][0], 16) == int(found["CapBnd"][0], 16) == 0  # drop: [ALL]


def test_the_pod_has_the_manifests_environment_and_argv(
    server_pod: tuple[Played, int, str], default_case: pods.PodCase
) -> None:
    _, pid, _ = server_pod
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        if item
    )
    container = controllers.container_of(default_case.server)
    assert controllers.literal_environment(container).items() <= environ.items()
    assert environ["PATH"].startswith("/opt/venv/bin:")  # the image's, kept
    assert environ["HOSTNAME"] == default_case.server["metadata"]["name"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    # The ENTRYPOINT `tcpecho` found on the image's PATH, a script run by the venv's python;
    # the manifest's args after it.
    assert cmdline[1:] == ["/opt/venv/bin/tcpecho", "server", "--catch-sigterm"]


def test_the_pods_root_is_read_only_and_the_services_name_resolves(
    server_pod: tuple[Played, int, str],
) -> None:
    played, pid, _ = server_pod
    root = next(
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    assert root[5].split(",")[0] == "ro"
    written = inside(pid, "touch", "/probe")
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    assert inside(pid, "hostname").stdout.strip() == played.pod
    for name in ("server", "server.tcpecho-default.svc.cluster.local"):
        resolved = inside(pid, "getent", "hosts", name)
        assert resolved.stdout.split()[:1] == [net.CLUSTER_IP], resolved


def test_the_pods_network_namespace_is_its_own_with_loopback_alone(
    server_pod: tuple[Played, int, str],
) -> None:
    played, pid, node_ns = server_pod
    netns = os.stat(f"/proc/{pid}/ns/net").st_ino
    assert netns == os.stat(f"/proc/{played.netns_pid}/ns/net").st_ino  # the infra's
    assert netns not in (
        os.stat("/proc/self/ns/net").st_ino,
        os.stat(f"/run/netns/{node_ns}").st_ino,
    )
    links = Path(f"/proc/{pid}/net/dev").read_text()  # the process's network namespace's
    assert [line.split(":")[0].strip() for line in links.splitlines()[2:]] == ["lo"]


def listening_ports(netns: str | None) -> dict[int, str]:
    """TCP ports listened on in ``netns`` (the host's when None), with their processes."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    shown = subprocess.run(
        [*prefix, "ss", "-Htlnp"], capture_output=True, text=True, check=True
    ).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]): line for line in shown.splitlines()}


def test_its_container_ports_are_held_in_its_nodes_namespace_not_the_hosts(
    server_pod: tuple[Played, int, str],
) -> None:
    _, _, node_ns = server_pod
    held = listening_ports(node_ns)
    assert {8000, 8001} <= set(held)
    assert all("conmon" in held[port] for port in (8000, 8001))
    host = listening_ports(None)
    assert not any("conmon" in line for line in host.values()), host


def played_pid(engine: Podman, played: Played) -> int:
    return int(engine.inspect(played.container_id)["State"]["Pid"])


def test_the_engines_force_delete_leaves_nothing(
    engine: Podman, default_case: pods.PodCase
) -> None:
    with network_namespace(f"{PREFIX}{os.getpid()}-gone") as node_ns:
        played = engine.play(default_case.client, node_ns)
        pid = engine.start(played, played.container_id, node_ns)
        sandbox = engine.inspect(played.infra_id)["NetworkSettings"]["SandboxKey"]
        assert Path(sandbox).exists()
        engine.remove(played)
        assert not alive(pid)
        assert not alive(played.netns_pid)
        exists = subprocess.run(
            ["podman", "pod", "exists", played.pod_id],
            env={**os.environ, "CONTAINERS_CONF": str(engine.configuration())},
            check=False,
        )
        assert exists.returncode == 1
        assert not Path(sandbox).exists()
        for mount in podman._cgroup_mounts():
            assert not (mount / podman.CGROUP_PARENT / played.pod_id).exists()
        assert played.pod_id not in engine.record.read_text().split()


KILLED_SESSION = """
import json, sys, time
from pathlib import Path
from cluster.podman import Podman
engine = Podman(Path(sys.argv[1]), {}).__enter__()
played = engine.play(json.loads(sys.argv[2]), sys.argv[3])
print(played.pod_id, flush=True)
time.sleep(600)
"""


def test_a_killed_sessions_pods_are_removed_by_the_next(default_case: pods.PodCase) -> None:
    pod: dict[str, Any] = controllers.pod_of(
        {"kind": "Deployment", "metadata": {"name": "killed"}, "spec": {"template": {
            "metadata": {"labels": {"app": "killed"}}, "spec": default_case.client["spec"]}}}
    )  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="tcpecho-test-podman-") as workdir,
        network_namespace(f"{PREFIX}{os.getpid()}-killed") as node_ns,
    ):
        session = subprocess.Popen(
            [sys.executable, "-c", KILLED_SESSION, workdir, json.dumps(pod), node_ns],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert session.stdout is not None
        pod_id = session.stdout.readline().strip()
        session.send_signal(signal.SIGKILL)
        session.wait()
        try:
            assert pod_id in podman.remove_stale()
            assert not (podman.STATE_DIR / f"{podman.RECORD_PREFIX}{session.pid}").exists()
        finally:
            podman.remove_pods([pod_id], Path(workdir) / "private.conf")


# -- the node agent's pod ------------------------------------------------------------------------

LISTED = ("DAC_READ_SEARCH", "SYS_PTRACE", "SYS_ADMIN")
MARKER = "tcpecho-system_marker_0a1b2c3d-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def running_agent(engine: Podman) -> Iterator[tuple[agent.RunningAgent, Node]]:
    """The DaemonSet's pod, played as the pods session plays it, on a node of this test's
    (a log directory of another pod already there); stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tcpecho-test-podman-") as workdir:
        rendered = pods.render_overlay("kubectl", pods.NODE_AGENT_DIR, IMAGE, Path(workdir))
    pod = agent.agent_pod(rendered)
    with Node(prefix=PREFIX) as node:
        marker = node.pod_logs / MARKER
        marker.mkdir()
        try:
            with agent.started(pod, engine, node, PREFIX) as running:
                yield running, node
        finally:
            marker.rmdir()


def mask(names: tuple[str, ...]) -> int:
    return sum(1 << agent.CAPABILITIES.index(name) for name in names)


def test_a_host_pid_container_sees_the_hosts_pids(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, _ = running_agent
    assert len(status(running.pid)["NSpid"]) == 1  # no PID namespace of its own
    # Its /proc is the host's: this test's process, and the agent's own host PID.
    for seen in (os.getpid(), running.pid):
        assert Path(f"/proc/{running.pid}/root/proc/{seen}/status").exists()
    assert running.started["pid_mode"] == "host"


def test_the_capability_set_is_exactly_the_listed_one(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, _ = running_agent
    assert running.pod.capabilities == LISTED
    found = status(running.pid)
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
    pid = running.pid
    assert (Path(f"/proc/{pid}/root/var/log/pods") / MARKER).is_dir()  # the node's directory
    mounts = {
        line.split()[4]: line.split()[5].split(",")
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    }
    assert "ro" in mounts["/var/log/pods"]
    assert "ro" in mounts["/var/log/containers"]
    written = inside(pid, "touch", "/var/log/pods/probe", user=False)
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    assert not (node.pod_logs / "probe").exists()


def test_the_agent_is_in_its_kubelet_cgroup_where_the_watch_names_its_pod(
    running_agent: tuple[agent.RunningAgent, Node],
) -> None:
    running, node = running_agent
    placed, pid = running.placed, running.pid
    unified = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if line.startswith("0::")
    )
    assert unified.endswith("/" + node_module.container_cgroup(placed))
    assert unified.startswith(f"/{node.top.name}/kubepods.slice/kubepods-burstable.slice/")
    lookup = PodLookup(PodSources(pod_logs=node.pod_logs, container_logs=node.container_logs))
    assert lookup.of(pid) == PodIdentity(
        placed.namespace, placed.pod, placed.container, placed.pod_uid, placed.container_id
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


# -- the node's cgroups and log entries ------------------------------------------------------------


def test_a_container_joins_its_cgroup_and_what_is_left_there_goes_with_the_node() -> None:
    placed = Placed(
        "ns", "pod-x", "0a1b2c3d-0000-4000-8000-00000000000a", "c", "f" * 64, "BestEffort"
    )
    with Node(prefix=PREFIX) as node:
        node.add_pod(placed)
        left = subprocess.Popen(["sleep", "600"], start_new_session=True)
        try:
            node.join(placed, left.pid)
            assert str(left.pid) in (node.cgroup(placed) / "cgroup.procs").read_text().split()
            top, entry = node.top, node.pod_logs / f"ns_pod-x_{placed.pod_uid}"
            assert entry.is_dir()
            node.close()  # the process is still there: killed with the cgroup
            assert left.wait(10) == -signal.SIGKILL
            assert not top.exists()
            assert not entry.exists()
        finally:
            if left.poll() is None:
                os.killpg(left.pid, signal.SIGKILL)
                left.wait()


def test_a_killed_sessions_cgroups_and_log_entries_are_removed_and_a_live_ones_kept() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its PID names no process now
    mount = node_module.cgroup2_mount()
    stale, live = mount / f"{PREFIX}{gone.pid}-0dead0", mount / f"{PREFIX}{os.getpid()}-0a11e0"
    left = Path(tempfile.mkdtemp(prefix="tcpecho-test-node-"))
    record = node_module.STATE_DIR / f"{node_module.RECORD_PREFIX}{gone.pid}-x"
    try:
        (stale / "kubepods.slice").mkdir(parents=True)
        live.mkdir()
        node_module.STATE_DIR.mkdir(parents=True, exist_ok=True)
        record.write_text(f"whole {left}\n")
        assert node_module.remove_stale(PREFIX) == [stale]
        assert not stale.exists()
        assert live.exists()
        assert not left.exists()
        assert not record.exists()
    finally:
        for place in (stale / "kubepods.slice", stale, live):
            with contextlib.suppress(FileNotFoundError):
                place.rmdir()
        shutil.rmtree(left, ignore_errors=True)
        record.unlink(missing_ok=True)


def test_a_killed_sessions_agent_namespaces_are_removed_and_a_live_ones_kept() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    # The parent's PID stands for a session still running (this process's own namespace is
    # the agent fixture's).
    stale = [agent.netns_name(PREFIX, gone.pid, role) for role in ("agent", "node")]
    live = agent.netns_name(PREFIX, os.getppid())
    try:
        for name in (*stale, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        assert sorted(agent.remove_stale(PREFIX)) == sorted(stale)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert live in left
        assert not any(name in left for name in stale)
    finally:
        for name in (*stale, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
