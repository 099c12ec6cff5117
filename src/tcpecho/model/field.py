"""The field's faults (``docs/lab.md``): a path that forgets an idle flow, a partition that
heals, a new host on the peer's address, and a proxy in between; when each ends a
connection, or whether it survives.

They rest on ``predict``'s rules for a send never acknowledged and for keepalive, and on
the measurements in ``docs/kernel-facts.md`` ("Field faults"):

- a middlebox forgets a flow once it has carried nothing for its idle timeout; every packet
  refreshes it, a keepalive probe and its ACK too. After it forgot, the next packet is
  dropped (or answered with RST, as the AWS NAT gateway does);
- during a partition nothing passes; after it heals, the next retransmission (or keepalive
  probe) gets through and the connection goes on as if nothing happened: the recovery
  waits for that backed-off expiry;
- a host that took the peer's address knows nothing of the connection and answers the next
  segment that reaches it with RST;
- behind a proxy, the app's own socket is on loopback: its options see nothing of the
  upstream, and only the app's deadline or the proxy's own connection ends the wait.

Survival is a prediction too (``Prediction.survives``): its range is when the first echo
after the fault's window (the heal, the idle timeout) comes back, on the stated clock: the
fault's for a busy client, the last data's for an idle one (its next request leaves that
long after its last echo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tcpecho.model.in_force import InForce
from tcpecho.model.kernel import (
    FIRST_RTO_S,
    KEEPALIVE_EARLY_S,
    TIMER_SLACK,
    TLP_ANY_S,
    TLP_S,
    KernelSettings,
    retransmission_expiries,
)
from tcpecho.model.predict import (
    APP_TIMER_S,
    FAST_S,
    NEVER,
    SCHEDULING_S,
    Activity,
    Clock,
    Failure,
    Mechanism,
    Outcome,
    Prediction,
    predict,
    read_deadline_first,
)
from tcpecho.settings import Deadlines, Ping
from tcpecho.tcp.options import TcpOptions

# An echo comes back a round trip after the packet that got through, and the client sees it
# when it is scheduled: on a loaded machine, a few hundred milliseconds.
ECHO_LATE_S = SCHEDULING_S


@dataclass(frozen=True)
class Traffic:
    """What the client does around the fault.

    ``next_request_s``: an idle client's next request, that long after its last data (None:
    it sends nothing while watched). ``request_offset_s``: how late after the fault a busy
    client's next request may leave (its interval: the fault comes just after an echo)."""

    next_request_s: float | None = None
    request_offset_s: float = 1.0
    # How long after the last data the fault came (an idle client's clock starts there, a
    # partition's or a new pod's at the fault).
    fault_lag_s: float = 0.0
    first_rto_s: float | None = None
    lone_segment: bool = True


def after_idle_expiry(
    kernel: KernelSettings,
    tcp: TcpOptions,
    activity: Activity,
    idle_timeout_s: float,
    traffic: Traffic,
    deadlines: Deadlines = Deadlines(),  # noqa: B008 - frozen, so one shared value is safe
    reset: bool = False,
) -> Prediction:
    """A middlebox on the path forgets the flow after ``idle_timeout_s`` without a packet:
    the clock is the last data's, busy or idle."""
    in_force = InForce.of(tcp, kernel)
    if activity is Activity.ACTIVE:
        if traffic.request_offset_s < idle_timeout_s:
            # Every request refreshes the flow: the first echo after the timeout (from the
            # last data before the fault) comes back.
            return _survives(idle_timeout_s, idle_timeout_s + traffic.request_offset_s, "last-data")
        activity = Activity.IDLE  # a request rarer than the timeout is an idle connection's
    keepalive = in_force.keepalive
    ping = idle_ping(deadlines)
    first_packet_s = min(
        keepalive.idle_s if keepalive is not None else NEVER,
        ping.interval_s if ping is not None else NEVER,
    )
    if first_packet_s < idle_timeout_s:
        # Each probe (or ping) and its answer refresh the flow before it is forgotten.
        if traffic.next_request_s is None:  # nothing to show it, but nothing fails
            return replace(_never_seen(), outcome=Outcome.SURVIVES)
        return _survives(traffic.next_request_s, traffic.next_request_s, "last-data")
    if first_packet_s < NEVER:
        idle = predict(kernel, tcp, Failure.SILENT, Activity.IDLE, replace(deadlines, ping=ping))
        if reset:  # the first probe or ping finds the flow forgotten and is answered with RST
            high = first_packet_s * TIMER_SLACK[1] + SCHEDULING_S
            probes = keepalive is not None and keepalive.idle_s == first_packet_s
            by = Mechanism.KEEPALIVE if probes else Mechanism.PING_TIMEOUT
            early = KEEPALIVE_EARLY_S if probes else 0.0  # a ping is the program's own clock
            low = first_packet_s - early
            idle = Prediction(low, high, "last-data", by, ("ECONNRESET", "EPIPE"))
        if traffic.next_request_s is None or idle.high_s < traffic.next_request_s:
            return idle
    if traffic.next_request_s is None:
        return _never_seen()
    if reset:
        return Prediction(
            0.0, FAST_S, "request", Mechanism.MIDDLEBOX_RESET, ("ECONNRESET", "EPIPE")
        )
    return _lost_request(kernel, tcp, traffic, deadlines)


def idle_ping(deadlines: Deadlines) -> Ping | None:
    """The library's ping where it goes on a connection with no call in flight (an idle
    pooled connection), for as long as it stays idle; else None."""
    ping = deadlines.ping
    if ping is None or not ping.without_calls or not ping.watches_idle:
        return None
    return ping


def after_partition(
    kernel: KernelSettings,
    tcp: TcpOptions,
    activity: Activity,
    outage_s: float,
    traffic: Traffic,
    deadlines: Deadlines = Deadlines(),  # noqa: B008 - frozen, so one shared value is safe
) -> Prediction:
    """Nothing passes for ``outage_s`` from the fault, then the path heals.

    Busy: the request left up to ``traffic.request_offset_s`` into the outage; it gets
    through at the first retransmission after the heal, unless the kernel (its budget, the
    user timeout) or the client's deadline gave up before. Idle: keepalive probes sent
    during the outage are lost; the connection is cut only when its probing ends before
    the heal."""
    in_force = InForce.of(tcp, kernel)
    if activity is Activity.IDLE:
        heal = traffic.fault_lag_s + outage_s  # on the last data's clock
        keepalive = in_force.keepalive
        idle = predict(kernel, tcp, Failure.SILENT, Activity.IDLE)
        if keepalive is not None and idle.low_s - keepalive.interval_s < heal:
            # Cut when the last probe goes out before the heal: every probe is lost.
            return _cut(idle)
        request = traffic.next_request_s
        if request is None:
            return _never_seen()
        if request >= heal:
            return _survives(request, request, "last-data")
        busy = _busy_through(kernel, tcp, traffic, deadlines, [heal - request])
        return replace(busy, low_s=busy.low_s + request, high_s=busy.high_s + request)
    offsets = _steps(0.0, traffic.request_offset_s, 5)
    busy = _busy_through(kernel, tcp, traffic, deadlines, [outage_s - o for o in offsets])
    if busy.survives:  # on the request's clock: the request left up to an interval late
        return replace(busy, high_s=busy.high_s + traffic.request_offset_s, clock="fault")
    return busy


def _busy_through(
    kernel: KernelSettings,
    tcp: TcpOptions,
    traffic: Traffic,
    deadlines: Deadlines,
    heals_s: list[float],
) -> Prediction:
    """A request sent before a heal (``heals_s``: how long before, each a possible timing)
    gets through at the first retransmission after it, unless the kernel (its budget, the
    user timeout) or the client's deadline gave up before: survival on the request's
    clock, or the cut."""
    failing = _lost_request(kernel, tcp, traffic, deadlines)
    through: list[float] = []  # the request's clock: when a retransmission got through
    tlp_range = TLP_S if traffic.lone_segment else TLP_ANY_S
    for heal in heals_s:
        for rto in _rto_range(traffic.first_rto_s):
            for tlp in tlp_range:
                for slack in _steps(*TIMER_SLACK, 5):
                    if heal <= 0:
                        through.append(0.0)
                        continue
                    got_through = next(t for t in _sends(kernel, rto, tlp, slack) if t >= heal)
                    if got_through >= failing.low_s:
                        # Where some timings heal in time and some do not, the model says
                        # cut: a mitigation cannot count on surviving an outage that close
                        # to its give-up.
                        return _cut(failing)
                    through.append(got_through)
    return _survives(min(through), max(through), "request")


def after_ip_reuse(
    kernel: KernelSettings,
    tcp: TcpOptions,
    activity: Activity,
    reuse_after_s: float,
    traffic: Traffic,
    deadlines: Deadlines = Deadlines(),  # noqa: B008 - frozen, so one shared value is safe
) -> Prediction:
    """The peer vanished silently; ``reuse_after_s`` later a host that does not know the
    connection takes its address and answers the next segment with RST. Busy: detected at
    the first retransmission after that, on the request's clock. Idle: at the first
    keepalive probe after it."""
    in_force = InForce.of(tcp, kernel)
    if activity is Activity.IDLE:
        keepalive = in_force.keepalive
        idle = predict(kernel, tcp, Failure.SILENT, Activity.IDLE)
        if keepalive is None:
            return idle  # never
        probes = [keepalive.idle_s + n * keepalive.interval_s for n in range(keepalive.count)]
        reuse = traffic.fault_lag_s + reuse_after_s  # on the last data's clock
        answered = [p for p in probes if p >= reuse]
        if not answered or answered[0] >= idle.low_s:
            return idle
        probe = answered[0]
        return Prediction(
            probe - KEEPALIVE_EARLY_S,
            probe * TIMER_SLACK[1] + SCHEDULING_S,
            "last-data",
            Mechanism.ADDRESS_REUSED,
            ("ECONNRESET",),
        )
    failing = _lost_request(kernel, tcp, traffic, deadlines)
    resets: list[float] = []  # the request's clock
    tlp_range = TLP_S if traffic.lone_segment else TLP_ANY_S
    for offset in _steps(0.0, traffic.request_offset_s, 5):
        reuse = reuse_after_s - offset
        for rto in _rto_range(traffic.first_rto_s):
            for tlp in tlp_range:
                for slack in _steps(*TIMER_SLACK, 5):
                    first = next(t for t in _sends(kernel, rto, tlp, slack) if t >= reuse)
                    if first < failing.low_s:
                        resets.append(first)
    if not resets:
        return failing
    return Prediction(
        min(resets),
        max(resets) + SCHEDULING_S,
        "request",
        Mechanism.ADDRESS_REUSED,
        ("ECONNRESET",),
    )


def stalled_reader(
    kernel: KernelSettings,
    tcp: TcpOptions,
    activity: Activity,
    deadlines: Deadlines = Deadlines(),  # noqa: B008 - frozen, so one shared value is safe
    fills_windows: bool = False,
) -> Prediction:
    """The peer's kernel ACKs, its program reads nothing. A request that fits the windows is
    acknowledged, and only the client's deadline ends the wait; a sender that fills them
    (``fills_windows``) gets zero-window probes answered forever, unless TCP_USER_TIMEOUT
    cuts it: the probe timer starts ~one RTO after the window closed, and the kernel gives
    up at the first probe past the user timeout from there, clamped to it."""
    prediction = predict(kernel, tcp, Failure.STALLED, activity, deadlines)
    limit = InForce.of(tcp, kernel).user_timeout_s
    if activity is not Activity.ACTIVE or not fills_windows or limit <= 0:
        return _cut(prediction)
    low = FIRST_RTO_S[0] + limit
    high = (2 * FIRST_RTO_S[1] + limit) * TIMER_SLACK[1] + ZERO_WINDOW_FILL_S + SCHEDULING_S
    deadline = deadlines.read_timeout_s
    if deadline is not None and deadline + APP_TIMER_S[1] < low:
        return _cut(prediction)
    return Prediction(
        low, high, "request", Mechanism.USER_TIMEOUT, ("ETIMEDOUT", "EPIPE"), Outcome.CUT
    )


# How long a window-filling request takes to fill the stopped reader's buffers (36 MiB at
# the speed of a veth pair on a loaded machine).
ZERO_WINDOW_FILL_S = 0.5


def behind_proxy(
    kernel: KernelSettings,
    proxy_tcp: TcpOptions,
    activity: Activity,
    traffic: Traffic,
    deadlines: Deadlines = Deadlines(),  # noqa: B008 - frozen, so one shared value is safe
    proxy_timeout_s: float | None = None,
) -> Prediction:
    """The app talks to a proxy on loopback; the proxy's upstream peer vanished silently.
    The app's TCP options act on its loopback connection, which stays healthy: its read
    deadline, the proxy's data timeout (``proxy_timeout_s``) or the kernel's give-up on the
    proxy's own upstream socket (``proxy_tcp``, in the same namespace) ends it, and the app
    then sees the proxy close its side."""
    if activity is not Activity.ACTIVE:
        return _never_seen()
    upstream = predict(
        kernel, proxy_tcp, Failure.SILENT, Activity.ACTIVE, Deadlines(), traffic.first_rto_s
    )
    closed_by_proxy = Prediction(
        upstream.low_s,
        upstream.high_s,
        "request",
        upstream.mechanism,
        ("EOF", "ECONNRESET"),
    )
    if proxy_timeout_s is not None and proxy_timeout_s + APP_TIMER_S[1] < upstream.low_s:
        closed_by_proxy = Prediction(
            proxy_timeout_s,
            proxy_timeout_s * TIMER_SLACK[1] + SCHEDULING_S,
            "request",
            Mechanism.PROXY_TIMEOUT,
            ("EOF", "ECONNRESET"),
        )
    return read_deadline_first(deadlines.read_timeout_s, closed_by_proxy)


def _lost_request(
    kernel: KernelSettings, tcp: TcpOptions, traffic: Traffic, deadlines: Deadlines
) -> Prediction:
    """A request that is never acknowledged (the busy case), with ``traffic``'s RTO."""
    return predict(
        kernel,
        tcp,
        Failure.SILENT,
        Activity.ACTIVE,
        deadlines,
        traffic.first_rto_s,
        traffic.lone_segment,
    )


def _survives(low_s: float, high_s: float, clock: Clock = "fault") -> Prediction:
    """The first echo after the fault's window, between ``low_s`` and ``high_s`` on
    ``clock`` (an idle client's next request: from its last data)."""
    return Prediction(
        low_s,
        high_s + ECHO_LATE_S,
        clock,
        Mechanism.NOTHING,
        (),
        Outcome.SURVIVES,
    )


def _never_seen() -> Prediction:
    """Nothing fails, and nothing is sent that would show it: not noticed while watched."""
    return Prediction(math.inf, math.inf, "last-data", Mechanism.NOTHING, ())


def _cut(prediction: Prediction) -> Prediction:
    """``prediction``'s failure, on a connection whose peer is still there (or comes back)."""
    if prediction.never:
        return prediction
    return replace(prediction, outcome=Outcome.CUT)


def _rto_range(first_rto_s: float | None) -> tuple[float, float]:
    if first_rto_s is None or first_rto_s <= FIRST_RTO_S[1]:
        return FIRST_RTO_S
    return (first_rto_s, first_rto_s)


def _sends(kernel: KernelSettings, rto: float, tlp: float, slack: float) -> list[float]:
    """When the request and its retransmissions leave (from the send), for two hours."""
    sends = [0.0, tlp]
    for t in retransmission_expiries(kernel, rto, tlp, slack):
        sends.append(t)
        if t > 7200:
            return sends
    raise AssertionError("unreachable")  # pragma: no cover


def _steps(low: float, high: float, count: int) -> list[float]:
    if low == high:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]
