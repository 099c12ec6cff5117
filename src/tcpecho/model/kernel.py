"""The kernel's side of the model: the per-namespace sysctls (``KernelSettings``), the
budgets they stand for, and the schedule on which the retransmission and SYN timers fire.

The constants are the kernel's, or this project's measurements of them
(``docs/kernel-facts.md``); the ranges are what varies between connections and machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
# How much earlier than its idle time, on a program's clock, a keepalive probe may leave: the
# timer counts whole jiffies from the last segment received (tcp_keepalive_timer: tcp_jiffies32
# - lrcvtime), so it fires up to one jiffy (4 ms at HZ=250, 10 ms at HZ=100) before the idle
# time is up; and the program's clock starts when it read that segment, a scheduling delay
# after the kernel received it. Seen: a probe answered by RST 3.8 ms before the 10 s idle time.
KEEPALIVE_EARLY_S = 0.05


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
    # An orphan's retransmissions (a socket its program closed, or died holding, with data
    # or its FIN unacknowledged); 0, the default, stands for 8 (``orphan_retries``).
    tcp_orphan_retries: int = 0
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
            tcp_orphan_retries=values["net.ipv4.tcp_orphan_retries"],
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
            "net.ipv4.tcp_orphan_retries": self.tcp_orphan_retries,
        }


_SYSCTLS = tuple(KernelSettings().sysctls())


def read_own_sysctl(key: str) -> int | None:
    """A sysctl of this process's network namespace; None when the kernel lacks it."""
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def retries2_budget(kernel: KernelSettings) -> float:
    """The give-up budget ``tcp_retries2`` stands for (the kernel's tcp_model_timeout)."""
    return _model_timeout(TCP_RTO_MIN_S, kernel.tcp_retries2, kernel.tcp_rto_max_s)


ORPHAN_RETRIES_WHILE_ALIVE = 8  # what tcp_orphan_retries=0 stands for: "> 100 seconds"


def orphan_retries(kernel: KernelSettings, rto_capped: bool = False) -> int:
    """The retry count that bounds an orphan in place of ``tcp_retries2`` (the kernel's
    tcp_orphan_retries()): the sysctl, where 0 means 8 while the RTO is below its cap (the
    kernel's "alive") and 0 once it has reached it, so an orphan whose RTO already reached
    the cap ends at its next expiry."""
    if kernel.tcp_orphan_retries == 0 and not rto_capped:
        return ORPHAN_RETRIES_WHILE_ALIVE
    return kernel.tcp_orphan_retries


def orphan_budget(kernel: KernelSettings, rto_capped: bool = False) -> float:
    """The give-up budget of an orphan: ``orphan_retries`` made a time, as ``tcp_retries2``
    is (102.2 s for 8)."""
    return _model_timeout(TCP_RTO_MIN_S, orphan_retries(kernel, rto_capped), kernel.tcp_rto_max_s)


def syn_budget(kernel: KernelSettings, syn_retries: int) -> float:
    """The connect's budget: ``syn_retries`` doublings of a 1 s RTO."""
    return _model_timeout(TCP_TIMEOUT_INIT_S, syn_retries, kernel.tcp_rto_max_s)


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
    kernel: KernelSettings,
    first_rto_s: float,
    tlp_s: float,
    slack: float,
    budget_s: float | None = None,
) -> tuple[float, float]:
    """(give-up time, the RTO step that ended there) for a retry budget alone:
    ``tcp_retries2``'s, unless another (an orphan's) is given."""
    budget = retries2_budget(kernel) if budget_s is None else budget_s
    expiries = retransmission_expiries(kernel, first_rto_s, tlp_s, slack)
    start = previous = next(expiries)
    for t in expiries:
        if t - start >= budget - 1e-9:
            return t, t - previous
        previous = t
    raise AssertionError("unreachable: the expiries never end")  # pragma: no cover


def step_at(kernel: KernelSettings, first_rto_s: float, seconds: float) -> float:
    """The RTO step under way ``seconds`` after the send, for the latest timers."""
    expiries = retransmission_expiries(kernel, first_rto_s, TLP_S[1], TIMER_SLACK[1])
    previous = 0.0
    for t in expiries:
        if t >= seconds:
            return t - previous
        previous = t
    raise AssertionError("unreachable")  # pragma: no cover
