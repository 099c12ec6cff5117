"""What the node agent keeps between snapshots (``NodeWatcher``): each socket's options, read
once and kept while the socket lives, and the model's answers, shared by every connection
with the same sysctls, options and state. Real namespaces (``ip netns add``), each with its
own sysctls, real connections held by a process in each, one of them black-holed with
nftables; what is kept must be what a fresh look computes, and a socket that closed, whose
descriptor or inode another socket took, must never be given its predecessor's options."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tcpecho.lab.topology import leftover_namespaces
from tcpecho.model import KernelSettings
from tcpecho.tcp import namespaces
from tcpecho.tcp.namespaces import NetNamespace
from tcpecho.watch import look
from tcpecho.watch.config import WatchConfig
from tcpecho.watch.look import NodeSnapshot, NodeWatcher, Watched
from tests.conftest import requires_netns
from tests.support import abandoned_namespaces

PREFIX = "tprfD-cache-"
PORT = 7131  # each namespace's listener; --port keeps the watch to these connections
# The sysctls of the second namespace, where the first keeps the kernel's defaults: the
# same options must be judged with each namespace's own.
SHORT_SYSCTLS = {"net.ipv4.tcp_retries2": "5", "net.ipv4.tcp_keepalive_time": "60"}
# A route whose connections start from a longer RTO (rto_min 300 ms: 304 ms on loopback, where
# the others have 204 ms), which the model's answers depend on beyond the measured range.
SLOW_ROUTE = ("local", "127.0.0.2", "dev", "lo", "table", "local", "rto_min", "300ms")
SLOW = 2  # connect to 127.0.0.2

# Holds connections to its own listener on PORT and does to them what it is told on stdin,
# one command a line, answering one line each.
HOLDER = r"""
import os, select, socket, subprocess, sys
children = []
listener = socket.create_server(("", int(sys.argv[1])), backlog=64)
held = {}
def made(user_timeout_ms, keepidle_s):
    client = socket.socket()
    if user_timeout_ms:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    if keepidle_s:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepidle_s)
    return client
for line in sys.stdin:
    command, *args = line.split()
    numbers = [int(arg) for arg in args]
    fd = numbers[0] if numbers else -1
    if command == "connect":  # USER_TIMEOUT_MS KEEPIDLE_S (0: left unset) TO (127.0.0.TO)
        client = made(*numbers[:2])
        client.connect((f"127.0.0.{numbers[2]}", listener.getsockname()[1]))
        fd = client.fileno()
        held[fd] = (client, listener.accept()[0])
    elif command == "connecting":  # a connect left under way: its SYN may be dropped
        client = made(0, 0)
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", listener.getsockname()[1]))
        fd = client.fileno()
        held[fd] = (client,)
    elif command == "connected":  # FD: wait for its connect to finish
        select.select([], [held[fd][0]], [], 10)
        assert held[fd][0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    elif command == "keepalive":  # FD
        held[fd][0].setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    elif command == "user-timeout":  # FD MS
        held[fd][0].setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, numbers[1])
    elif command == "send":  # FD
        held[fd][0].send(b"x" * 100)
    elif command == "moved":  # FD: the client handed to a child of its own, and closed here
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE, pass_fds=[fd])
        children.append(child)  # it exits when this holder does (its stdin closes)
        held[fd][0].close()
        held[fd] = (held[fd][1],)
        fd = child.pid
    elif command == "renumbered":  # FD: the client moved to another descriptor, FD reused
        client = held[fd][0]
        moved = socket.socket(fileno=os.dup(client.fileno()))
        client.close()
        other = made(0, 0)
        other.connect(("127.0.0.1", listener.getsockname()[1]))
        assert other.fileno() == fd
        held[moved.fileno()] = (moved, held[fd][1])
        held[fd] = (other, listener.accept()[0])
        fd = moved.fileno()
    elif command == "close":  # FD: the client and the connection accepted for it
        for sock in held.pop(fd):
            sock.close()
    print(fd, held[fd][0].getsockname()[1] if fd in held and held[fd] else 0, flush=True)
"""


@dataclasses.dataclass
class Held:
    """A namespace and the process that holds connections in it."""

    name: str
    inode: int
    process: subprocess.Popen[str]

    def ask(self, *words: object) -> tuple[int, int]:
        """The holder's answer to one command: the descriptor and local port it concerns."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(" ".join(map(str, words)) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        assert len(answer) == 2, f"the holder in {self.name} failed ({words})"
        return int(answer[0]), int(answer[1])

    def nft(self, *rule: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "nft", *rule], check=True)


def _made(name: str, sysctls: dict[str, str]) -> Held:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "-n", name, "route", "add", *SLOW_ROUTE], check=True)
    for key, value in sysctls.items():
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-q", "-w", f"{key}={value}"], check=True
        )
    process = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, "-c", HOLDER, str(PORT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    inode = os.stat(f"/run/netns/{name}").st_ino
    return Held(name, inode, process)


@pytest.fixture
def node() -> Iterator[list[Held]]:
    """Two namespaces, the kernel's defaults in the first and shorter budgets in the
    second, each with a holder; all removed afterwards, also when the test failed."""
    for name in abandoned_namespaces(PREFIX):
        subprocess.run(["ip", "netns", "del", name], check=False)
    names = [f"{PREFIX}{os.getpid()}-{index}" for index in range(2)]
    held: list[Held] = []
    try:
        for name, sysctls in zip(names, ({}, SHORT_SYSCTLS), strict=True):
            held.append(_made(name, sysctls))
        yield held
    finally:
        for holder in held:
            holder.process.kill()
            holder.process.wait()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        assert leftover_namespaces(f"{PREFIX}{os.getpid()}-") == []


def _watcher(tmp_path: Path) -> NodeWatcher:
    return NodeWatcher(
        WatchConfig(all_namespaces=True, port=PORT, pod_logs=str(tmp_path), container_logs=None)
    )


def _ours(snapshot: NodeSnapshot, held: list[Held]) -> list[Watched]:
    inodes = {holder.inode for holder in held}
    return [watched for watched in snapshot.watched if watched.netns in inodes]


def _client(snapshot: NodeSnapshot, holder: Held, port: int) -> Watched:
    """The connection whose local port is ``port`` in ``holder``'s namespace."""
    (found,) = [
        watched
        for watched in snapshot.watched
        if watched.netns == holder.inode and watched.connection.local.endswith(f":{port}")
    ]
    return found


def _uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's answers computed afresh for every connection: each kept function
    replaced by the function it keeps the answers of."""
    for name in ("_predicted", "_risks_among", "_socket_traps"):
        monkeypatch.setattr(look, name, getattr(look, name).__wrapped__)


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


@requires_netns
@pytest.mark.netns
def test_the_kept_answers_are_those_a_fresh_look_computes(
    node: list[Held], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Options shared by several connections, with either RTO.
    option_sets = [(0, 0, 1), (0, 0, 1), (0, 0, SLOW), (5000, 0, 1), (0, 30, SLOW), (5000, 30, 1)]
    for holder in node:
        for user_timeout_ms, keepidle_s, to in option_sets:
            holder.ask("connect", user_timeout_ms, keepidle_s, to)
    lost_fd, lost_port = node[0].ask("connect", 0, 0, 1)
    node[0].nft("add table inet tprfD; add chain inet tprfD in { type filter hook input "
                f"priority 0; }}; add rule inet tprfD in tcp sport {lost_port} drop")  # fmt: skip
    watcher = _watcher(tmp_path)
    first = _ours(watcher.snapshot(), node)
    sockets = 2 * (2 * len(option_sets) + 1)
    assert len(first) == sockets
    assert watcher.options_read == sockets
    node[0].ask("send", lost_fd)
    hits = look._predicted.cache_info().hits
    _until(lambda: _client(watcher.snapshot(), node[0], lost_port).connection.stuck, "stuck")
    kept = watcher.snapshot()
    assert watcher.options_read == sockets  # each socket's options were read once
    assert look._predicted.cache_info().hits > hits
    lost = _client(kept, node[0], lost_port)
    assert lost.stuck_for_s is not None
    assert lost.limited_by == "tcp_retries2"
    # Fresh: each namespace's sysctls read again, every socket's options read again, the
    # model asked for every connection.
    _uncached(monkeypatch)
    kernels = {
        holder.inode: namespaces.run_inside(
            NetNamespace(holder.inode, (holder.process.pid,), own=False), KernelSettings.here
        )
        for holder in node
    }
    assert kernels[node[0].inode] != kernels[node[1].inode]
    for watched in _ours(kept, node):
        fresh = look.watch_connection(
            watched.connection, watched.owner, kernels[watched.netns or 0], watcher.config.path
        )
        assert fresh.options == watched.options is not None
        assert (fresh.prediction, fresh.if_idle) == (watched.prediction, watched.if_idle)
        assert (fresh.stuck_for_s, fresh.at_risk) == (watched.stuck_for_s, watched.at_risk)
    # Each namespace's tcp_retries2, and in each the two RTOs: both are in the key.
    budgets = {
        (w.netns, w.gives_up_after_s) for w in _ours(kept, node) if w.limited_by == "tcp_retries2"
    }
    assert len(budgets) == 4
    assert {risk.code for w in _ours(kept, node) for risk in w.at_risk} >= {"no-bound"}


@requires_netns
@pytest.mark.netns
def test_a_socket_whose_descriptor_a_new_socket_took_is_read_anew(
    node: list[Held], tmp_path: Path
) -> None:
    holder = node[0]
    fd, port = holder.ask("connect", 5000, 0, 1)
    watcher = _watcher(tmp_path)
    before = _client(watcher.snapshot(), holder, port)
    assert before.options is not None
    assert before.options.user_timeout_ms == 5000
    reads = watcher.options_read
    holder.ask("close", fd)
    reused_fd, reused_port = holder.ask("connect", 7000, 0, 1)
    assert reused_fd == fd  # the same descriptor, now another socket
    after = watcher.snapshot()
    now = _client(after, holder, reused_port)
    assert now.owner is not None
    assert now.owner.fd == fd
    assert now.options is not None
    assert now.options.user_timeout_ms == 7000
    assert watcher.options_read == reads + 2  # the new client and the connection accepted
    # The closed socket's entry is gone: the cache holds the live sockets only.
    assert watcher.options_kept == len(_ours(after, node)) == 2


@requires_netns
@pytest.mark.netns
def test_an_inode_given_to_a_new_socket_is_not_given_the_old_options(
    node: list[Held], tmp_path: Path
) -> None:
    """The kernel cannot be made to give an inode again on demand: what its listing of
    the new socket would carry, the same inode under another cookie, is given here, for a
    socket whose options have meanwhile changed."""
    holder = node[0]
    fd, port = holder.ask("connect", 5000, 0, 1)
    watcher = _watcher(tmp_path)
    seen = _client(watcher.snapshot(), holder, port)
    assert seen.owner is not None
    assert seen.connection.cookie != 0
    holder.ask("user-timeout", fd, 9000)
    kept = watcher.options_in(holder.inode).of(seen.connection, seen.owner)
    assert kept is not None
    assert kept.user_timeout_ms == 5000
    another = dataclasses.replace(seen.connection, cookie=seen.connection.cookie + 1)
    read = watcher.options_in(holder.inode).of(another, seen.owner)
    assert read is not None
    assert read.user_timeout_ms == 9000


@requires_netns
@pytest.mark.netns
def test_a_socket_seen_connecting_is_read_again_once_connected(
    node: list[Held], tmp_path: Path
) -> None:
    """A program may set its options once the connect succeeded (Go's keepalive): those
    read while the SYN was out are not kept past it."""
    holder = node[0]
    holder.nft("add table inet tprfD; add chain inet tprfD in { type filter hook input "
               f"priority 0; }}; add rule inet tprfD in tcp dport {PORT} "
               "tcp flags & (syn | ack) == syn drop")  # fmt: skip
    fd, port = holder.ask("connecting")
    watcher = _watcher(tmp_path)
    connecting = _client(watcher.snapshot(), holder, port)
    assert connecting.connection.state == "SYN_SENT"
    assert connecting.options is not None
    assert connecting.options.keepalive is False
    reads = watcher.options_read
    holder.nft("flush chain inet tprfD in")
    holder.ask("connected", fd)  # the next SYN, a second after the first, gets through
    holder.ask("keepalive", fd)
    connected = _client(watcher.snapshot(), holder, port)
    assert connected.connection.state == "ESTABLISHED"
    assert connected.options is not None
    assert connected.options.keepalive is True
    assert watcher.options_read == reads + 1


def _owner_of(snapshot: NodeSnapshot, holder: Held, port: int) -> tuple[int, int]:
    owner = _client(snapshot, holder, port).owner
    assert owner is not None
    return owner.pid, owner.fd


@requires_netns
@pytest.mark.netns
def test_a_kept_owner_is_the_one_a_fresh_walk_finds(node: list[Held], tmp_path: Path) -> None:
    """The owners of the last snapshot are kept while each one's descriptor still refers
    to its socket: a socket handed to another process, or moved to another descriptor
    whose old number a new socket took, is found where it is now, and the new socket too."""
    holder = node[0]
    moved_fd, moved_port = holder.ask("connect", 0, 0, 1)
    renumbered_fd, renumbered_port = holder.ask("connect", 0, 0, 1)
    watcher = _watcher(tmp_path)
    first = watcher.snapshot()
    assert _owner_of(first, holder, moved_port) == (holder_pid := _holder_pid(holder), moved_fd)
    assert _owner_of(first, holder, renumbered_port) == (holder_pid, renumbered_fd)
    child_pid, _ = holder.ask("moved", moved_fd)
    new_fd, _ = holder.ask("renumbered", renumbered_fd)
    again = watcher.snapshot()
    # The new socket took the old descriptor's number.
    (reused,) = [
        w
        for w in _ours(again, node)
        if w.owner is not None and w.owner.fd == renumbered_fd and w.connection.peer_port == PORT
    ]
    assert reused.connection.local_port != renumbered_port
    assert _owner_of(again, holder, moved_port) == (child_pid, moved_fd)
    assert _owner_of(again, holder, renumbered_port) == (holder_pid, new_fd)
    # What a fresh watcher, which walks every process, finds for each connection.
    fresh = _watcher(tmp_path).snapshot()
    owners = {w.connection.cookie: w.owner for w in _ours(again, node)}
    assert owners == {w.connection.cookie: w.owner for w in _ours(fresh, node)}
    assert len(owners) == 2 * 3


def _holder_pid(holder: Held) -> int:
    """The holder's own PID: ``ip netns exec`` execs it in place."""
    return holder.process.pid


def _agent_watcher(tmp_path: Path, relist_every: int) -> NodeWatcher:
    return NodeWatcher(
        WatchConfig(all_namespaces=True, port=PORT, pod_logs=str(tmp_path), container_logs=None),
        relist_every=relist_every,
    )


def _same_objects(before: list[Watched], after: list[Watched]) -> bool:
    """Whether ``after`` is ``before``'s listing standing: the very same objects."""
    return len(before) == len(after) and all(any(kept is seen for seen in before) for kept in after)


def _in(snapshot: NodeSnapshot, holder: Held) -> list[Watched]:
    return [watched for watched in snapshot.watched if watched.netns == holder.inode]


@requires_netns
@pytest.mark.netns
def test_the_agent_lists_again_a_namespace_a_segment_moved_and_no_other(
    node: list[Held], tmp_path: Path
) -> None:
    for holder in node:
        holder.ask("connect", 0, 0, 1)
    fd, port = node[0].ask("connect", 0, 0, 1)
    watcher = _agent_watcher(tmp_path, relist_every=1000)
    first = watcher.snapshot()
    assert len(_in(first, node[0])) == 4
    assert len(_in(first, node[1])) == 2
    second = watcher.snapshot()
    for holder in node:  # idle, counters still: each listing stands
        assert _same_objects(_in(first, holder), _in(second, holder))
    node[0].ask("send", fd)
    third = watcher.snapshot()
    assert not _same_objects(_in(second, node[0]), _in(third, node[0]))
    assert _client(third, node[0], port).connection.bytes_acked > 0
    assert _same_objects(_in(second, node[1]), _in(third, node[1]))
    assert watcher.options_read == 6  # listed again, its sockets' options were kept


@requires_netns
@pytest.mark.netns
def test_a_connection_black_holed_in_a_quiet_namespace_is_stuck_at_the_next_snapshot(
    node: list[Held], tmp_path: Path
) -> None:
    holder = node[1]
    fd, port = holder.ask("connect", 0, 0, 1)
    watcher = _agent_watcher(tmp_path, relist_every=1000)
    assert not _client(watcher.snapshot(), holder, port).connection.stuck
    watcher.snapshot()  # its listing stands now
    holder.nft("add table inet tprfD; add chain inet tprfD in { type filter hook input "
               f"priority 0; }}; add rule inet tprfD in tcp sport {port} drop")  # fmt: skip
    holder.ask("send", fd)
    # The first retransmission is due one RTO (at least 200 ms) after the send: the send
    # moved the counters at once, so the next snapshot lists it, stuck or on its way.
    _until(lambda: _client(watcher.snapshot(), holder, port).connection.stuck, "stuck", 5.0)
    # A timer runs in it: listed again at every snapshot, its stuck time growing.
    stuck_for = [_client(watcher.snapshot(), holder, port).stuck_for_s for _ in range(2)]
    assert stuck_for[0] is not None
    assert stuck_for[1] is not None
    assert stuck_for[1] >= stuck_for[0]


@requires_netns
@pytest.mark.netns
def test_what_no_counter_shows_is_seen_within_relist_every_snapshots(
    node: list[Held], tmp_path: Path
) -> None:
    """A socket handed to another process moves no counter: its listing stands until the
    namespace's turn comes, at the latest ``relist_every`` snapshots after its last."""
    holder = node[0]
    fd, port = holder.ask("connect", 0, 0, 1)
    relist_every = 4
    watcher = _agent_watcher(tmp_path, relist_every)
    assert _owner_of(watcher.snapshot(), holder, port) == (_holder_pid(holder), fd)
    child_pid, _ = holder.ask("moved", fd)
    owners = [_owner_of(watcher.snapshot(), holder, port)[0] for _ in range(relist_every)]
    assert owners[-1] == child_pid
    assert owners == sorted(owners, key=lambda pid: pid == child_pid)  # never back
