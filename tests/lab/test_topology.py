"""The namespaces: built as described, isolated from the host, removed with all they hold."""

from __future__ import annotations

import os
import subprocess
import sys
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


def _ruleset(topology: Topology) -> str:
    return subprocess.run(
        topology.command(topology.node_ns, ["nft", "list", "ruleset"]),
        capture_output=True,
        text=True,
    ).stdout


def test_a_node_that_forgets_idle_flows_changes_only_its_own_namespace() -> None:
    keys = (
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        "net.netfilter.nf_conntrack_tcp_loose",
    )
    with Topology(f"{PREFIX}-d") as topology:
        before = {key: topology.read_sysctl(topology.client_ns, key) for key in keys}
        topology.forget_idle_flows(7, reset=True)
        assert [topology.read_sysctl(topology.node_ns, key) for key in keys] == [7, 0]
        # Per network namespace: the client pod's conntrack keeps the kernel's values.
        assert {key: topology.read_sysctl(topology.client_ns, key) for key in keys} == before
        rules = _ruleset(topology)
        assert "hook prerouting" in rules
        assert "ct state invalid reject with tcp reset" in rules
    assert leftover_namespaces(PREFIX) == []


def test_the_service_rule_goes_and_comes_back_and_a_partition_heals() -> None:
    with Topology(f"{PREFIX}-e") as topology:
        topology.remove_service_rule()
        assert "dnat to" not in _ruleset(topology)
        routes = subprocess.run(
            topology.command(topology.node_ns, ["ip", "route", "show", "default"]),
            capture_output=True,
            text=True,
        ).stdout
        assert "dev uplink" in routes  # what is not translated leaves the node, to vanish
        topology.add_service_rule()
        assert f"dnat to {SERVER_IP}:8000" in _ruleset(topology)
        topology.drop_pod_traffic()
        assert "table ip fault" in _ruleset(topology)
        topology.heal()
        assert "table ip fault" not in _ruleset(topology)


def test_a_new_pod_takes_the_vanished_pods_ip_and_goes_with_the_topology() -> None:
    with Topology(f"{PREFIX}-f") as topology:
        topology.blackhole_pod_route()
        topology.pod_link_down()
        topology.reuse_server_ip()
        assert SERVER_IP in _addresses(topology, topology.new_server_ns)
        assert SERVER_IP not in _addresses(topology, topology.server_ns)  # its link went
        # The route to the IP is back, to a pod that listens on nothing: refused at once.
        connect = subprocess.run(
            topology.command(
                topology.client_ns,
                [
                    sys.executable,
                    "-c",
                    f"import socket; socket.create_connection(({SERVER_IP!r}, 8000), 2)",
                ],
            ),
            capture_output=True,
            text=True,
        )
        assert "ConnectionRefusedError" in connect.stderr
        assert set(leftover_namespaces(PREFIX)) == set(topology.namespaces)
    assert leftover_namespaces(PREFIX) == []
