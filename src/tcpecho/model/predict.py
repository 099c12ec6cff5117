"""Predictions (``predict``): when and how a client notices a peer that failed, as a range of
seconds on a stated clock, for given sysctls, options, deadlines and activity.

The rules behind them are in the package's docstring (``tcpecho.model``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from tcpecho.durations import format_seconds
from tcpecho.model.in_force import InForce
from tcpecho.model.kernel import (
    FIRST_RTO_S,
    TIMER_SLACK,
    TLP_ANY_S,
    TLP_S,
    KernelSettings,
    give_up_after_send,
    orphan_budget,
    step_at,
    syn_budget,
    syn_expiries,
)
from tcpecho.settings import Deadlines, Ping
from tcpecho.tcp.options import TcpOptions

# The client's own deadlines: event-loop timers, ms resolution, in a process that may be
# scheduled late (seen: a 3 s read timeout ending at 3.06 s on this project's 2-core machine).
APP_TIMER_S = (-0.015, 0.1)
# The client is a process: on a loaded machine it sees an error a little after the kernel
# raised it. Added to the late end of every kernel-driven range.
SCHEDULING_S = 0.3
FAST_S = 1.0  # a FIN, RST or hard ICMP error is noticed within this


class Failure(StrEnum):
    """What the peer's failure looks like from the client."""

    SILENT = "silent"  # nothing comes back: a black-holed route, a dropped node
    UNREACHABLE = "unreachable"  # a router answers with ICMP destination unreachable
    CLOSED = "closed"  # the peer's kernel sends FIN or RST (process killed, network intact)
    STALLED = "stalled"  # the peer's kernel still acknowledges, its program never answers


class Activity(StrEnum):
    ACTIVE = "active"  # a request is sent and waits for its echo
    IDLE = "idle"  # nothing is sent: only keepalive can notice
    CONNECTING = "connecting"  # the SYN is sent and waits for its SYN-ACK
    # The program closed the socket, or exited, with data or its FIN unacknowledged: the
    # kernel finishes it alone (FIN-WAIT-1, CLOSING, LAST-ACK), bounded by
    # tcp_orphan_retries in place of tcp_retries2.
    ORPHANED = "orphaned"


class Mechanism(StrEnum):
    """What ends the wait: the one thing a verdict depends on."""

    TCP_RETRIES2 = "tcp_retries2"  # only the kernel's retransmission budget: the hang
    ORPHAN_RETRIES = "tcp_orphan_retries"  # an orphan's budget (no program holds the socket)
    USER_TIMEOUT = "user_timeout"
    READ_TIMEOUT = "read_timeout"  # the client's own deadline
    RECVERR = "recverr"  # an ICMP error taken as a hard error
    KEEPALIVE = "keepalive"
    KEEPALIVE_USER_TIMEOUT = "keepalive_user_timeout"
    PEER_CLOSED = "peer_closed"
    SYN_RETRIES = "tcp_syn_retries"  # the kernel's SYN retransmission budget
    CONNECT_TIMEOUT = "connect_timeout"  # the client's own deadline on connecting
    MIDDLEBOX_RESET = "middlebox_reset"  # a middlebox that forgot the flow answers with RST
    ADDRESS_REUSED = "address_reused"  # the host that took the peer's address answers RST
    PROXY_TIMEOUT = "proxy_timeout"  # a proxy's own data timeout closes the app's side
    PING_TIMEOUT = "ping_timeout"  # the library's own ping (gRPC's) goes unanswered
    NOTHING = "nothing"

    @property
    def description(self) -> str:
        return _MECHANISM_DESCRIPTIONS[self]


_MECHANISM_DESCRIPTIONS = {
    Mechanism.TCP_RETRIES2: "the kernel's retransmission budget (tcp_retries2)",
    Mechanism.ORPHAN_RETRIES: "the kernel's budget for orphaned sockets (tcp_orphan_retries)",
    Mechanism.USER_TIMEOUT: "TCP_USER_TIMEOUT",
    Mechanism.READ_TIMEOUT: "--read-timeout (the client's deadline)",
    Mechanism.RECVERR: "IP_RECVERR (ICMP as a hard error)",
    Mechanism.KEEPALIVE: "keepalive",
    Mechanism.KEEPALIVE_USER_TIMEOUT: "keepalive, ended by TCP_USER_TIMEOUT",
    Mechanism.PEER_CLOSED: "FIN/RST from the peer",
    Mechanism.SYN_RETRIES: "the kernel's SYN retransmission budget (tcp_syn_retries)",
    Mechanism.CONNECT_TIMEOUT: "--connect-timeout (the client's deadline)",
    Mechanism.MIDDLEBOX_RESET: "RST from the middlebox that forgot the flow",
    Mechanism.ADDRESS_REUSED: "RST from the host that took the peer's address",
    Mechanism.PROXY_TIMEOUT: "the proxy's own timeout",
    Mechanism.PING_TIMEOUT: "the library's ping, unanswered (gRPC's HTTP/2 PING)",
    Mechanism.NOTHING: "nothing notices it",
}


class Outcome(StrEnum):
    """What becomes of the connection: the model predicts the verdict's kind as well."""

    FAILS = "fails"  # the peer is gone (or unreachable for good): the failure is the news
    CUT = "cut"  # a failure, though the peer is still there or comes back
    SURVIVES = "survives"  # nothing fails: the echo works after the fault's window


Clock = Literal["request", "last-data", "fault"]


@dataclass(frozen=True)
class Prediction:
    """When the failure is detected: a range of seconds on a stated clock, or never."""

    low_s: float
    high_s: float
    clock: Clock
    mechanism: Mechanism
    errnos: tuple[str, ...]
    # SURVIVES: the range is when the first echo after the fault's window comes back.
    outcome: Outcome = Outcome.FAILS

    @property
    def never(self) -> bool:
        return math.isinf(self.low_s)

    @property
    def survives(self) -> bool:
        return self.outcome is Outcome.SURVIVES

    def contains(self, seconds: float | None) -> bool:
        """Whether a measurement fits; ``None`` (not detected) fits only "never"."""
        if seconds is None:
            return self.never
        return self.low_s <= seconds <= self.high_s

    def describe(self) -> str:
        if self.never:
            return "never"
        span = f"{format_seconds(self.low_s, unit='')}-{format_seconds(self.high_s)}"
        if self.survives:
            return f"survives: echo {span}"
        if self.high_s <= FAST_S and self.low_s == 0:
            return f"< {self.high_s:g} s"
        return span


NEVER = math.inf


def predict(
    kernel: KernelSettings,
    tcp: TcpOptions,
    failure: Failure,
    activity: Activity,
    deadlines: Deadlines = Deadlines(),  # noqa: B008 - frozen, so one shared value is safe
    first_rto_s: float | None = None,
    lone_segment: bool = True,
) -> Prediction:
    """When and how a client with ``tcp`` and ``deadlines`` detects ``failure`` while
    ``activity``.

    ``first_rto_s`` is the connection's RTO before the failure (TCP_INFO's ``rto``), when
    known. An RTO up to the top of the range this project measured (``FIRST_RTO_S``: any
    link under a few milliseconds) gives the same prediction as an unknown one, so that
    ``explain``, the client's ``connected`` event, the lab and ``watch`` show one range for
    the same settings; only a longer RTO (a slower link) replaces the range. ``lone_segment``:
    the request is one segment (tcpecho's client); False for a program whose writes are
    unknown.
    """
    if failure is Failure.CLOSED:
        return Prediction(0.0, FAST_S, "fault", Mechanism.PEER_CLOSED, ("EOF", "ECONNRESET"))
    in_force = InForce.of(tcp, kernel)
    ping = deadlines.ping
    if activity is Activity.IDLE:
        by_keepalive = _idle(in_force) if failure is not Failure.STALLED else _never("last-data")
        return _earliest(by_keepalive, _pinged_idle(kernel, in_force, failure, ping, first_rto_s))
    if activity is Activity.CONNECTING:
        return _connecting(kernel, in_force, deadlines)
    if failure is Failure.STALLED:
        # The peer's kernel acknowledges every request: no retransmission timer runs, so
        # neither tcp_retries2 nor TCP_USER_TIMEOUT ever start (the latter only once the
        # peer's receive window is full), and keepalive probes are answered. A library's
        # ping is not: its program answers it.
        return read_deadline_first(deadlines.read_timeout_s, _pinged_busy(ping))
    rto_range = _rto_range(first_rto_s)
    tlp_range = TLP_S if lone_segment else TLP_ANY_S
    if activity is Activity.ORPHANED:
        # No program is left to keep a deadline; TCP_USER_TIMEOUT, set before the close,
        # still bounds the orphan as it bounded the socket.
        return _unacknowledged(
            kernel, in_force, failure, rto_range, tlp_range, orphan_budget(kernel)
        )
    by_kernel = _unacknowledged(kernel, in_force, failure, rto_range, tlp_range)
    return read_deadline_first(deadlines.read_timeout_s, _earliest(by_kernel, _pinged_busy(ping)))


def _pinged_busy(ping: Ping | None) -> Prediction:
    """A library's ping while a request waits: it goes once nothing was read for its
    interval, which began at most that long before the request (every read restarts it),
    and ends the wait when unanswered for its timeout."""
    if ping is None:
        return _never("request")
    low = ping.ack_timeout_s + APP_TIMER_S[0]
    high = ping.interval_s + ping.ack_timeout_s + APP_TIMER_S[1] + SCHEDULING_S
    return Prediction(low, high, "request", Mechanism.PING_TIMEOUT, ("PING_TIMEOUT",))


def _pinged_idle(
    kernel: KernelSettings,
    in_force: InForce,
    failure: Failure,
    ping: Ping | None,
    first_rto_s: float | None,
) -> Prediction:
    """A library's ping on a connection that waits: the first goes one interval after the
    last data; it is sent data, so TCP_USER_TIMEOUT (or tcp_retries2) bounds it as a request,
    and the ping's own timeout as well, whichever comes first. A stalled peer's kernel
    acknowledges it: only the ping's timeout ends it. Pings that stop after a few without
    data (gRPC's default) watch nothing for long."""
    if ping is None or not ping.watches_idle:
        return _never("last-data")
    at = (ping.interval_s + APP_TIMER_S[0], ping.interval_s + APP_TIMER_S[1])
    unanswered = Prediction(
        at[0] + ping.ack_timeout_s,
        at[1] + ping.ack_timeout_s + SCHEDULING_S,
        "last-data",
        Mechanism.PING_TIMEOUT,
        ("PING_TIMEOUT",),
    )
    if failure is Failure.STALLED:
        return unanswered
    # An HTTP/2 PING is one small segment, but other frames may go with it: any tail-loss
    # probe, as for a program whose writes are unknown.
    by_kernel = _unacknowledged(kernel, in_force, failure, _rto_range(first_rto_s), TLP_ANY_S)
    shifted = Prediction(
        at[0] + by_kernel.low_s,
        at[1] + by_kernel.high_s,
        "last-data",
        by_kernel.mechanism,
        by_kernel.errnos,
    )
    return _earliest(shifted, unanswered)


def _earliest(first: Prediction, second: Prediction) -> Prediction:
    """Two mechanisms that race on one clock: the range of whichever ends first, named by
    the one that ends first at the latest."""
    if first.never or second.never:
        return second if first.never else first
    winner = first if first.high_s <= second.high_s else second
    return replace(
        winner, low_s=min(first.low_s, second.low_s), high_s=min(first.high_s, second.high_s)
    )


def _rto_range(first_rto_s: float | None) -> tuple[float, float]:
    """The first RTOs a prediction covers: the measured range, unless the connection's own
    RTO is known and longer.

    An RTO below the range is the range too: exactly 200 ms is what a first RTT sample of
    0 us leaves (a loopback connect, read at once), and the next sample makes it 204 ms.
    Only a request lost before that sample would wait one (doubled) step longer."""
    if first_rto_s is None or first_rto_s <= FIRST_RTO_S[1]:
        return FIRST_RTO_S
    return (first_rto_s, first_rto_s)


def _unacknowledged(
    kernel: KernelSettings,
    in_force: InForce,
    failure: Failure,
    rto_range: tuple[float, float],
    tlp_range: tuple[float, float] = TLP_S,
    orphan_budget_s: float | None = None,
) -> Prediction:
    """A send never acknowledged: ended by the user timeout, or else by the retry budget
    (``tcp_retries2``'s, or an orphan's when ``orphan_budget_s`` is given)."""
    errnos = ("ETIMEDOUT",) if failure is Failure.SILENT else ("ENETUNREACH", "EHOSTUNREACH")
    if failure is Failure.UNREACHABLE and in_force.recverr:
        # A hard error at the first ICMP that finds the socket free: the one answering the
        # original send arrives while the sender still holds the socket, so it is usually
        # the tail-loss probe's, ~0.2 s later.
        return Prediction(0.0, 0.5, "request", Mechanism.RECVERR, errnos)
    lead_low = tlp_range[0] + rto_range[0]
    lead_high = (tlp_range[1] + rto_range[1]) * TIMER_SLACK[1]
    grid = [
        give_up_after_send(kernel, rto, tlp, slack, orphan_budget_s)
        for rto in _steps(*rto_range, count=5)
        for tlp in tlp_range
        for slack in _steps(*TIMER_SLACK, count=13)
    ]
    limit = in_force.user_timeout_s
    if limit > 0:
        low, high = lead_low + limit, lead_high + limit * TIMER_SLACK[1] + SCHEDULING_S
        mechanism = Mechanism.USER_TIMEOUT
        step = step_at(kernel, rto_range[1], lead_high + limit)
    else:
        low = min(t for t, _ in grid)
        high = max(t for t, _ in grid) + SCHEDULING_S
        mechanism = Mechanism.TCP_RETRIES2 if orphan_budget_s is None else Mechanism.ORPHAN_RETRIES
        step = max(s for _, s in grid)
    if failure is Failure.UNREACHABLE:
        # Each ICMP error reverts one RTO backoff (RFC 6069) and re-arms the timer without
        # the user-timeout clamp; the node rate-limits its ICMP. The give-up still comes at
        # the first expiry past the budget, but that expiry can be a backed-off step later.
        high += 2 * step * TIMER_SLACK[1]
    return Prediction(low, high, "request", mechanism, errnos)


def _never(clock: Clock) -> Prediction:
    return Prediction(NEVER, NEVER, clock, Mechanism.NOTHING, ())


def _deadline_or_never(read_timeout_s: float | None) -> Prediction:
    return read_deadline_first(read_timeout_s, _never("request"))


def read_deadline_first(read_timeout_s: float | None, otherwise: Prediction) -> Prediction:
    """The client's read deadline, when it comes before ``otherwise`` (what the kernel, or a
    proxy, would end the wait with)."""
    if read_timeout_s is None or read_timeout_s + APP_TIMER_S[1] >= otherwise.low_s:
        return otherwise
    return Prediction(
        read_timeout_s + APP_TIMER_S[0],
        read_timeout_s + APP_TIMER_S[1],
        "request",
        Mechanism.READ_TIMEOUT,
        ("READ_TIMEOUT",),
    )


def _connecting(kernel: KernelSettings, in_force: InForce, deadlines: Deadlines) -> Prediction:
    """A SYN that is never answered: the budget is in time, the give-up at the first SYN
    timer past it; TCP_USER_TIMEOUT clamps it (measured: 3.01 s for 3 s, 20.01 s for 20 s)."""
    budget = syn_budget(kernel, in_force.syn_retries)
    # The budget is kernel time; late timers move the expiries, not the budget.
    give_ups = [
        next(t for t in syn_expiries(kernel, slack) if t >= budget - 1e-9)
        for slack in _steps(*TIMER_SLACK, count=13)
    ]
    low, high = min(give_ups), max(give_ups) + SCHEDULING_S
    mechanism = Mechanism.SYN_RETRIES
    limit = in_force.user_timeout_s
    if 0 < limit < low:
        low, high = limit, limit * TIMER_SLACK[1] + SCHEDULING_S
        mechanism = Mechanism.USER_TIMEOUT
    deadline = deadlines.connect_timeout_s
    if deadline is not None and deadline + APP_TIMER_S[1] < low:
        return Prediction(
            deadline + APP_TIMER_S[0],
            deadline + APP_TIMER_S[1],
            "request",
            Mechanism.CONNECT_TIMEOUT,
            ("CONNECT_TIMEOUT",),
        )
    return Prediction(low, high, "request", mechanism, ("ETIMEDOUT",))


def _idle(in_force: InForce) -> Prediction:
    keepalive = in_force.keepalive
    if keepalive is None:
        return _never("last-data")
    idle, interval = keepalive.idle_s, keepalive.interval_s
    if in_force.user_timeout_s > 0:
        # Probing then stops at the first probe time past the user timeout (KEEPCNT unused).
        probes = max(1, math.ceil((in_force.user_timeout_s - idle) / interval))
        mechanism = Mechanism.KEEPALIVE_USER_TIMEOUT
    else:
        probes = keepalive.count
        mechanism = Mechanism.KEEPALIVE
    nominal = idle + probes * interval
    # ICMP errors for keepalive probes are ignored (the probe is out of the window), so an
    # unreachable peer times out like a silent one.
    return Prediction(
        nominal,
        nominal * TIMER_SLACK[1] + SCHEDULING_S,
        "last-data",
        mechanism,
        ("ETIMEDOUT",),
    )


def _steps(low: float, high: float, count: int) -> list[float]:
    if low == high:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]
