"""Every TCP connection of this network namespace, as the kernel lists them to ``ss``: its
addresses and state, its ``tcp_info``, the process that owns it, and the options it carries.

The list comes from the kernel's socket diagnostics (NETLINK_SOCK_DIAG, ``inet_diag``)
through pyroute2. The owner is found by the socket's inode among the descriptors in
``/proc/PID/fd``. A program's own socket options are read from a duplicate of its socket,
taken with ``pidfd_getfd`` (Linux >= 5.6), which needs the right to ptrace the program
(root, or CAP_SYS_PTRACE over it); where that is refused the options stay unknown.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tcpecho.tcp.info import STATE_NAMES, TcpInfo
from tcpecho.tcp.names import format_address
from tcpecho.tcp.options import EffectiveOptions, read_effective

# Which TCP states to list, as inet_diag's ``idiag_states``: one bit per state of
# include/net/tcp_states.h (1 << TCP_ESTABLISHED, ...); the kernel skips the others.
ALL_STATES = (1 << 12) - 1  # every state, listeners included: ``ss -a``'s SS_ALL
LISTEN = 10
_SYN_RECV, _TIME_WAIT, _CLOSE = 3, 6, 7
# ``ss``'s default, connected sockets only: iproute2's misc/ss.c asks the kernel for
# ``SS_CONN``, every state but LISTEN, CLOSE, TIME-WAIT and SYN-RECV (0xb37, as ``strace``
# shows ``ss -t`` send it). Since iproute2 6.8 its SS_ALL, and so SS_CONN, also carries
# the pseudo-states NEW_SYN_RECV (bit 12) and BOUND_INACTIVE (bit 13), with which a kernel
# from 6.8 also lists sockets bound and never connected (as CLOSE) and half-open incoming
# connections (as SYN-RECV): the very states SS_CONN leaves out. Both masks here keep to the
# twelve real states, as every ss before 6.8 does.
CONNECTED_STATES = ALL_STATES & ~(1 << LISTEN | 1 << _CLOSE | 1 << _TIME_WAIT | 1 << _SYN_RECV)
_INET_DIAG_INFO = 2  # the extension that asks for tcp_info (1 << (INET_DIAG_INFO - 1))
_SYS_PIDFD_GETFD = 438  # the same number on every architecture
# What the connection's timer is doing (idiag_timer), as ss -o names it.
TIMERS = {0: "off", 1: "on", 2: "keepalive", 3: "timewait", 4: "persist"}


@dataclass(frozen=True)
class Owner:
    pid: int
    command: str
    fd: int


@dataclass(frozen=True)
class Connection:
    """One TCP connection as the kernel reports it."""

    local: str
    peer: str
    state: str
    inode: int
    timer: str  # off, on (retransmission), keepalive, timewait, persist (zero window)
    timer_expires_ms: int
    send_queue: int  # bytes not yet acknowledged (or queued), as ss's Send-Q
    receive_queue: int
    info: TcpInfo | None
    bytes_acked: int  # sent and acknowledged over the connection's life
    bytes_received: int

    @property
    def stuck(self) -> bool:
        """Unacknowledged data the kernel is retransmitting, or unanswered probes."""
        info = self.info
        if info is None:
            return False
        retransmitting = info.unacked > 0 and (info.retransmits > 0 or info.backoff > 0)
        return retransmitting or info.probes > 0

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1])

    @property
    def peer_host(self) -> str:
        return self.peer.rsplit(":", 1)[0].strip("[]")

    @property
    def peer_port(self) -> int:
        return int(self.peer.rsplit(":", 1)[1])


def connections(*, states: int | None = None, listening: bool = False) -> list[Connection]:
    """Every TCP connection of this network namespace in ``states`` (a mask of states, as
    ``CONNECTED_STATES``), which the kernel selects; without it, every state but LISTEN, or
    every state with ``listening``."""
    from pyroute2 import DiagSocket

    if states is None:
        states = ALL_STATES if listening else ALL_STATES & ~(1 << LISTEN)
    found = []
    with DiagSocket() as diag:
        diag.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for message in diag.get_sock_stats(
                family=family, states=states, extensions=_INET_DIAG_INFO
            ):
                found.append(_connection(message))
    return found


def _connection(message: Any) -> Connection:
    info = message.get_attr("INET_DIAG_INFO")
    return Connection(
        local=format_address((message["idiag_src"], message["idiag_sport"])),
        peer=format_address((message["idiag_dst"], message["idiag_dport"])),
        state=STATE_NAMES.get(message["idiag_state"], str(message["idiag_state"])),
        inode=message["idiag_inode"],
        timer=TIMERS.get(message["idiag_timer"], str(message["idiag_timer"])),
        timer_expires_ms=message["idiag_expires"],
        send_queue=message["idiag_wqueue"],
        receive_queue=message["idiag_rqueue"],
        info=None if info is None else _tcp_info(message["idiag_state"], info),
        bytes_acked=0 if info is None else info["tcpi_bytes_acked"],
        bytes_received=0 if info is None else info["tcpi_bytes_received"],
    )


def _tcp_info(state: int, info: Any) -> TcpInfo:
    return TcpInfo(
        state=STATE_NAMES.get(state, str(state)),
        retransmits=info["tcpi_retransmits"],
        probes=info["tcpi_probes"],
        backoff=info["tcpi_backoff"],
        rto_ms=info["tcpi_rto"] / 1000,
        unacked=info["tcpi_unacked"],
        lost=info["tcpi_lost"],
        total_retrans=info["tcpi_total_retrans"],
        rtt_ms=info["tcpi_rtt"] / 1000,
        rttvar_ms=info["tcpi_rttvar"] / 1000,
        last_data_sent_ms=info["tcpi_last_data_sent"],
        last_data_recv_ms=info["tcpi_last_data_recv"],
        last_ack_recv_ms=info["tcpi_last_ack_recv"],
    )


def owners(inodes: set[int] | None = None) -> dict[int, Owner]:
    """The process holding each socket inode (the first found, when several share it)."""
    found: dict[int, Owner] = {}
    for pid in _pids():
        for fd, inode in _socket_fds(pid):
            if inode in found or (inodes is not None and inode not in inodes):
                continue
            found[inode] = Owner(pid, _command(pid), fd)
    return found


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _socket_fds(pid: int) -> Iterator[tuple[int, int]]:
    folder = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(folder)
    except OSError:  # gone, or not ours to see
        return
    for entry in entries:
        try:
            target = os.readlink(f"{folder}/{entry}")
        except OSError:
            continue
        if target.startswith("socket:["):
            yield int(entry), int(target[8:-1])


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in argv if part) or "?"


def socket_options(owner: Owner) -> EffectiveOptions | None:
    """The options ``owner``'s socket really carries; None where the kernel refuses a
    duplicate (no right to ptrace the process, a kernel before 5.6, the process gone)."""
    try:
        pidfd = os.pidfd_open(owner.pid)
    except OSError:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        duplicate = libc.syscall(_SYS_PIDFD_GETFD, pidfd, owner.fd, 0)
        if duplicate < 0:
            return None
        with socket.socket(fileno=duplicate) as sock:
            return read_effective(sock)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(pidfd)
