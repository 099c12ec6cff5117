"""The kernel model: when Linux gives up on a peer that failed, for given sysctls and options.

Everything here is arithmetic on the kernel's rules, checked against measurements on this
project's machines (``docs/kernel-facts.md``); the lab and the cluster run print it next
to what they measure. It takes the client's settings as they are (``TcpOptions`` and its
``Deadlines``) and the network namespace's sysctls (``KernelSettings``).

The rules, for a small request that is never acknowledged (an *active* connection):

- a tail-loss probe goes out after about 200 ms, the first RTO retransmission after
  another RTO (``max(TCP_RTO_MIN, srtt + 4 rttvar)``, about 204 ms on a fast link); that
  first retransmission starts the give-up clock;
- each expiry doubles the RTO, up to ``tcp_rto_max_ms`` (120 s, per namespace from 6.15);
- ``tcp_retries2`` becomes a time budget: the sum of an RTO series that starts at
  TCP_RTO_MIN and has ``tcp_retries2 + 1`` terms (924.6 s for 15). The kernel gives up at
  the first expiry at or after the budget; with TCP_USER_TIMEOUT set, the budget is the
  user timeout instead and the timer is clamped to end exactly there;
- keepalive sends nothing while data is unacknowledged.

For an *idle* connection only keepalive can notice anything: the first probe goes out
after the idle time, then one per interval; the kernel gives up after ``count`` unanswered
probes, or, with TCP_USER_TIMEOUT set, at the first probe time past it.

Kernel timers fire a few percent late (timer-wheel granularity), so predictions are
ranges. Each states which clock it runs on: from the unanswered request, from the last
data received, or from the fault itself (a FIN or RST arrives at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions

TCP_RTO_MIN_S = 0.2  # the RTO floor, and the unit of tcp_retries2's budget
TCP_TIMEOUT_INIT_S = 1.0  # the SYN's first RTO, and the unit of tcp_syn_retries' budget
TLP_S = (0.19, 0.21)  # tail-loss probe for a lone segment: 2 srtt + 200 ms delayed-ACK allowance
# With more than one segment in flight the kernel adds only TCP_TIMEOUT_MIN (2 jiffies) to
# 2 srtt (tcp_schedule_loss_probe), so the probe comes almost at once. tcpecho's client sends
# each request as one segment; another program may send two (a header and a body), so its
# probe can come anywhere in this range (seen: the first RTO ~0.2 s earlier for gRPC).
TLP_ANY_S = (0.002, TLP_S[1])
# The first RTO: srtt + 4 rttvar, at least TCP_RTO_MIN, rounded up to whole jiffies: 204 ms
# on this project's machines (HZ=250), a little more on slower links. The exact value
# matters: the budget is a sum of 200 ms steps, so an RTO of exactly 200 ms would reach it
# one (doubled) step later. Callers that know the connection's RTO pass it instead.
FIRST_RTO_S = (0.204, 0.212)
TIMER_SLACK = (1.0, 1.06)  # how late the kernel's timers fire, as a factor
APP_TIMER_S = (-0.015, 0.05)  # the client's own deadlines: event-loop timers, ms resolution
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


class Mechanism(StrEnum):
    """What ends the wait: the one thing a verdict depends on."""

    TCP_RETRIES2 = "tcp_retries2"  # only the kernel's retransmission budget: the hang
    USER_TIMEOUT = "user_timeout"
    READ_TIMEOUT = "read_timeout"  # the client's own deadline
    RECVERR = "recverr"  # an ICMP error taken as a hard error
    KEEPALIVE = "keepalive"
    KEEPALIVE_USER_TIMEOUT = "keepalive_user_timeout"
    PEER_CLOSED = "peer_closed"
    SYN_RETRIES = "tcp_syn_retries"  # the kernel's SYN retransmission budget
    CONNECT_TIMEOUT = "connect_timeout"  # the client's own deadline on connecting
    NOTHING = "nothing"

    @property
    def description(self) -> str:
        return _MECHANISM_DESCRIPTIONS[self]


_MECHANISM_DESCRIPTIONS = {
    Mechanism.TCP_RETRIES2: "the kernel's retransmission budget (tcp_retries2)",
    Mechanism.USER_TIMEOUT: "TCP_USER_TIMEOUT",
    Mechanism.READ_TIMEOUT: "--read-timeout (the client's deadline)",
    Mechanism.RECVERR: "IP_RECVERR (ICMP as a hard error)",
    Mechanism.KEEPALIVE: "keepalive",
    Mechanism.KEEPALIVE_USER_TIMEOUT: "keepalive, ended by TCP_USER_TIMEOUT",
    Mechanism.PEER_CLOSED: "FIN/RST from the peer",
    Mechanism.SYN_RETRIES: "the kernel's SYN retransmission budget (tcp_syn_retries)",
    Mechanism.CONNECT_TIMEOUT: "--connect-timeout (the client's deadline)",
    Mechanism.NOTHING: "nothing notices it",
}


Clock = Literal["request", "last-data", "fault"]


@dataclass(frozen=True)
class KernelSettings:
    """The per-namespace sysctls that decide the timers (kernel defaults by default)."""

    tcp_retries2: int = 15
    tcp_rto_max_s: float = 120.0
    tcp_syn_retries: int = 6
    # SYN retransmissions at a fixed 1 s before the doubling starts (0 where the kernel
    # lacks the sysctl). They do not lengthen the connect: its budget is set in time.
    tcp_syn_linear_timeouts: int = 4
    tcp_keepalive_time_s: int = 7200
    tcp_keepalive_intvl_s: int = 75
    tcp_keepalive_probes: int = 9
    absent: tuple[str, ...] = ()  # sysctls this kernel does not have: their fixed values hold

    @classmethod
    def read(cls, read_sysctl: Callable[[str], int | None]) -> KernelSettings:
        """From sysctls; ``read_sysctl`` returns None for one this kernel lacks."""
        found = {key: read_sysctl(key) for key in _SYSCTLS}
        defaults = cls().sysctls()
        defaults["net.ipv4.tcp_syn_linear_timeouts"] = 0  # lacking it: all SYN timeouts double
        values = {key: defaults[key] if value is None else value for key, value in found.items()}
        return cls(
            tcp_retries2=values["net.ipv4.tcp_retries2"],
            tcp_rto_max_s=values["net.ipv4.tcp_rto_max_ms"] / 1000,
            tcp_syn_retries=values["net.ipv4.tcp_syn_retries"],
            tcp_syn_linear_timeouts=values["net.ipv4.tcp_syn_linear_timeouts"],
            tcp_keepalive_time_s=values["net.ipv4.tcp_keepalive_time"],
            tcp_keepalive_intvl_s=values["net.ipv4.tcp_keepalive_intvl"],
            tcp_keepalive_probes=values["net.ipv4.tcp_keepalive_probes"],
            absent=tuple(key for key, value in found.items() if value is None),
        )

    @classmethod
    def here(cls) -> KernelSettings:
        """This process's network namespace's sysctls (from /proc/sys)."""
        return cls.read(read_own_sysctl)

    def sysctls(self) -> dict[str, int]:
        """The values by sysctl name, in the sysctls' own units."""
        return {
            "net.ipv4.tcp_retries2": self.tcp_retries2,
            "net.ipv4.tcp_rto_max_ms": round(self.tcp_rto_max_s * 1000),
            "net.ipv4.tcp_syn_retries": self.tcp_syn_retries,
            "net.ipv4.tcp_syn_linear_timeouts": self.tcp_syn_linear_timeouts,
            "net.ipv4.tcp_keepalive_time": self.tcp_keepalive_time_s,
            "net.ipv4.tcp_keepalive_intvl": self.tcp_keepalive_intvl_s,
            "net.ipv4.tcp_keepalive_probes": self.tcp_keepalive_probes,
        }


_SYSCTLS = tuple(KernelSettings().sysctls())


def read_own_sysctl(key: str) -> int | None:
    """A sysctl of this process's network namespace; None when the kernel lacks it."""
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Prediction:
    """When the failure is detected: a range of seconds on a stated clock, or never."""

    low_s: float
    high_s: float
    clock: Clock
    mechanism: Mechanism
    errnos: tuple[str, ...]

    @property
    def never(self) -> bool:
        return math.isinf(self.low_s)

    def contains(self, seconds: float | None) -> bool:
        """Whether a measurement fits; ``None`` (not detected) fits only "never"."""
        if seconds is None:
            return self.never
        return self.low_s <= seconds <= self.high_s

    def describe(self) -> str:
        if self.never:
            return "never"
        if self.high_s <= FAST_S and self.low_s == 0:
            return f"< {self.high_s:g} s"
        return f"{_seconds(self.low_s)}-{_seconds(self.high_s)} s"


NEVER = math.inf


def retries2_budget(kernel: KernelSettings) -> float:
    """The give-up budget ``tcp_retries2`` stands for (the kernel's tcp_model_timeout)."""
    return _model_timeout(TCP_RTO_MIN_S, kernel.tcp_retries2, kernel.tcp_rto_max_s)


def syn_budget(kernel: KernelSettings, tcp: TcpOptions) -> float:
    """The connect's budget: TCP_SYNCNT (or tcp_syn_retries) doublings of a 1 s RTO."""
    retries = tcp.syn_retries or kernel.tcp_syn_retries
    return _model_timeout(TCP_TIMEOUT_INIT_S, retries, kernel.tcp_rto_max_s)


def _model_timeout(base_s: float, retries: int, cap_s: float) -> float:
    """The sum of an RTO series that starts at ``base_s``, doubles up to ``cap_s`` and has
    ``retries + 1`` terms: how the kernel turns a retry count into a time budget."""
    rto, total = base_s, 0.0
    for _ in range(retries + 1):
        total += rto
        rto = min(rto * 2, cap_s)
    return total


def syn_expiries(kernel: KernelSettings, slack: float) -> Iterator[float]:
    """Times (from the connect) at which the SYN retransmission timer fires, forever.

    The first ``tcp_syn_linear_timeouts + 1`` RTOs stay at 1 s, then they double: with the
    default 4, SYNs leave at 0, 1, 2, 3, 4, 5, 7, 11, 19, 35, 67 s (measured here)."""
    t, rto, fired = 0.0, TCP_TIMEOUT_INIT_S, 0
    while True:
        t += rto * slack
        fired += 1
        yield t
        if fired > kernel.tcp_syn_linear_timeouts:
            rto = min(rto * 2, kernel.tcp_rto_max_s)


def retransmission_expiries(
    kernel: KernelSettings, first_rto_s: float, tlp_s: float, slack: float
) -> Iterator[float]:
    """Times (from the unanswered send) at which the retransmission timer fires, forever."""
    t = tlp_s + first_rto_s * slack
    yield t
    rto = first_rto_s
    while True:
        rto = min(rto * 2, kernel.tcp_rto_max_s)
        t += rto * slack
        yield t


def give_up_after_send(
    kernel: KernelSettings, first_rto_s: float, tlp_s: float, slack: float
) -> tuple[float, float]:
    """(give-up time, the RTO step that ended there) for tcp_retries2 alone."""
    budget = retries2_budget(kernel)
    expiries = retransmission_expiries(kernel, first_rto_s, tlp_s, slack)
    start = previous = next(expiries)
    for t in expiries:
        if t - start >= budget - 1e-9:
            return t, t - previous
        previous = t
    raise AssertionError("unreachable: the expiries never end")  # pragma: no cover


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
    known; otherwise the range this project measured is assumed. ``lone_segment``: the
    request is one segment (tcpecho's client); False for a program whose writes are unknown.
    """
    if failure is Failure.CLOSED:
        return Prediction(0.0, FAST_S, "fault", Mechanism.PEER_CLOSED, ("EOF", "ECONNRESET"))
    if activity is Activity.IDLE:
        return _idle(kernel, tcp) if failure is not Failure.STALLED else _never("last-data")
    if activity is Activity.CONNECTING:
        return _connecting(kernel, tcp, deadlines)
    if failure is Failure.STALLED:
        # The peer's kernel acknowledges every request: no retransmission timer runs, so
        # neither tcp_retries2 nor TCP_USER_TIMEOUT ever start (the latter only once the
        # peer's receive window is full), and keepalive probes are answered.
        return _deadline_or_never(deadlines.read_timeout_s)
    rto_range = FIRST_RTO_S if first_rto_s is None else (first_rto_s, first_rto_s)
    tlp_range = TLP_S if lone_segment else TLP_ANY_S
    by_kernel = _unacknowledged(kernel, tcp, failure, rto_range, tlp_range)
    deadline = deadlines.read_timeout_s
    if deadline is not None and deadline + APP_TIMER_S[1] < by_kernel.low_s:
        return Prediction(
            deadline + APP_TIMER_S[0],
            deadline + APP_TIMER_S[1],
            "request",
            Mechanism.READ_TIMEOUT,
            ("READ_TIMEOUT",),
        )
    return by_kernel


def _unacknowledged(
    kernel: KernelSettings,
    tcp: TcpOptions,
    failure: Failure,
    rto_range: tuple[float, float],
    tlp_range: tuple[float, float] = TLP_S,
) -> Prediction:
    errnos = ("ETIMEDOUT",) if failure is Failure.SILENT else ("ENETUNREACH", "EHOSTUNREACH")
    if failure is Failure.UNREACHABLE and tcp.recverr:
        # A hard error at the first ICMP that finds the socket free: the one answering the
        # original send arrives while the sender still holds the socket, so it is usually
        # the tail-loss probe's, ~0.2 s later.
        return Prediction(0.0, 0.5, "request", Mechanism.RECVERR, errnos)
    lead_low = tlp_range[0] + rto_range[0]
    lead_high = (tlp_range[1] + rto_range[1]) * TIMER_SLACK[1]
    grid = [
        give_up_after_send(kernel, rto, tlp, slack)
        for rto in _steps(*rto_range, count=5)
        for tlp in tlp_range
        for slack in _steps(*TIMER_SLACK, count=13)
    ]
    if tcp.user_timeout_s > 0:
        limit = tcp.user_timeout_s
        low, high = lead_low + limit, lead_high + limit * TIMER_SLACK[1] + SCHEDULING_S
        mechanism = Mechanism.USER_TIMEOUT
        step = _step_at(kernel, rto_range[1], lead_high + limit)
    else:
        low = min(t for t, _ in grid)
        high = max(t for t, _ in grid) + SCHEDULING_S
        mechanism = Mechanism.TCP_RETRIES2
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
    if read_timeout_s is None:
        return _never("request")
    return Prediction(
        read_timeout_s + APP_TIMER_S[0],
        read_timeout_s + APP_TIMER_S[1],
        "request",
        Mechanism.READ_TIMEOUT,
        ("READ_TIMEOUT",),
    )


def _connecting(kernel: KernelSettings, tcp: TcpOptions, deadlines: Deadlines) -> Prediction:
    """A SYN that is never answered: the budget is in time, the give-up at the first SYN
    timer past it; TCP_USER_TIMEOUT clamps it (measured: 3.01 s for 3 s, 20.01 s for 20 s)."""
    budget = syn_budget(kernel, tcp)
    # The budget is kernel time; late timers move the expiries, not the budget.
    give_ups = [
        next(t for t in syn_expiries(kernel, slack) if t >= budget - 1e-9)
        for slack in _steps(*TIMER_SLACK, count=13)
    ]
    low, high = min(give_ups), max(give_ups) + SCHEDULING_S
    mechanism = Mechanism.SYN_RETRIES
    if 0 < tcp.user_timeout_s < low:
        limit = tcp.user_timeout_s
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


def _idle(kernel: KernelSettings, tcp: TcpOptions) -> Prediction:
    if not tcp.keepalive_enabled:
        return _never("last-data")
    idle = tcp.keepalive_idle_s or kernel.tcp_keepalive_time_s
    interval = tcp.keepalive_interval_s or kernel.tcp_keepalive_intvl_s
    count = tcp.keepalive_count or kernel.tcp_keepalive_probes
    if tcp.user_timeout_s > 0:
        # Probing then stops at the first probe time past the user timeout (KEEPCNT unused).
        probes = max(1, math.ceil((tcp.user_timeout_s - idle) / interval))
        mechanism = Mechanism.KEEPALIVE_USER_TIMEOUT
    else:
        probes = count
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


def _step_at(kernel: KernelSettings, first_rto_s: float, seconds: float) -> float:
    """The RTO step under way ``seconds`` after the send (for the latest timers)."""
    expiries = retransmission_expiries(kernel, first_rto_s, TLP_S[1], TIMER_SLACK[1])
    previous = 0.0
    for t in expiries:
        if t >= seconds:
            return t - previous
        previous = t
    raise AssertionError("unreachable")  # pragma: no cover


def _steps(low: float, high: float, count: int) -> list[float]:
    if low == high:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"
