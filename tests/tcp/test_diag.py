"""The one-walk dump of tcp/diag.py (the legacy ``TCPDIAG_GETSOCK`` request, both families at
once) against the per-family SOCK_DIAG_BY_FAMILY dumps it replaced, on real sockets in
namespaces made here: the same connections, field for field, in the same order, over IPv4,
IPv6 and v4-mapped addresses, in several states, and with ten thousand sockets; and the
tcp_info read in place from the dump against ``read_tcp_info``, on the kernel's own bytes.
"""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tcpecho.lab.topology import remove_namespaces
from tcpecho.tcp import diag
from tcpecho.tcp.diag import ALL_STATES, Connection, connections
from tcpecho.tcp.info import read_tcp_info
from tcpecho.tcp.namespaces import NetNamespace
from tests.support import abandoned_namespaces
from tests.tcp.test_namespaces import requires_namespaces

TEST_PREFIX = "tdgG-diag-"
MANY_PAIRS = 5100  # 10,200 sockets, past the 10,000 a busy node's namespace holds

# Holds, in its namespace, PAIRS IPv4 connections, and beside them one connection of each
# kind the dump tells apart: IPv6, v4-mapped (an IPv4 client of a dual-stack listener),
# half-closed (FIN-WAIT-2 and CLOSE-WAIT), TIME-WAIT, and the listeners. It prints its
# namespace's inode and pid once ready, and exits when its stdin closes.
HOLDER = r"""
import os, resource, socket, sys, time
pairs = int(sys.argv[1])
need = 2 * pairs + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < need:
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
held = []
def pair(listener, host):
    client = socket.create_connection((host, listener.getsockname()[1]))
    server = listener.accept()[0]
    client.sendall(b"ping")
    assert server.recv(4) == b"ping"
    held.extend((client, server))
    return client, server
v4 = socket.create_server(("127.0.0.1", 0), backlog=1024)
v6 = socket.create_server(("::1", 0), family=socket.AF_INET6, backlog=16)
dual = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True, backlog=16)
held += [v4, v6, dual]
for _ in range(pairs):
    pair(v4, "127.0.0.1")
pair(v6, "::1")
pair(dual, "127.0.0.1")  # the server's end is [::ffff:127.0.0.1]
client, server = pair(v4, "127.0.0.1")
client.shutdown(socket.SHUT_WR)  # FIN-WAIT-2 here once its FIN is acknowledged, CLOSE-WAIT there
assert server.recv(1) == b""
while client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 5:  # TCP_FIN_WAIT2
    time.sleep(0.001)
closed, server = pair(v4, "127.0.0.1")
closed.close()  # the active closer ends in TIME-WAIT once the server closes too
server.close()
held.remove(closed)
held.remove(server)
print(os.stat("/proc/self/ns/net").st_ino, os.getpid(), flush=True)
sys.stdin.read()
"""


class Holders:
    """Named namespaces, each with a HOLDER; every one removed at teardown."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []

    def hold(self, pairs: int) -> NetNamespace:
        name = f"{TEST_PREFIX}{os.getpid()}-{len(self.names)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        argv = ["ip", "netns", "exec", name, sys.executable, "-c", HOLDER, str(pairs)]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.processes.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "the holder said nothing within 120 s"
        inode, pid = process.stdout.readline().split()
        return NetNamespace(inode=int(inode), holders=(int(pid),), own=False)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def holders() -> Iterator[Holders]:
    remove_namespaces(abandoned_namespaces(TEST_PREFIX))
    made = Holders()
    try:
        yield made
    finally:
        made.close()


def _still(connection: Connection) -> Connection:
    """``connection`` without what moves between two dumps taken one after the other: the
    timer's time left, and the times since the last packet."""
    info = connection.info
    if info is not None:
        info = dataclasses.replace(
            info, last_data_sent_ms=0, last_data_recv_ms=0, last_ack_recv_ms=0
        )
    return dataclasses.replace(connection, timer_expires_ms=0, info=info)


def _assert_same_as_per_family(namespace: NetNamespace, states: int) -> list[Connection]:
    once = connections(states=states, namespace=namespace)
    per_family = connections(states=states, namespace=namespace, per_family=True)
    assert [_still(c) for c in once] == [_still(c) for c in per_family]
    return once


@requires_namespaces
def test_one_walk_lists_what_the_per_family_dumps_list(holders: Holders) -> None:
    first, second = holders.hold(pairs=3), holders.hold(pairs=2)
    for namespace, pairs in ((first, 3), (second, 2)):
        listed = _assert_same_as_per_family(namespace, ALL_STATES)
        states = {c.state for c in listed}
        assert states == {"LISTEN", "ESTABLISHED", "FIN_WAIT2", "CLOSE_WAIT", "TIME_WAIT"}
        # pairs + the half-closed one, both ends; the v6 and v4-mapped pairs; 3 listeners.
        assert len(listed) == 2 * (pairs + 1) + 4 + 3 + 1
        assert any(c.local.startswith("[::ffff:127.0.0.1]:") for c in listed)
        assert any(c.local.startswith("[::1]:") for c in listed)
        families = [c.local.startswith("[") for c in listed]
        assert families == sorted(families)  # IPv4 first, then IPv6, as before
        for connection in listed:
            if connection.state == "TIME_WAIT":  # the kernel's timewait sock: no tcp_info
                assert connection.info is None
                assert connection.inode == 0
            else:
                assert connection.info is not None
                assert connection.info.state == connection.state
                assert connection.cookie != 0
                assert connection.inode != 0
        assert len({c.cookie for c in listed}) == len(listed)
        established = [c for c in listed if c.state == "ESTABLISHED"]
        assert {c.bytes_received for c in established} == {0, 4}
        # The client's "ping" and its SYN (one sequence number); the server sent nothing.
        assert {c.bytes_acked for c in established} == {0, 5}


@requires_namespaces
def test_one_walk_lists_ten_thousand_sockets_as_the_per_family_dumps_do(
    holders: Holders,
) -> None:
    namespace = holders.hold(pairs=MANY_PAIRS)
    listed = _assert_same_as_per_family(namespace, diag.CONNECTED_STATES)
    # Every pair's two ends (the half-closed pair's too); neither LISTEN nor TIME-WAIT.
    assert len(listed) == 2 * (MANY_PAIRS + 1) + 4
    assert len({c.inode for c in listed}) == len(listed)


def _info_payloads(sock: socket.socket) -> Iterator[tuple[bytes, int, int]]:
    """Each INET_DIAG_INFO payload of a dump, up to NLMSG_DONE: the bytes received that hold
    it, and where in them it starts and ends."""
    while True:
        dump, offset = sock.recv(diag._RECEIVE_BYTES), 0
        assert dump, "the dump ended without NLMSG_DONE"
        while offset + diag._HEADER.size <= len(dump):
            length, kind = diag._LENGTH_AND_TYPE.unpack_from(dump, offset)
            if kind != diag._TCPDIAG_GETSOCK:  # NLMSG_DONE, or an error
                return
            at, end = offset + diag._HEADER.size + diag._MESSAGE.size, offset + length
            while at + 4 <= end:
                size, attribute = diag._ATTRIBUTE.unpack_from(dump, at)
                if attribute & diag._ATTRIBUTE_TYPE == diag._INFO:
                    yield dump, at + 4, at + size
                at += (size + 3) & ~3
            offset += (length + 3) & ~3


@requires_namespaces
def test_tcp_info_read_in_place_is_what_read_tcp_info_reads(holders: Holders) -> None:
    """On the kernel's own bytes: the full tcp_info, and one cut where a kernel before 4.2
    ends it (no byte counters)."""
    namespace = holders.hold(pairs=2)
    with diag._diag_socket(namespace) as sock:
        request = diag._LEGACY_REQUEST.pack(0, 0, 0, diag._ASK_INFO, ALL_STATES, 0)
        diag._send(sock, diag._TCPDIAG_GETSOCK, 0, request)
        payloads = list(_info_payloads(sock))
    assert len(payloads) == 2 * 3 + 4 + 3  # every socket but the one in TIME-WAIT
    for dump, start, end in payloads:
        raw = dump[start:end]
        counted = diag._BYTES_COUNTED.unpack_from(raw, diag._BYTES_COUNTED_AT)
        expected = read_tcp_info(diag._Carried(raw))
        assert diag._tcp_info(dump, start, end) == (expected, *counted)
        before_4_2 = start + diag._BYTES_COUNTED_AT
        expected = read_tcp_info(diag._Carried(dump[start:before_4_2]))
        assert diag._tcp_info(dump, start, before_4_2) == (expected, 0, 0)
