"""The namespaces: built as described, isolated from the host, removed with all they hold."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tcpecho.lab.topology import (
    CLIENT_IP,
    SERVER_IP,
    Topology,
    leftover_namespaces,
    remove_namespaces,
)
from tests.conftest import requires_netns

pytestmark = [requires_netns, pytest.mark.netns]

PREFIX = f"tcpecho-test-topo-{os.getpid()}"


def _addresses(topology: Topology, namespace: str) -> str:
    return subprocess.run(
        topology.command(namespace, ["ip", "-4", "-o", "addr"]), capture_output=True, text=True
    ).stdout


def test_builds_three_namespaces_and_removes_them() -> None:
    topology = Topology(f"{PREFIX}-a")
    with topology:
        assert set(leftover_namespaces(PREFIX)) == set(topology.pods)
        assert CLIENT_IP in _addresses(topology, topology.client_ns)
        assert SERVER_IP in _addresses(topology, topology.server_ns)
        assert topology.read_sysctl(topology.node_ns, "net.ipv4.ip_forward") == 1
        rules = subprocess.run(
            topology.command(topology.node_ns, ["nft", "list", "ruleset"]),
            capture_output=True,
            text=True,
        ).stdout
        assert "dnat to 10.244.2.2:8000" in rules
        assert "ct state invalid drop" in rules
    assert leftover_namespaces(PREFIX) == []


def test_sysctls_change_only_inside_the_namespace() -> None:
    with open("/proc/sys/net/ipv4/tcp_retries2") as handle:
        host_before = handle.read()
    with Topology(f"{PREFIX}-b") as topology:
        topology.sysctl(topology.client_ns, "net.ipv4.tcp_retries2", 5)
        assert topology.read_sysctl(topology.client_ns, "net.ipv4.tcp_retries2") == 5
        # A new namespace starts from the kernel's default, not the host's value.
        assert topology.read_sysctl(topology.server_ns, "net.ipv4.tcp_retries2") == 15
    with open("/proc/sys/net/ipv4/tcp_retries2") as handle:
        assert handle.read() == host_before


def test_removing_namespaces_kills_what_runs_in_them() -> None:
    topology = Topology(f"{PREFIX}-c")
    topology.build()
    try:
        sleeper = subprocess.Popen(topology.command(topology.server_ns, ["sleep", "300"]))
        time.sleep(0.2)
    finally:
        remove_namespaces(topology.namespaces)
    assert sleeper.wait(5) == -15  # SIGTERM
    assert leftover_namespaces(PREFIX) == []
