"""Every network namespace of the host (tcp/namespaces.py) and each one's connections
(tcp/diag.py), with real namespaces: named ones (``ip netns add``) and ones that live only as
long as their process (``unshare --net``), each held by processes with real TCP connections
over its own loopback.

What is checked is what a node agent relies on: each namespace is found with the processes
in it; a namespace's listing is exactly its connections, with their owners and options;
nothing the kernel refuses or takes away in the middle (a process that exits, a socket
closed after the dump, a descriptor reused, a capability missing) raises, and everything
left out is counted; entering a namespace never leaves a thread of the caller in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import durationpy
import pytest

import tcpecho
from tcpecho.lab.topology import remove_namespaces
from tcpecho.tcp.diag import (
    ALL_STATES,
    LISTEN,
    Connection,
    Owner,
    connections,
    connections_by_namespace,
    owners,
    socket_options,
)
from tcpecho.tcp.names import format_address
from tcpecho.tcp.namespaces import (
    NamespaceUnavailableError,
    NetNamespace,
    Skipped,
    host_namespaces,
    own_inode,
    reason_of,
    run_inside,
)
from tests.conftest import root_missing
from tests.support import abandoned_namespaces

TEST_PREFIX = "tnsA-tcp-"
USER_TIMEOUT_MS = 4321
REPLACEMENT_USER_TIMEOUT_MS = 777  # HOLDER's "replace": a fresh socket with other options
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# A process holding PAIRS loopback connections over IPv4 and one over IPv6 in its
# namespace, both ends (the client's with TCP_USER_TIMEOUT and SO_KEEPALIVE, one request
# each way so the byte counters move). It reports each socket (inode, local, peer, fd,
# whether it is the client's), then on "replace FD" swaps that descriptor for a fresh
# socket of other options (what a server's accept does to a descriptor just closed) and
# prints its inode. It exits when its stdin closes.
HOLDER = r"""
import json, os, resource, socket, subprocess, sys
pairs, user_timeout_ms = int(sys.argv[1]), int(sys.argv[2])
subprocess.run(["ip", "link", "set", "lo", "up"], stderr=subprocess.DEVNULL)
need = 2 * pairs + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < need:
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
held, report = {}, []
def pair(family, listener):
    client = socket.socket(family)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    client.connect(listener.getsockname()[:2])
    server, _ = listener.accept()
    client.sendall(b"ping")
    assert server.recv(4) == b"ping"
    server.sendall(b"pong!")
    assert client.recv(5) == b"pong!"
    for sock, is_client in ((client, True), (server, False)):
        held[sock.fileno()] = sock
        report.append([os.fstat(sock.fileno()).st_ino, sock.getsockname()[:2],
                       sock.getpeername()[:2], sock.fileno(), is_client])
for family, host, count in ((socket.AF_INET, "127.0.0.1", pairs), (socket.AF_INET6, "::1", 1)):
    with socket.create_server((host, 0), family=family, backlog=128) as listener:
        for _ in range(count):
            pair(family, listener)
namespace = os.stat("/proc/self/ns/net").st_ino
print(json.dumps({"pid": os.getpid(), "namespace": namespace, "sockets": report}), flush=True)
for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "replace":
        fd = int(argument)
        held.pop(fd).detach()
        fresh = socket.socket()
        fresh.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 777)
        os.dup2(fresh.fileno(), fd)
        fresh.close()
        print(os.fstat(fd).st_ino, flush=True)
"""


def _tools_missing() -> str | None:
    reason = root_missing()
    if reason:
        return reason
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install -y iproute2 util-linux)"
    return None


requires_namespaces = pytest.mark.skipif(_tools_missing() is not None, reason=str(_tools_missing()))


@dataclass(frozen=True)
class Held:
    local: str
    peer: str
    fd: int
    client: bool


class Holder:
    """A running HOLDER, started under ``prefix`` (``ip netns exec NAME``, ``unshare --net``)."""

    def __init__(self, prefix: list[str], pairs: int, user_timeout_ms: int) -> None:
        argv = [*prefix, sys.executable, "-c", HOLDER, str(pairs), str(user_timeout_ms)]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        report = json.loads(self._line(timeout=120))
        self.pid: int = report["pid"]
        assert self.pid == self.process.pid  # ip netns exec and unshare exec, not fork
        self.namespace: int = report["namespace"]
        self.sockets = {
            inode: Held(format_address(tuple(local)), format_address(tuple(peer)), fd, client)
            for inode, local, peer, fd, client in report["sockets"]
        }

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"the holder said nothing within {timeout}s"
        line = self.process.stdout.readline()
        assert line, f"the holder exited ({self.process.wait()})"
        return line

    def replace(self, fd: int) -> int:
        """Swap descriptor ``fd`` for a fresh socket; its inode."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"replace {fd}\n")
        self.process.stdin.flush()
        return int(self._line(timeout=10))

    def exit(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(10) == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def as_namespace(self) -> NetNamespace:
        return NetNamespace(inode=self.namespace, holders=(self.pid,), own=False)


class Lab:
    """Named namespaces and holders, every one removed at teardown."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.holders: list[Holder] = []

    def named(self) -> list[str]:
        """A new named namespace with its loopback up: the prefix to run a command in it."""
        name = f"{TEST_PREFIX}{os.getpid()}-{len(self.names)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return ["ip", "netns", "exec", name]

    def hold(
        self, prefix: list[str], pairs: int = 2, user_timeout_ms: int = USER_TIMEOUT_MS
    ) -> Holder:
        holder = Holder(prefix, pairs, user_timeout_ms)
        self.holders.append(holder)
        return holder

    def close(self) -> None:
        for holder in self.holders:
            holder.stop()
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    remove_namespaces(abandoned_namespaces(TEST_PREFIX))
    made = Lab()
    try:
        yield made
    finally:
        made.close()


def _addresses(listed: list[Connection]) -> dict[int, tuple[str, str]]:
    return {connection.inode: (connection.local, connection.peer) for connection in listed}


def _held_addresses(holder: Holder) -> dict[int, tuple[str, str]]:
    return {inode: (held.local, held.peer) for inode, held in holder.sockets.items()}


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    assert not Path(f"/proc/{process.pid}").exists()
    return process.pid


def test_each_failure_is_counted_under_its_reason() -> None:
    skipped = Skipped()
    for number in (2, 3, 13, 1, 1, 22):  # ENOENT, ESRCH, EACCES, EPERM, EPERM, EINVAL
        skipped.count(reason_of(OSError(number, os.strerror(number))))
    assert skipped.by_reason() == {"vanished": 2, "refused": 3, "failed": 1}
    assert skipped.total == 6


def test_the_walk_finds_the_callers_own_namespace_with_the_caller_in_it() -> None:
    """As any user: the caller's own namespace, with the caller, is always found."""
    walk = host_namespaces()
    own = walk.by_inode()[own_inode()]
    assert own.own
    assert os.getpid() in own.holders
    assert [namespace for namespace in walk.namespaces if namespace.own] == [own]
    inodes = [namespace.inode for namespace in walk.namespaces]
    assert inodes == sorted(inodes)


@requires_namespaces
def test_the_walk_finds_each_namespace_with_its_holders(lab: Lab) -> None:
    first, second = lab.named(), lab.named()
    one, two = lab.hold(first), lab.hold(first)
    alone = lab.hold(second)
    found = host_namespaces().by_inode()
    assert found[one.namespace] == NetNamespace(
        inode=one.namespace, holders=tuple(sorted((one.pid, two.pid))), own=False
    )
    assert found[alone.namespace] == NetNamespace(
        inode=alone.namespace, holders=(alone.pid,), own=False
    )
    assert one.namespace == os.stat(f"/run/netns/{first[-1]}").st_ino
    assert one.namespace != alone.namespace != own_inode()


@requires_namespaces
def test_a_namespace_lists_exactly_its_own_connections_with_owners_and_options(lab: Lab) -> None:
    first = lab.hold(lab.named(), pairs=3, user_timeout_ms=USER_TIMEOUT_MS)
    second = lab.hold(["unshare", "--net"], pairs=4, user_timeout_ms=5432)
    own = {connection.inode for connection in connections()}
    for holder, user_timeout_ms in ((first, USER_TIMEOUT_MS), (second, 5432)):
        listed = connections(namespace=holder.as_namespace())
        assert _addresses(listed) == _held_addresses(holder)
        assert {connection.state for connection in listed} == {"ESTABLISHED"}
        assert not own & set(holder.sockets)
        found = owners(set(holder.sockets))
        assert {inode: (owner.pid, owner.fd) for inode, owner in found.items()} == {
            inode: (holder.pid, held.fd) for inode, held in holder.sockets.items()
        }
        for inode, held in holder.sockets.items():
            options = socket_options(found[inode])
            assert options is not None
            # An accepted socket inherits the listener's options, and it set none.
            assert options.user_timeout_ms == (user_timeout_ms if held.client else 0)
            assert options.keepalive is held.client


@requires_namespaces
def test_every_namespace_is_listed_under_its_inode(lab: Lab) -> None:
    first = lab.hold(lab.named(), pairs=1)
    second = lab.hold(lab.named(), pairs=2)
    walk = host_namespaces().by_inode()
    listing = connections_by_namespace([walk[first.namespace], walk[second.namespace]])
    assert listing.skipped.total == 0
    assert {inode: _addresses(listed) for inode, listed in listing.by_namespace.items()} == {
        first.namespace: _held_addresses(first),
        second.namespace: _held_addresses(second),
    }


def _pyroute2_dump(states: int) -> list[Any]:
    from pyroute2 import DiagSocket

    with DiagSocket() as diag:
        diag.bind()
        return [
            message
            for family in (socket.AF_INET, socket.AF_INET6)
            for message in diag.get_sock_stats(family=family, states=states, extensions=2)
        ]


def _as_pyroute2_reads(message: Any) -> tuple[Any, ...]:
    info = message.get_attr("INET_DIAG_INFO")
    return (
        format_address((message["idiag_src"], message["idiag_sport"])),
        format_address((message["idiag_dst"], message["idiag_dport"])),
        message["idiag_state"],
        message["idiag_timer"],
        message["idiag_wqueue"],
        message["idiag_rqueue"],
        *(info[f"tcpi_{name}"] for name in _INFO_COMPARED),
    )


# tcp_info's fields that hold still on an idle connection (not the times since the last
# packet): what both readers must decode alike.
_INFO_COMPARED = [
    "state",
    "retransmits",
    "probes",
    "backoff",
    "rto",
    "unacked",
    "lost",
    "total_retrans",
    "bytes_acked",
    "bytes_received",
]


def _as_read_here(connection: Connection) -> tuple[Any, ...]:
    info = connection.info
    assert info is not None
    states = {"ESTABLISHED": 1}
    return (
        connection.local,
        connection.peer,
        states[connection.state],
        {"off": 0, "keepalive": 2}[connection.timer],
        connection.send_queue,
        connection.receive_queue,
        states[info.state],
        info.retransmits,
        info.probes,
        info.backoff,
        round(info.rto_ms * 1000),
        info.unacked,
        info.lost,
        info.total_retrans,
        connection.bytes_acked,
        connection.bytes_received,
    )


@requires_namespaces
def test_the_netlink_reader_decodes_what_pyroute2_decodes(lab: Lab) -> None:
    """The dump is read here, not by pyroute2 (ten times faster): both agree on every
    field, over IPv4 and IPv6, both ends, with bytes sent each way."""
    holder = lab.hold(lab.named(), pairs=3)
    namespace = holder.as_namespace()
    states = ALL_STATES & ~(1 << LISTEN)
    theirs = run_inside(namespace, lambda: _pyroute2_dump(states))
    ours = connections(namespace=namespace)
    assert {connection.inode: _as_read_here(connection) for connection in ours} == {
        message["idiag_inode"]: _as_pyroute2_reads(message) for message in theirs
    }
    assert {c.bytes_received for c in ours} == {4, 5}  # "ping" one way, "pong!" the other
    assert any(c.timer == "keepalive" for c in ours)


def _threads_namespaces() -> set[int]:
    found = set()
    for task in os.listdir("/proc/self/task"):
        try:
            found.add(os.stat(f"/proc/self/task/{task}/ns/net").st_ino)
        except FileNotFoundError:  # a thread that has just ended
            continue
    return found


@requires_namespaces
def test_entering_a_namespace_leaves_no_thread_of_the_caller_in_it(lab: Lab) -> None:
    holder = lab.hold(lab.named(), pairs=1)
    namespace = holder.as_namespace()
    home, threads = own_inode(), threading.active_count()
    assert run_inside(namespace, own_inode) == holder.namespace
    connections(namespace=namespace)
    with pytest.raises(ZeroDivisionError):
        run_inside(namespace, lambda: 1 // 0)
    assert own_inode() == home
    assert _threads_namespaces() == {home}
    assert threading.active_count() == threads


@requires_namespaces
def test_work_inside_a_namespace_reads_its_own_sysctls(lab: Lab) -> None:
    """What a node agent needs for each namespace's kernel settings: /proc/sys/net opened
    inside is that namespace's, while the caller's stays its own."""
    path = Path("/proc/sys/net/ipv4/tcp_keepalive_time")
    theirs = int(path.read_text()) + 1
    prefix = lab.named()
    subprocess.run([*prefix, "sysctl", "-qw", f"net.ipv4.tcp_keepalive_time={theirs}"], check=True)
    holder = lab.hold(prefix, pairs=1)
    assert run_inside(holder.as_namespace(), lambda: int(path.read_text())) == theirs
    assert int(path.read_text()) == theirs - 1


@requires_namespaces
def test_a_namespace_whose_only_holder_exits_is_skipped_and_counted(lab: Lab) -> None:
    """Found by the walk, gone by the time it is read: counted, and the others listed."""
    going = lab.hold(["unshare", "--net"], pairs=1)
    staying = lab.hold(lab.named(), pairs=1)
    walk = host_namespaces().by_inode()
    found = [walk[going.namespace], walk[staying.namespace]]
    assert found[0].holders == (going.pid,)
    going.exit()
    with pytest.raises(NamespaceUnavailableError) as unavailable:
        connections(namespace=found[0])
    assert unavailable.value.reason == "vanished"
    listing = connections_by_namespace(found)
    assert listing.skipped.by_reason() == {"vanished": 1, "refused": 0, "failed": 0}
    assert {inode: _addresses(listed) for inode, listed in listing.by_namespace.items()} == {
        staying.namespace: _held_addresses(staying)
    }


@requires_namespaces
def test_a_holder_whose_pid_names_another_namespace_is_passed_over(lab: Lab) -> None:
    """A PID reused by a process of another namespace must not be entered for this one."""
    first = lab.hold(lab.named(), pairs=1)
    second = lab.hold(lab.named(), pairs=2)
    reused = NetNamespace(inode=first.namespace, holders=(second.pid,), own=False)
    with pytest.raises(NamespaceUnavailableError) as unavailable:
        connections(namespace=reused)
    assert unavailable.value.reason == "vanished"
    some_left = NetNamespace(
        inode=first.namespace, holders=(_dead_pid(), second.pid, first.pid), own=False
    )
    assert _addresses(connections(namespace=some_left)) == _held_addresses(first)


@requires_namespaces
def test_the_walk_skips_and_counts_a_process_that_exited(lab: Lab) -> None:
    holder = lab.hold(lab.named(), pairs=1)
    walk = host_namespaces(pids=[_dead_pid(), holder.pid])
    assert walk.namespaces == (holder.as_namespace(),)
    assert walk.skipped.by_reason() == {"vanished": 1, "refused": 0, "failed": 0}


def _churn(stop: threading.Event, started: list[int]) -> None:
    """Short-lived namespaces, one after another, until ``stop`` (at most 400)."""
    for _ in range(400):
        if stop.is_set():
            return
        process = subprocess.Popen(["unshare", "--net", "sleep", "0.02"])
        started.append(process.pid)
        process.wait()


@requires_namespaces
def test_namespaces_that_come_and_go_during_walks_are_each_listed_or_counted() -> None:
    """Walks and listings beside a churn of short-lived namespaces (at least 50 of them and
    20 walks, within 60 s): every namespace walked is either listed or counted, and nothing
    raises. Both counts are waited for, not raced: on a loaded machine a walk can take as
    long as a few namespaces' lives."""
    stop, started = threading.Event(), list[int]()
    churn = threading.Thread(target=_churn, args=(stop, started), daemon=True)
    churn.start()
    rounds, skipped, deadline = 0, Skipped(), time.monotonic() + 60
    try:
        while (len(started) < 50 or rounds < 20) and time.monotonic() < deadline:
            walk = host_namespaces()
            listing = connections_by_namespace(walk.namespaces)
            assert len(listing.by_namespace) + listing.skipped.total == len(walk.namespaces)
            assert set(listing.by_namespace) <= {n.inode for n in walk.namespaces}
            skipped.vanished += listing.skipped.vanished
            rounds += 1
    finally:
        stop.set()
        churn.join(30)
    assert len(started) >= 50
    assert rounds >= 20
    print(f"{rounds} walks beside {len(started)} namespaces: {skipped.vanished} vanished")


@requires_namespaces
def test_a_namespace_with_50000_sockets_is_listed_completely(lab: Lab) -> None:
    """Five processes of 10,002 sockets each (what a hard limit of 20,000 descriptors
    lets one hold) in one namespace: every socket listed, each with its owner."""
    prefix = lab.named()
    holders = [lab.hold(prefix, pairs=5_000) for _ in range(5)]
    held = {inode: where for h in holders for inode, where in _held_addresses(h).items()}
    assert len(held) == 50_010
    namespace = host_namespaces().by_inode()[holders[0].namespace]
    assert namespace.holders == tuple(sorted(holder.pid for holder in holders))
    assert _addresses(connections(namespace=namespace)) == held
    found = owners(set(held))
    assert {inode: owner.pid for inode, owner in found.items()} == {
        inode: holder.pid for holder in holders for inode in holder.sockets
    }
    assert owners(set(held), pids=namespace.holders) == found  # its holders suffice


@requires_namespaces
def test_a_socket_closed_after_the_dump_has_no_owner_and_no_options(lab: Lab) -> None:
    """Between the dump and the reads the program goes on: a descriptor closed and reused
    for another socket must not lend that socket's options to the listed one."""
    holder = lab.hold(lab.named(), pairs=2)
    listed = connections(namespace=holder.as_namespace())
    found = owners({connection.inode for connection in listed})
    client = next(inode for inode, held in holder.sockets.items() if held.client)
    options = socket_options(found[client])
    assert options is not None
    assert options.user_timeout_ms == USER_TIMEOUT_MS
    fresh = holder.replace(found[client].fd)
    assert socket_options(found[client]) is None
    # The descriptor does hold the fresh socket, with its own options.
    replacement = socket_options(Owner(holder.pid, "", found[client].fd, fresh))
    assert replacement is not None
    assert replacement.user_timeout_ms == REPLACEMENT_USER_TIMEOUT_MS
    holder.exit()
    assert owners(set(holder.sockets)) == {}
    assert all(socket_options(owner) is None for owner in found.values())


# Each part as a node agent without some capability runs it: the walk, the listing of the
# holder's namespace, its socket's owner, its socket's options (read with pidfd_getfd
# even where no owner was found, to see that part on its own).
PROBE = r"""
import json, sys
from tcpecho.tcp import diag, namespaces
held = json.loads(sys.argv[1])
walk = namespaces.host_namespaces()
found = walk.by_inode().get(held["namespace"])
target = found or namespaces.NetNamespace(held["namespace"], (held["pid"],), False)
listing = diag.connections_by_namespace([target])
listed = listing.by_namespace.get(held["namespace"], [])
owner = diag.owners({held["inode"]}).get(held["inode"])
options = diag.socket_options(diag.Owner(held["pid"], "", held["fd"], held["inode"]))
print(json.dumps({
    "found": found is not None,
    "walk_refused": walk.skipped.refused,
    "listed": held["inode"] in {connection.inode for connection in listed},
    "skipped": listing.skipped.by_reason(),
    "owner": owner is not None and owner.pid == held["pid"],
    "options": None if options is None else options.user_timeout_ms,
}))
"""


def _without(*capabilities: str) -> list[str]:
    """Root without ``capabilities``: out of the bounding and inheritable sets, so the
    program run cannot get them back."""
    dropped = ",".join(f"-{name}" for name in capabilities)
    return ["setpriv", f"--bounding-set={dropped}", f"--inh-caps={dropped}"]


@contextlib.contextmanager
def _readable_by_anyone() -> Iterator[str]:
    """The probe's imports (tcpecho, durationpy) copied where user nobody can read them: a
    checkout under /root, or a virtual environment there, is out of its reach."""
    place = tempfile.mkdtemp(prefix="tnsA-probe-")
    try:
        os.chmod(place, 0o755)  # noqa: S103 - read by user nobody, on purpose
        for package in (tcpecho, durationpy):
            assert package.__file__ is not None
            shutil.copytree(Path(package.__file__).parent, Path(place) / package.__name__)
        yield place
    finally:
        shutil.rmtree(place)


ALL_READ = {"found": True, "listed": True, "owner": True, "options": USER_TIMEOUT_MS}
NOT_SEEN = {"found": False, "listed": False, "owner": False, "options": None}


@requires_namespaces
@pytest.mark.parametrize(
    ("agent", "program_as_nobody", "expected"),
    [
        pytest.param([], False, ALL_READ, id="root"),
        pytest.param(
            _without("sys_admin"),
            False,
            {**ALL_READ, "listed": False},
            id="no-sys_admin-no-setns",
        ),
        pytest.param(_without("sys_ptrace"), False, NOT_SEEN, id="no-sys_ptrace"),
        pytest.param(
            _without("dac_read_search", "dac_override"),
            True,
            {**ALL_READ, "owner": False},
            id="no-dac-program-of-another-user",
        ),
        pytest.param(NOBODY, False, NOT_SEEN, id="nobody"),
    ],
)
def test_without_a_capability_the_listing_degrades_and_counts(
    lab: Lab, agent: list[str], program_as_nobody: bool, expected: dict[str, object]
) -> None:
    prefix = lab.named()
    holder = lab.hold([*prefix, *NOBODY] if program_as_nobody else prefix, pairs=1)
    inode, held = next((i, h) for i, h in holder.sockets.items() if h.client)
    argument = {"pid": holder.pid, "namespace": holder.namespace, "inode": inode, "fd": held.fd}
    with _readable_by_anyone() as source:
        run = subprocess.run(
            [*agent, os.path.realpath(sys.executable), "-c", PROBE, json.dumps(argument)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": source},
        )
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert {key: seen[key] for key in expected} == expected
    refused = 0 if expected["listed"] else 1
    assert seen["skipped"] == {"vanished": 0, "refused": refused, "failed": 0}
    if not expected["found"]:
        assert seen["walk_refused"] >= 1  # the holder, at least, counted
