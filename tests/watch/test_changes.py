"""Whether a namespace can have changed since its last listing (``watch.changes``): the choice
of the namespaces to list again, over many snapshots of a node nothing happens on; a real
namespace's TCP counters, which a segment moves; and ``settled`` for real connections,
idle, connecting and black-holed, listed by the kernel."""

from __future__ import annotations

import itertools
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpecho.lab.topology import leftover_namespaces
from tcpecho.tcp import diag
from tcpecho.tcp.namespaces import NetNamespace
from tcpecho.watch.changes import LastListing, tcp_counters, to_relist
from tests.conftest import requires_netns
from tests.support import abandoned_namespaces

PREFIX = "tprfD-changes-"


def _namespaces(count: int) -> tuple[NetNamespace, ...]:
    return tuple(NetNamespace(inode, (inode,), own=False) for inode in range(1, count + 1))


def _quiet_node(count: int, relist_every: int, snapshots: int) -> list[set[int]]:
    """What ``to_relist`` chooses at each of ``snapshots`` snapshots of ``count`` namespaces
    whose counters never move and whose listings are all settled, the first listing
    included, with each namespace's age kept as the node watcher keeps it."""
    present = _namespaces(count)
    counters = {
        namespace.inode: "Tcp: 1 200 120000 -1 5 5 0 0 3 10 10 0 0 0 0" for namespace in present
    }
    last: dict[int, LastListing] = {}
    chosen_at = []
    for _ in range(snapshots):
        chosen = to_relist(present, last, counters, relist_every)
        chosen_at.append(chosen)
        for namespace in present:
            inode = namespace.inode
            if inode in chosen:
                last[inode] = LastListing(counters[inode], settled=True)
            else:
                last[inode] = LastListing(last[inode].counters, True, last[inode].age + 1)
    return chosen_at


@pytest.mark.parametrize(("count", "relist_every"), [(51, 12), (5, 12), (12, 12), (100, 3)])
def test_a_quiet_node_is_listed_again_a_share_at_a_time_and_each_within_the_bound(
    count: int, relist_every: int
) -> None:
    chosen_at = _quiet_node(count, relist_every, snapshots=4 * relist_every)
    assert chosen_at[0] == set(range(1, count + 1))  # the first look lists every one
    share = math.ceil(count / relist_every)
    for chosen in chosen_at[1:]:
        assert 1 <= len(chosen) <= share
    # No namespace goes longer than relist_every snapshots without a listing.
    for inode in range(1, count + 1):
        listed_at = [at for at, chosen in enumerate(chosen_at) if inode in chosen]
        gaps = [later - earlier for earlier, later in itertools.pairwise(listed_at)]
        assert gaps, f"namespace {inode} was listed only once"
        assert max(gaps) <= relist_every
        assert listed_at[-1] >= len(chosen_at) - relist_every


def test_a_namespace_that_moved_or_may_move_is_listed_at_once() -> None:
    present = _namespaces(4)
    counters: dict[int, str | None] = {1: "a", 2: "b", 3: None, 4: "d"}
    last = {
        1: LastListing("a", settled=True),  # unchanged: its listing stands
        2: LastListing("b-before", settled=True),  # a segment moved its counters
        3: LastListing("c", settled=True),  # its counters can no longer be read
        4: LastListing("d", settled=False),  # a timer was running in it
    }
    assert to_relist(present, last, counters, relist_every=1000) == {2, 3, 4}
    # A namespace seen for the first time is listed; one no longer present is not asked for.
    assert to_relist(_namespaces(5), last, {**counters, 5: "e"}, 1000) == {2, 3, 4, 5}


@pytest.fixture
def netns() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A namespace with loopback up and a process that holds it; removed afterwards."""
    for name in abandoned_namespaces(PREFIX):
        subprocess.run(["ip", "netns", "del", name], check=False)
    name = f"{PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    holder = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        holder = subprocess.Popen(
            ["ip", "netns", "exec", name, "sleep", "60"], stdin=subprocess.DEVNULL
        )
        yield name, holder
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        assert leftover_namespaces(f"{PREFIX}{os.getpid()}") == []


# Run inside the namespace: an idle connection, one black-holed with data out, one whose
# SYN goes unanswered; then what the kernel lists, as ``diag`` reads it, one line each.
LISTED = r"""
import socket, subprocess, sys, time
sys.path[:0] = sys.argv[1:]
from tcpecho.tcp import diag
from tcpecho.watch.changes import settled
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
idle = socket.create_connection(("127.0.0.1", port))
accepted = listener.accept()[0]
print("idle", settled(diag.connections()), flush=True)
subprocess.run(["nft", "add table inet tprfDc; add chain inet tprfDc in { type filter hook "
                f"input priority 0; }}; add rule inet tprfDc in tcp sport {port} "
                "tcp flags & (syn | ack) == syn | ack drop"], check=True)
connecting = socket.socket()
connecting.setblocking(False)
connecting.connect_ex(("127.0.0.1", port))
connecting_listed = [c for c in diag.connections() if c.state == "SYN_SENT"]
print("connecting", len(connecting_listed), settled(connecting_listed), flush=True)
connecting.close()
subprocess.run(["nft", f"add rule inet tprfDc in tcp dport {port} drop"], check=True)
idle.send(b"x")
time.sleep(0.5)
lost = [c for c in diag.connections() if c.local_port == idle.getsockname()[1]]
print("lost", len(lost), settled(lost), flush=True)
"""


@requires_netns
@pytest.mark.netns
def test_settled_is_true_of_an_idle_connection_only(
    netns: tuple[str, subprocess.Popen[bytes]],
) -> None:
    name, _ = netns
    src = str(Path(diag.__file__).parents[2])  # where this run's tcpecho is imported from
    shown = subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c", LISTED, src],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split("\n")
    assert shown[:3] == ["idle True", "connecting 1 False", "lost 1 False"]


@requires_netns
@pytest.mark.netns
def test_a_segment_moves_the_namespace_counters_and_nothing_else_does(
    netns: tuple[str, subprocess.Popen[bytes]],
) -> None:
    name, holder = netns
    namespace = NetNamespace(os.stat(f"/run/netns/{name}").st_ino, (holder.pid,), own=False)
    before = tcp_counters(namespace)
    assert before is not None
    assert before.startswith("Tcp: ")
    assert len(before.split()) >= 13
    assert tcp_counters(namespace) == before  # nothing sent: the same
    # One connection and one byte over the namespace's own loopback.
    subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c",
         "import socket; s = socket.create_server(('127.0.0.1', 0)); "
         "c = socket.create_connection(s.getsockname()); a = s.accept()[0]; "
         "c.send(b'x'); assert a.recv(1) == b'x'"],
        check=True, timeout=30,
    )  # fmt: skip
    after = tcp_counters(namespace)
    assert after is not None
    assert after != before
    # The host's own counters are another namespace's: its traffic moves not this one's.
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname()).close()
    assert tcp_counters(namespace) == after
    gone = NetNamespace(namespace.inode, (2**22 + 1,), own=False)  # no such process
    assert tcp_counters(gone) is None
