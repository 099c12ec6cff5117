"""Whether a network namespace's connections can have changed since the node agent last
listed them: the namespace's TCP counters (``tcp_counters``), the states its last listing
showed (``settled``), and which namespaces the next snapshot lists again (``to_relist``).

Listing one namespace costs more than its own sockets: with the host's one table of
established sockets (``net.ipv4.tcp_child_ehash_entries`` 0, the kernel's default), the
socket diagnostics walk every socket of the node to give one namespace's, so a node of 50
pods and 20,000 sockets walks a million sockets at each look (docs/performance.md). A
connection changes only on a segment sent or received, or on a timer. Every segment moves
the namespace's own ``Tcp`` counters (``/proc/PID/net/snmp``: InSegs, OutSegs, and the
opens, resets and retransmissions beside them); and the timers that move a connection on
their own (retransmission, zero-window probe, the SYN and FIN timers, TIME-WAIT) run only
in what a listing shows: a timer ``on`` or ``persist``, data not yet sent or acknowledged,
a state other than ESTABLISHED, CLOSE-WAIT or LISTEN, unanswered probes. A namespace whose
last listing showed none of those (``settled``) and whose counters have not moved is the
same: that listing stands.

What no counter shows (options set on a live socket, a socket passed to another process, a
sysctl changed) is caught by listing each namespace again at least every
``relist_every`` snapshots: the oldest first, a share of them at each snapshot, so that
the cost is spread and never comes all at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tcpecho.tcp.diag import Connection
from tcpecho.tcp.namespaces import NetNamespace

# States that no timer moves: the next change is a segment, or the program's own call
# (which sends one).
_QUIET_STATES = frozenset({"ESTABLISHED", "CLOSE_WAIT", "LISTEN"})
# Timers that only probe (keepalive's, whose probe is a segment) or that nothing runs.
_QUIET_TIMERS = frozenset({"off", "keepalive"})
_SNMP_TCP = "Tcp: "


def tcp_counters(namespace: NetNamespace) -> str | None:
    """The namespace's ``Tcp`` counters, as its ``/proc/PID/net/snmp`` shows them (read
    through the first of its processes that still answers); None when none does, which
    the caller takes as a change."""
    for pid in namespace.holders:
        try:
            with open(f"/proc/{pid}/net/snmp") as snmp:
                text = snmp.read()
        except OSError:
            continue
        # Two lines start with "Tcp: ": the names, then the values.
        names_at = text.find(_SNMP_TCP)
        values_at = text.find(_SNMP_TCP, names_at + 1)
        if values_at < 0:
            return None
        return text[values_at : text.find("\n", values_at)]
    return None


def settled(connections: Iterable[Connection]) -> bool:
    """Whether no timer can move any of ``connections`` without a segment: each is in
    ESTABLISHED, CLOSE-WAIT or LISTEN, has nothing waiting to be sent or acknowledged, no
    timer but keepalive's, and no unanswered probe."""
    return all(
        connection.state in _QUIET_STATES
        and connection.timer in _QUIET_TIMERS
        and connection.send_queue == 0
        and not connection.stuck
        for connection in connections
    )


@dataclass(frozen=True)
class LastListing:
    """What the next snapshot weighs about a namespace's last listing: its counters then,
    whether it was ``settled``, and how many snapshots ago it was made."""

    counters: str | None
    settled: bool
    age: int = 0


def to_relist(
    present: Iterable[NetNamespace],
    last: Mapping[int, LastListing],
    counters: Mapping[int, str | None],
    relist_every: int,
) -> set[int]:
    """The inodes of the namespaces of ``present`` to list now: those never listed, those
    whose last listing was not settled, those whose counters moved or cannot be read; and,
    of the others, the oldest ``1/relist_every`` of them (at least one), and any as old as
    ``relist_every`` snapshots."""
    relisted: set[int] = set()
    standing: list[tuple[int, int]] = []  # (age, inode) of those whose listing stands
    for namespace in present:
        inode = namespace.inode
        listing = last.get(inode)
        now = counters.get(inode)
        if listing is None or not listing.settled or now is None:
            relisted.add(inode)  # new, or a timer runs in it, or its counters cannot be read
        elif now != listing.counters or listing.age + 1 >= relist_every:
            relisted.add(inode)  # a segment moved it, or its listing is as old as allowed
        else:
            standing.append((listing.age, inode))
    share = math.ceil((len(standing) + len(relisted)) / relist_every)
    # The oldest first; of equal age, the lowest inode, so that each look is reproducible.
    standing.sort(key=lambda aged: (-aged[0], aged[1]))
    for _, inode in standing[: max(0, share - len(relisted))]:
        relisted.add(inode)
    return relisted
