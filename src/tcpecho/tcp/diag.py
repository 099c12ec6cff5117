"""Every TCP connection of a network namespace, as the kernel lists them to ``ss``: its
addresses and state, its ``tcp_info``, the process that owns it, and the options it carries.

The list comes from the kernel's socket diagnostics (NETLINK_SOCK_DIAG, ``inet_diag``), read
here from a netlink socket of our own: pyroute2's DiagSocket decodes ten thousand
connections in 0.8 to 1.3 s, ten times what ``ss`` takes for them, and a node agent lists
every namespace of its host. Both address families come from one request (the legacy
``TCPDIAG_GETSOCK``, as ``ss -t`` sends it), which walks the kernel's host-wide TCP tables
once per namespace where SOCK_DIAG_BY_FAMILY walks them once per family; the per-family
dump stays, as the reference and the fallback. By default the namespace is the caller's;
another one (``tcp/namespaces.py``) is read through a netlink socket made inside it, which
lists that namespace's connections whichever thread reads it. The owner is found by the socket's
inode among the descriptors in ``/proc/PID/fd``: socket inodes are numbered across the
whole host, so one walk finds the owners of every namespace's connections. A program's own
socket options are read from a duplicate of its socket, taken with ``pidfd_getfd`` (Linux
>= 5.6), which needs the right to ptrace the program (root, or CAP_SYS_PTRACE over it);
where that is refused, or the socket has closed since it was listed, the options stay
unknown.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from tcpecho.tcp import namespaces
from tcpecho.tcp.info import STATE_NAMES, TcpInfo, read_tcp_info
from tcpecho.tcp.names import format_address
from tcpecho.tcp.namespaces import NamespaceUnavailableError, NetNamespace, Skipped
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
_SYS_PIDFD_GETFD = 438  # the same number on every architecture
# What the connection's timer is doing (idiag_timer), as ss -o names it.
TIMERS = {0: "off", 1: "on", 2: "keepalive", 3: "timewait", 4: "persist"}

# The netlink conversation, from linux/netlink.h, linux/sock_diag.h and linux/inet_diag.h.
NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20  # the request's type, and each answer's
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300  # NLM_F_DUMP is NLM_F_ROOT | NLM_F_MATCH
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_LENGTH_AND_TYPE = struct.Struct("=IH")  # the two of nlmsghdr's fields read on each answer
_CODE = struct.Struct("=i")  # NLMSG_DONE's and NLMSG_ERROR's: 0, or minus an errno
# The legacy request of NETLINK_INET_DIAG (the same protocol number as NETLINK_SOCK_DIAG),
# and its answers' type.
_TCPDIAG_GETSOCK = 18
# inet_diag_req: family (ignored by a dump), source and destination prefix lengths,
# extensions, an inet_diag_sockid left zero, states, then idiag_dbs (unused).
_LEGACY_REQUEST = struct.Struct("=BBBB48xII")
# What a kernel without the legacy request answers it (no inet_diag compat handler).
_REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT})
# inet_diag_req_v2: family, protocol, extensions, pad, states, then an inet_diag_sockid
# left zero (any socket).
_REQUEST = struct.Struct("=BBBxI48x")
# inet_diag_msg: family, state, timer, retransmits (skipped), then inet_diag_sockid: the
# ports (network order), the addresses (16 bytes, IPv4 in the first 4), the interface
# (skipped) and the cookie (two 32-bit halves, low first); then expires, receive queue,
# send queue, uid, inode.
_MESSAGE = struct.Struct("=BBBxHH16s16s4xIIIIIII")
_ATTRIBUTE = struct.Struct("=HH")  # nlattr: length, type
_ATTRIBUTE_TYPE = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_INFO = 2  # INET_DIAG_INFO: the attribute that carries struct tcp_info
_ASK_INFO = 1 << (_INFO - 1)  # the extension bit that asks for it
# tcp_info's tcpi_bytes_acked and tcpi_bytes_received (Linux >= 4.1/4.2), after the part
# tcp/info.py reads.
_BYTES_COUNTED = struct.Struct("=QQ")
_BYTES_COUNTED_AT = 120
# What a Connection keeps of a full tcp_info (Linux >= 4.2), read in one go, the rest
# skipped: state, (ca_state), retransmits, probes, backoff, (options, wscale, flags); rto,
# (ato, snd_mss, rcv_mss), unacked, (sacked), lost, (retrans, fackets), last_data_sent,
# (last_ack_sent), last_data_recv, last_ack_recv, (pmtu, rcv_ssthresh), rtt, rttvar,
# (snd_ssthresh, snd_cwnd, advmss, reordering, rcv_rtt, rcv_space), total_retrans,
# (pacing_rate, max_pacing_rate), bytes_acked, bytes_received.
_INFO_READ = struct.Struct("=Bx3B3xI12xI4xI8xI4xII8xII24xI16xQQ")
# The kernel fills one dump part up to 32 KiB (netlink's max_recvmsg_len cap); a bigger
# buffer asks for no more, a smaller one would truncate.
_RECEIVE_BYTES = 65536


@dataclass(frozen=True)
class Owner:
    """The process that holds a socket: its descriptor ``fd`` refers to the socket
    ``inode`` (which tells, later, whether that descriptor still does)."""

    pid: int
    command: str
    fd: int
    inode: int


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
    # The kernel's cookie for the socket (sock_gen_cookie: unique for the host's uptime,
    # never reused), which tells a socket from a later one given the same inode; 0 where
    # unknown.
    cookie: int = 0

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


def connections(
    *,
    states: int | None = None,
    listening: bool = False,
    namespace: NetNamespace | None = None,
    per_family: bool = False,
    visit: Callable[[], None] | None = None,
) -> list[Connection]:
    """Every TCP connection of ``namespace`` (the caller's by default) in ``states`` (a
    mask of states, as ``CONNECTED_STATES``), which the kernel selects; without it, every
    state but LISTEN, or every state with ``listening``. IPv4 sockets come first, then
    IPv6 ones (v4-mapped included), each in the kernel's order. ``NamespaceUnavailableError``
    when ``namespace`` can no longer, or may not, be entered.

    Both families are asked for in one request, which walks the kernel's TCP tables once;
    ``per_family`` asks once per family instead (two walks: the reference that one is
    checked against, and what a kernel that refuses the one request is asked). ``visit``
    is called inside ``namespace`` while its netlink socket is made there: a caller's
    chance to read what can only be read from inside (its sysctls) without entering again."""
    if states is None:
        states = ALL_STATES if listening else ALL_STATES & ~(1 << LISTEN)
    with _diag_socket(namespace, visit) as diag:
        if not per_family:
            try:
                return _dump_both_families(diag, states)
            except OSError as error:
                if error.errno not in _REFUSED:
                    raise
        return [
            connection
            for family in (socket.AF_INET, socket.AF_INET6)
            for connection in _dump_family(diag, family, states)
        ]


def _diag_socket(
    namespace: NetNamespace | None, visit: Callable[[], None] | None = None
) -> socket.socket:
    def made() -> socket.socket:
        if visit is not None:
            visit()
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)

    if namespace is None or namespace.inode == namespaces.own_inode():
        return made()
    return namespaces.run_inside(namespace, made)


@dataclass(frozen=True)
class NamespaceConnections:
    """Each namespace's connections, by the namespace's inode, and the namespaces left out
    because they could not be read (their last process gone, setns refused)."""

    by_namespace: dict[int, list[Connection]]
    skipped: Skipped


def connections_by_namespace(
    among: Iterable[NetNamespace],
    *,
    states: int | None = None,
    listening: bool = False,
    visit: Callable[[NetNamespace], None] | None = None,
) -> NamespaceConnections:
    """``connections`` of each namespace of ``among``; one that cannot be read is skipped
    and counted, and the others are listed all the same. ``visit`` is called inside each
    namespace entered (``connections``' own), with that namespace."""
    found: dict[int, list[Connection]] = {}
    skipped = Skipped()
    for namespace in among:
        try:
            found[namespace.inode] = connections(
                states=states,
                listening=listening,
                namespace=namespace,
                visit=None if visit is None else functools.partial(visit, namespace),
            )
        except NamespaceUnavailableError as unavailable:
            skipped.count(unavailable.reason)
        except OSError as error:  # the socket itself refused inside it (EMFILE, ...)
            skipped.count(namespaces.reason_of(error))
    return NamespaceConnections(by_namespace=found, skipped=skipped)


def _dump_both_families(diag: socket.socket, states: int) -> list[Connection]:
    """The legacy request (``TCPDIAG_GETSOCK``, what ``ss -t`` sends without a family):
    the kernel reads it as a request for family AF_UNSPEC and lists both families in one
    walk of its tables (inet_diag.c's ``inet_diag_dump_compat``), where a
    SOCK_DIAG_BY_FAMILY request walks them once per family. Its answers are the same
    ``inet_diag_msg`` with the same attributes, cookie and tcp_info included."""
    request = _LEGACY_REQUEST.pack(0, 0, 0, _ASK_INFO, states, 0)
    _send(diag, _TCPDIAG_GETSOCK, 0, request)
    by_family: dict[int, list[Connection]] = {socket.AF_INET: [], socket.AF_INET6: []}
    _receive(diag, _TCPDIAG_GETSOCK, by_family)
    return by_family[socket.AF_INET] + by_family[socket.AF_INET6]


def _dump_family(diag: socket.socket, family: int, states: int) -> list[Connection]:
    """One SOCK_DIAG_BY_FAMILY dump: ``family``'s connections."""
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, _ASK_INFO, states)
    _send(diag, _SOCK_DIAG_BY_FAMILY, family, request)
    found: list[Connection] = []
    _receive(diag, _SOCK_DIAG_BY_FAMILY, {family: found})
    return found


def _send(diag: socket.socket, kind: int, sequence: int, request: bytes) -> None:
    length = _HEADER.size + len(request)
    diag.send(_HEADER.pack(length, kind, _NLM_F_REQUEST | _NLM_F_DUMP, sequence, 0) + request)


def _receive(diag: socket.socket, answer: int, into: dict[int, list[Connection]]) -> None:
    """The kernel's answers of type ``answer`` up to NLMSG_DONE, each connection appended
    to its family's list in ``into`` (one of another family would be a kernel's error, and
    is left out)."""
    decode = _Decoder()
    while True:
        data = diag.recv(_RECEIVE_BYTES)
        if not data:
            raise OSError(errno.EPROTO, "sock_diag ended its dump without NLMSG_DONE")
        offset, size = 0, len(data)
        while offset + _HEADER.size <= size:
            length, kind = _LENGTH_AND_TYPE.unpack_from(data, offset)
            if length < _HEADER.size:
                raise OSError(errno.EPROTO, f"sock_diag sent a message of {length} bytes")
            if kind == answer:
                family, connection = decode(data, offset + _HEADER.size, offset + length)
                found = into.get(family)
                if found is not None:
                    found.append(connection)
            elif kind in (_NLMSG_DONE, _NLMSG_ERROR):
                # Both carry an int: 0, or minus the errno of a dump that failed.
                code = 0
                if length >= _HEADER.size + 4:
                    (code,) = _CODE.unpack_from(data, offset + _HEADER.size)
                if code < 0:
                    raise OSError(-code, f"sock_diag: {os.strerror(-code)}")
                return
            offset += (length + 3) & ~3


class _Decoder:
    """One dump's ``inet_diag_msg`` answers as Connections. The same few addresses come
    back on thousands of sockets (a server's own, a client's loopback), so each one is
    written out once per dump, not once per socket."""

    __slots__ = ("endpoints",)

    def __init__(self) -> None:
        # (family, the 16 address bytes) -> "10.0.0.1:" or "[::1]:", ready for the port.
        self.endpoints: dict[tuple[int, bytes], str] = {}

    def __call__(self, data: bytes, start: int, end: int) -> tuple[int, Connection]:
        fields = _MESSAGE.unpack_from(data, start)
        family, state, timer, sport, dport, source, destination = fields[:7]
        cookie_low, cookie_high, expires, receive_queue, send_queue, _uid, inode = fields[7:]
        info: TcpInfo | None = None
        acked = received = 0
        # The attributes, up to INET_DIAG_INFO (after SHUTDOWN, MARK, CGROUP_ID, SOCKOPT...).
        at = start + _MESSAGE.size
        while at + _ATTRIBUTE.size <= end:
            length, kind = _ATTRIBUTE.unpack_from(data, at)
            if length < _ATTRIBUTE.size:
                break
            if kind & _ATTRIBUTE_TYPE == _INFO:
                info, acked, received = _tcp_info(data, at + _ATTRIBUTE.size, at + length)
                break
            at += (length + 3) & ~3
        endpoints = self.endpoints
        local = endpoints.get((family, source)) or self._endpoint(family, source)
        peer = endpoints.get((family, destination)) or self._endpoint(family, destination)
        # Positional, in the order of Connection's fields: a frozen dataclass takes its
        # arguments a third faster so, on every socket of every namespace.
        return family, Connection(
            local + str(socket.ntohs(sport)),
            peer + str(socket.ntohs(dport)),
            STATE_NAMES.get(state) or str(state),
            inode,
            TIMERS.get(timer) or str(timer),
            expires,
            send_queue,
            receive_queue,
            info,
            acked,
            received,
            cookie_low | cookie_high << 32,
        )

    def _endpoint(self, family: int, address: bytes) -> str:
        size = 4 if family == socket.AF_INET else 16
        # format_address's own form, "host:" or "[host]:", without the port.
        written = format_address((socket.inet_ntop(family, address[:size]), 0))[:-1]
        self.endpoints[family, address] = written
        return written


def _tcp_info(data: bytes, start: int, end: int) -> tuple[TcpInfo, int, int]:
    """INET_DIAG_INFO's payload, from ``start`` to ``end``: its tcp_info as
    ``read_tcp_info`` reads it, and its bytes acknowledged and received (0 from a kernel
    before 4.2, whose tcp_info stops short of them)."""
    if end - start < _INFO_READ.size:
        raw = data[start:end]
        counted = (0, 0)
        if len(raw) >= _BYTES_COUNTED_AT + _BYTES_COUNTED.size:
            counted = _BYTES_COUNTED.unpack_from(raw, _BYTES_COUNTED_AT)
        return read_tcp_info(_Carried(raw)), counted[0], counted[1]
    # Read in place, without a copy of the attribute: the same fields, in the same units,
    # as read_tcp_info (which tests/tcp/test_diag.py holds it to on the kernel's bytes).
    fields = _INFO_READ.unpack_from(data, start)
    state, retransmits, probes, backoff, rto, unacked, lost = fields[:7]
    last_data_sent, last_data_recv, last_ack_recv, rtt, rttvar, total_retrans = fields[7:13]
    acked, received = fields[13:]
    # Positional, in the order of TcpInfo's fields (as Connection's above): state,
    # retransmits, probes, backoff, rto_ms, unacked, lost, total_retrans, rtt_ms, rttvar_ms,
    # last_data_sent_ms, last_data_recv_ms, last_ack_recv_ms.
    info = TcpInfo(
        STATE_NAMES.get(state) or str(state),
        retransmits,
        probes,
        backoff,
        rto / 1000,
        unacked,
        lost,
        total_retrans,
        rtt / 1000,
        rttvar / 1000,
        last_data_sent,
        last_data_recv,
        last_ack_recv,
    )
    return info, acked, received


class _Carried:
    """``struct tcp_info`` as INET_DIAG_INFO carries it, given as ``getsockopt(TCP_INFO)``
    would give it, so that tcp/info.py's one description of its layout reads it."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes:
        return self.raw


def owners(
    inodes: set[int] | None = None, *, pids: Iterable[int] | None = None
) -> dict[int, Owner]:
    """The process holding each socket inode (the first found, when several share it),
    whichever namespace the socket is in, looked for among ``pids`` (every process by
    default; a namespace's holders find its sockets' owners at a fraction of the cost).
    A process that exits or refuses while being read is passed over: its sockets have no
    owner. With ``inodes``, the walk stops once every one is found."""
    found: dict[int, Owner] = {}
    for pid in _pids() if pids is None else pids:
        command = None  # read once per process, and only if it holds a wanted socket
        for fd, inode in _socket_fds(pid):
            if inode in found or (inodes is not None and inode not in inodes):
                continue
            command = _command(pid) if command is None else command
            found[inode] = Owner(pid, command, fd, inode)
        if inodes is not None and len(found) == len(inodes):
            break
    return found


def owners_again(inodes: set[int], before: Mapping[int, Owner]) -> dict[int, Owner]:
    """``owners(inodes)``, for a look repeated: a socket's owner in ``before`` (the last
    look's) is kept while its descriptor still refers to that socket, which one readlink
    of it tells (an inode names one live socket at a time, so a descriptor reused for
    another socket no longer shows it); its command is read again (an exec keeps the
    descriptors). Only the sockets left, new or handed to another process, are looked for
    in every process's descriptors, which is ``owners``' cost."""
    found: dict[int, Owner] = {}
    commands: dict[int, str] = {}
    with _FdFolders() as folders:
        for inode in inodes:
            owner = before.get(inode)
            if owner is None or not folders.holds(owner):
                continue
            command = commands.get(owner.pid)
            if command is None:
                command = commands[owner.pid] = _command(owner.pid)
            if command != owner.command:
                owner = Owner(owner.pid, command, owner.fd, inode)
            found[inode] = owner
    if len(found) < len(inodes):
        found.update(owners(inodes - found.keys()))
    return found


class _FdFolders:
    """Processes' ``/proc/PID/fd``, each opened once: a readlink relative to it costs less
    than half of one that walks the whole path."""

    def __init__(self) -> None:
        self.opened: dict[int, int | None] = {}  # None: gone, or not ours to see

    def __enter__(self) -> _FdFolders:
        return self

    def __exit__(self, *_: object) -> None:
        for folder in self.opened.values():
            if folder is not None:
                os.close(folder)

    def holds(self, owner: Owner) -> bool:
        """Whether ``owner``'s descriptor still refers to its socket."""
        if owner.pid in self.opened:
            folder = self.opened[owner.pid]
        else:
            folder = self.opened[owner.pid] = _opened_folder(f"/proc/{owner.pid}/fd")
        if folder is None:
            return False
        try:
            return os.readlink(str(owner.fd), dir_fd=folder) == f"socket:[{owner.inode}]"
        except OSError:  # closed
            return False


def _opened_folder(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _socket_fds(pid: int) -> Iterator[tuple[int, int]]:
    folder = _opened_folder(f"/proc/{pid}/fd")
    if folder is None:  # gone, or not ours to see
        return
    try:
        try:
            entries = os.listdir(folder)
        except OSError:
            return
        for entry in entries:
            try:
                target = os.readlink(entry, dir_fd=folder)
            except OSError:
                continue
            if target.startswith("socket:["):
                yield int(entry), int(target[8:-1])
    finally:
        os.close(folder)


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in argv if part) or "?"


def socket_options(owner: Owner) -> EffectiveOptions | None:
    """The options ``owner``'s socket really carries; None where the kernel refuses a
    duplicate (no right to ptrace the process, a kernel before 5.6), where the process is
    gone, or where its descriptor no longer refers to that socket (closed since it was
    listed, and perhaps reused for another socket, whose options are not this one's)."""
    try:
        pidfd = os.pidfd_open(owner.pid)
    except OSError:
        return None
    try:
        duplicate = _libc().syscall(_SYS_PIDFD_GETFD, pidfd, owner.fd, 0)
    finally:
        with contextlib.suppress(OSError):
            os.close(pidfd)
    if duplicate < 0:
        return None
    try:
        sock = socket.socket(fileno=duplicate) if _is_socket(duplicate, owner.inode) else None
    except OSError:
        sock = None
    if sock is None:
        os.close(duplicate)
        return None
    with sock:
        try:
            return read_effective(sock)
        except OSError:
            return None


def _is_socket(descriptor: int, inode: int) -> bool:
    status = os.fstat(descriptor)
    return stat.S_ISSOCK(status.st_mode) and status.st_ino == inode


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
