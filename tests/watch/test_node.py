"""``tcpecho watch -A`` on a node laid out as a kubelet lays one: three pods, each in its own
network namespace and in a kubelet cgroup (systemd driver, containerd), with the kubelet's
log directories, and each running a program tcpecho did not write, against a server
namespace over its own veth:

- ``shop/cart``: a shell writing through ``/dev/tcp``, whose server side is then
  black-holed: stuck, retransmitting, with nothing but ``tcp_retries2`` to end it.
- ``shop/api``: ``socat`` idle on an open connection, keepalive off: at risk.
- ``db/report``: ``psql`` (libpq) waiting for the server's answer to its startup packet,
  with ``keepalives_idle`` and ``tcp_user_timeout`` set: protected.

The watch's JSON must name the right pod for each, and judge each as the model does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import tcpecho_executable
from tests.watch.test_pods import (
    CgroupTree,
    LoggedPod,
    cgroup_tree,
    lay_out_logs,
    requires_root,
)

PREFIX = "tnodE-"
PORT = 5432


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    container: str
    container_id: str
    subnet: int  # 10.77.<subnet>.2 in the pod, .1 on the server's side
    client: tuple[str, ...]  # the program, run in the pod's namespace

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def cgroup(self) -> str:
        uid = self.uid.replace("-", "_")
        return (
            f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/"
            f"cri-containerd-{self.container_id}.scope"
        )


SERVER = f"{PREFIX}server"
PODS = (
    Pod(
        "shop", "cart-5f7c9-abcde", "0a1b2c3d-0000-4000-8000-000000000001", "cart",
        "a1" * 32, 1,
        ("bash", "-c", f"exec 3<>/dev/tcp/10.77.1.1/{PORT}; while sleep 0.3; do echo x >&3; done"),
    ),
    Pod(
        "shop", "api-7d8e6-fghij", "0a1b2c3d-0000-4000-8000-000000000002", "api",
        "b2" * 32, 2,
        ("sh", "-c", f"sleep 600 | socat - TCP:10.77.2.1:{PORT}"),
    ),
    Pod(
        "db", "report-0", "0a1b2c3d-0000-4000-8000-000000000003", "report",
        "c3" * 32, 3,
        ("psql", f"host=10.77.3.1 port={PORT} user=report dbname=report sslmode=disable "
         "keepalives_idle=10 "
         "keepalives_interval=1 keepalives_count=3 tcp_user_timeout=5000", "-c", "select 1"),
    ),
)  # fmt: skip


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _lay_out_network() -> None:
    """A server namespace with a veth to each pod's namespace, and a server on each link
    that takes connections and never answers (socat into ``sleep``: the kernel still
    acknowledges what arrives)."""
    _ip("netns", "add", SERVER)
    _ip("-n", SERVER, "link", "set", "lo", "up")
    for pod in PODS:
        _ip("netns", "add", pod.netns)
        _ip("-n", pod.netns, "link", "set", "lo", "up")
        outside, inside = f"s{pod.subnet}", f"p{pod.subnet}"
        _ip("-n", SERVER, "link", "add", outside, "type", "veth", "peer", "name", inside,
            "netns", pod.netns)  # fmt: skip
        _ip("-n", SERVER, "addr", "add", f"10.77.{pod.subnet}.1/24", "dev", outside)
        _ip("-n", pod.netns, "addr", "add", f"10.77.{pod.subnet}.2/24", "dev", inside)
        _ip("-n", SERVER, "link", "set", outside, "up")
        _ip("-n", pod.netns, "link", "set", inside, "up")


def _remove_network() -> None:
    for name in (SERVER, *(pod.netns for pod in PODS)):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    """The node, its pods' programs running in their cgroups; their PIDs by pod name."""
    processes: list[subprocess.Popen[bytes]] = []
    with cgroup_tree("unified") as tree:
        try:
            _lay_out_network()
            server = ["ip", "netns", "exec", SERVER, "socat",
                      f"TCP-LISTEN:{PORT},reuseaddr,fork", "EXEC:sleep 600"]  # fmt: skip
            processes.append(subprocess.Popen(server, start_new_session=True))
            time.sleep(0.3)  # the listener is up before the clients connect
            pids = {pod.name: _start(tree, pod, processes) for pod in PODS}
            lay_out_logs(
                tmp_path,
                [
                    LoggedPod(p.namespace, p.name, p.uid, {p.container: p.container_id})
                    for p in PODS
                ],
            )
            time.sleep(1.0)  # every client connected, the cart's writes acknowledged
            _ip("-n", SERVER, "route", "add", "blackhole", "10.77.1.2/32")  # the cart's peer
            time.sleep(2.0)  # its writes go unacknowledged: retransmitting
            yield tmp_path, pids
        finally:
            # Each program with what it forked (socat's children, the shell's sleeps), before
            # their cgroups are removed.
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            _remove_network()


def _start(tree: CgroupTree, pod: Pod, processes: list[subprocess.Popen[bytes]]) -> int:
    """The pod's program in its namespace and in its container's cgroup, as runc puts it
    there before it runs: here a shell that waits to be moved, then becomes the program."""
    gate = subprocess.Popen(
        ["ip", "netns", "exec", pod.netns, "sh", "-c", 'read go; exec "$@"', "sh", *pod.client],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    processes.append(gate)
    tree.move(gate.pid, pod.cgroup)
    assert gate.stdin is not None
    gate.stdin.write(b"go\n")
    gate.stdin.flush()
    return gate.pid


def _snapshot(root: Path) -> list[dict[str, Any]]:
    shown = subprocess.run(
        [tcpecho_executable(), "watch", "-A", "--once", "--json", "--port", str(PORT),
         "--pod-logs", str(root / "pods"), "--container-logs", str(root / "containers")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    connections: list[dict[str, Any]] = json.loads(shown.stdout)["connections"]
    return connections


@requires_root
def test_every_pod_is_named_and_judged(node: tuple[Path, dict[str, int]]) -> None:
    root, _ = node
    clients = {
        c["pod"]: c
        for c in _snapshot(root)
        if c["pod"] is not None and c["peer"].endswith(f":{PORT}")
    }
    assert set(clients) == {pod.name for pod in PODS}, clients.keys()
    for pod in PODS:
        client = clients[pod.name]
        assert (client["namespace"], client["container"]) == (pod.namespace, pod.container)
        assert client["options"] is not None, client  # read from the program's own socket
    cart, api, report = (clients[pod.name] for pod in PODS)
    # The black-holed shell: retransmitting, nothing but tcp_retries2 to end it.
    assert cart["stuck"] is True
    assert cart["limited_by"] == "tcp_retries2"
    assert 0 < cart["gives_up_in_s"] < 16 * 60
    assert {risk["code"] for risk in cart["at_risk"]} == {"no-bound"}
    # socat, idle, keepalive off: a vanished peer would go unnoticed.
    assert api["stuck"] is False
    assert api["at_risk"], api
    # libpq with keepalive and a user timeout: protected.
    assert report["options"]["user_timeout_ms"] == 5000
    assert report["options"]["keepalive"] is True
    assert report["at_risk"] == []


@requires_root
def test_the_server_side_is_the_hosts(node: tuple[Path, dict[str, int]]) -> None:
    """socat's listening side is in no pod: named by its network namespace."""
    root, _ = node
    servers = [
        c
        for c in _snapshot(root)
        if c["local"].startswith("10.77.") and c["local"].endswith(f":{PORT}")
    ]
    assert len(servers) >= len(PODS)  # one per client, and any closing ones
    assert {(c["namespace"], c["pod"]) for c in servers} == {(None, None)}
    assert len({c["netns"] for c in servers}) == 1
