"""``tcpecho watch --all-namespaces``: every network namespace of the host, each connection
named by its owner's pod. Real namespaces (``unshare --net``), real connections in them, a
real cgroup laid out as the kubelet lays one (systemd driver, containerd) and the kubelet's
log directories; the installed command reads them all."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import tcpecho_executable
from tests.watch.test_pods import (
    C1,
    SYSTEMD_POD_A,
    U1,
    CgroupTree,
    LoggedPod,
    cgroup_tree,
    lay_out_logs,
    requires_root,
)

# In its own network namespace: loopback up, a listener and a connection to it, then wait.
HOLDER = """
import socket, sys, time
listener = socket.socket(); listener.bind(("127.0.0.1", int(sys.argv[1]))); listener.listen()
client = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
served, _ = listener.accept()
print("ready", flush=True)
time.sleep(120)
"""


def _holder(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1" "$2"',
         "python3", HOLDER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[CgroupTree, Path, dict[int, int]]]:
    """Two network namespaces with a connection each: one holder in pod A's container
    cgroup, one the host's."""
    holders: list[subprocess.Popen[str]] = []
    with cgroup_tree("unified") as tree:
        try:
            holders = [_holder(7101), _holder(7102)]
            tree.move(holders[0].pid, f"{SYSTEMD_POD_A}/cri-containerd-{C1}.scope")
            tree.processes.append(holders[0])  # type: ignore[arg-type] # moved back and killed
            lay_out_logs(tmp_path, [LoggedPod("shop", "web-7d4b9c-x2x9z", U1, {"app": C1})])
            netns = {
                port: os.stat(f"/proc/{holder.pid}/ns/net").st_ino
                for port, holder in zip((7101, 7102), holders, strict=True)
            }
            yield tree, tmp_path, netns
        finally:
            for holder in holders:
                holder.kill()
                holder.wait()


def _watch_all(root: Path) -> list[dict[str, Any]]:
    return _watch_all_port(root, 7101)


@requires_root
def test_each_connection_is_named_by_its_namespace_and_pod(
    node: tuple[CgroupTree, Path, dict[int, int]],
) -> None:
    _, root, netns = node
    found = _watch_all(root)
    # The client's and the server's side of the connection in pod A's namespace, and only
    # those: --port 7101 leaves the host's namespace's out.
    assert len(found) == 2
    for connection in found:
        assert connection["netns"] == netns[7101] != os.stat("/proc/self/ns/net").st_ino
        assert (connection["namespace"], connection["pod"]) == ("shop", "web-7d4b9c-x2x9z")
        assert (connection["container"], connection["pod_uid"]) == ("app", U1)
        assert connection["options"] is not None  # read from the socket in its namespace


@requires_root
def test_the_hosts_processes_are_named_by_their_namespace(
    node: tuple[CgroupTree, Path, dict[int, int]],
) -> None:
    _, root, netns = node
    shown = subprocess.run(
        [tcpecho_executable(), "watch", "-A", "--once", "--port", "7102",
         "--pod-logs", str(root / "pods"), "--container-logs", str(root / "containers")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    header, *rows = [
        line for line in shown.stdout.splitlines()[1:] if "7102" in line or "NAMESPACE" in line
    ]
    assert header.split()[:3] == ["NAMESPACE", "POD", "CONTAINER"]
    assert len(rows) == 2
    for row in rows:
        assert row.split()[:3] == ["-", f"host:{netns[7102]}", "-"]


@requires_root
def test_names_from_the_node_are_escaped_in_the_table(tmp_path: Path) -> None:
    """A pod's name is the node's text, not ours: a terminal escape in it is shown escaped,
    and the JSON keeps it as read."""
    holders: list[subprocess.Popen[str]] = []
    with cgroup_tree("unified") as tree:
        try:
            holders = [_holder(7103)]
            tree.move(holders[0].pid, f"{SYSTEMD_POD_A}/cri-containerd-{C1}.scope")
            odd = "web\x1b[2Jevil"
            lay_out_logs(tmp_path, [LoggedPod("shop", odd, U1, {"app": C1})])
            logs = [
                "--pod-logs",
                str(tmp_path / "pods"),
                "--container-logs",
                str(tmp_path / "containers"),
            ]
            table = subprocess.run(
                [tcpecho_executable(), "watch", "-A", "--once", "--port", "7103", *logs],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert table.returncode == 0, table.stderr
            assert "\x1b" not in table.stdout
            assert "evil" in table.stdout
            found = _watch_all_port(tmp_path, 7103)
            assert {c["pod"] for c in found} == {odd}
        finally:
            for holder in holders:
                holder.kill()
                holder.wait()


def _watch_all_port(root: Path, port: int) -> list[dict[str, Any]]:
    shown = subprocess.run(
        [tcpecho_executable(), "watch", "-A", "--once", "--json", "--port", str(port),
         "--pod-logs", str(root / "pods"), "--container-logs", str(root / "containers")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    connections: list[dict[str, Any]] = json.loads(shown.stdout)["connections"]
    return connections
