"""``tcpecho explain``: what a set of client options will and will not cover, before anything runs.

For each scenario (a peer that vanishes while a request is in flight, or while the
connection idles, a router answering ICMP unreachable, a connect that is never answered, a
peer that is alive but stopped reading) it asks the kernel model, with this network
namespace's sysctls, when the client would notice, and says why in one line. The same model
drives the lab's expectations and the client's live view, so the three cannot disagree.
It also names the known traps in the options, each with why in the options' own numbers (the
flags given, the namespace's sysctls for the rest) and its fix.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from dataclasses import dataclass, replace
from typing import Any

from tcpecho.durations import format_duration
from tcpecho.model import (
    TCP_RTO_MIN_S,
    TCP_TIMEOUT_INIT_S,
    Activity,
    Failure,
    InForce,
    Keepalive,
    KernelSettings,
    Mechanism,
    Prediction,
    Traffic,
    after_idle_expiry,
    after_ip_reuse,
    after_partition,
    behind_proxy,
    idle_ping,
    predict,
    retries2_budget,
    syn_budget,
)
from tcpecho.model import (
    Outcome as PredictedOutcome,
)
from tcpecho.settings import Deadlines, Ping
from tcpecho.tcp.options import OPTIONS, TcpOptions

DEFAULT_TCP_RETRIES2 = KernelSettings().tcp_retries2
SHORT_USER_TIMEOUT_S = 5.0  # a few lost segments in a row (0.2+0.4+0.8+1.6 s) come near it
# A healthy but lossy path's streak the user timeout must outlast: five RTOs from the minimum,
# each doubled (0.2+0.4+0.8+1.6+3.2 = 6.2 s).
LOSSY_STREAK_S = tuple(TCP_RTO_MIN_S * 2**step for step in range(5))
ENOUGH_USER_TIMEOUT_S = 10  # above that streak, with room for a slower path's longer RTO
EXAMPLE_USER_TIMEOUT_S = 30  # well above that streak, far below tcp_retries2's ~15 min
EXAMPLE_CONNECT_TIMEOUT_S = 5  # a round trip, and a few SYNs sent again 1 s apart
EXAMPLE_SYN_RETRIES = 2
EXAMPLE_KEEPALIVE_IDLE_S = 10  # a first probe soon after the connection goes quiet
EXAMPLE_KEEPALIVE_INTERVAL_S = 5
_KEEPALIVE_FIELDS = ("keepalive_idle_s", "keepalive_interval_s", "keepalive_count")
MAX_COUNT = next(option.high for option in OPTIONS if option.field == "keepalive_count") or 1
SHORT_READ_TIMEOUT_S = 1.0  # one lost segment costs 0.2 s, 1 s before the first RTT sample
SLOW_CONNECT_S = 30.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    failure: Failure
    activity: Activity


SCENARIOS = (
    Scenario(
        "busy",
        "the peer vanished while a request is unacknowledged",
        Failure.SILENT,
        Activity.ACTIVE,
    ),
    Scenario(
        "idle", "the peer vanished while the connection is idle", Failure.SILENT, Activity.IDLE
    ),
    Scenario(
        "unreachable",
        "a router answers with ICMP destination unreachable",
        Failure.UNREACHABLE,
        Activity.ACTIVE,
    ),
    Scenario(
        "connect",
        "connecting to an address that never answers",
        Failure.SILENT,
        Activity.CONNECTING,
    ),
    Scenario(
        "stalled-reader",
        "the peer is alive but its program stopped reading",
        Failure.STALLED,
        Activity.ACTIVE,
    ),
)


@dataclass(frozen=True)
class PathContext:
    """What the path adds to the scenarios: the shortest idle timeout of its middleboxes (and
    whether that one resets a forgotten flow), an outage the connection must survive, and a
    proxy in the client's pod (a sidecar) that the app talks to on loopback."""

    idle_timeout_s: float | None = None
    resets: bool = False
    preset: str | None = None  # the --path that gave the idle timeout
    outage_s: float | None = None
    via_proxy: bool = False
    ip_reuse_after_s: float | None = None  # a new pod takes the vanished peer's IP after this

    @property
    def idle_timeout_named(self) -> str:
        """``the path's idle timeout (350 s)``, or the preset's name with it."""
        assert self.idle_timeout_s is not None
        shown = format_duration(self.idle_timeout_s)
        if self.preset is None:
            return f"the path's idle timeout ({shown})"
        return f"{self.preset}'s idle timeout ({shown})"


PATH_SCENARIOS = {
    "idle-expiry": "a middlebox on the path forgets the flow while it is idle",
    "partition": "the path drops everything for the outage, then heals",
    "sidecar": "the app talks to a proxy in its pod; the proxy's peer vanished",
    "ip-reuse": "the peer vanished; a new pod with its IP, knowing nothing of it, came up",
    "stale-conntrack": "the SYN left before the Service's DNAT rule: a stale conntrack entry",
}


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    prediction: Prediction
    reasoning: str


@dataclass(frozen=True)
class Trap:
    """A known trap in the options: what goes wrong, and how to fix it."""

    code: str
    message: str
    fix: str


@dataclass(frozen=True)
class Explanation:
    tcp: TcpOptions
    deadlines: Deadlines
    kernel: KernelSettings
    outcomes: tuple[Outcome, ...]
    traps: tuple[Trap, ...]

    def outcome(self, name: str) -> Outcome:
        return next(outcome for outcome in self.outcomes if outcome.scenario.name == name)


def explain(
    kernel: KernelSettings,
    tcp: TcpOptions,
    deadlines: Deadlines,
    path: PathContext = PathContext(),
) -> Explanation:
    """Every scenario's expected detection with these options (and the path's, where it is
    described), and the traps in them."""
    in_force = InForce.of(tcp, kernel)
    outcomes = tuple(
        Outcome(scenario, prediction, _reasoning(scenario, prediction, kernel, in_force, deadlines))
        for scenario in SCENARIOS
        for prediction in [predict(kernel, tcp, scenario.failure, scenario.activity, deadlines)]
    ) + tuple(_path_outcomes(kernel, tcp, deadlines, path))
    predicted = {outcome.scenario.name: outcome.prediction for outcome in outcomes}
    found = traps(kernel, tcp, deadlines, predicted) + path_traps(
        kernel, tcp, path, predicted, deadlines
    )
    return Explanation(tcp, deadlines, kernel, outcomes, tuple(found))


def _path_outcomes(
    kernel: KernelSettings, tcp: TcpOptions, deadlines: Deadlines, path: PathContext
) -> list[Outcome]:
    """The field's scenarios: those the path's description calls for, and the stale
    conntrack entry, which any Service can leave."""
    in_force = InForce.of(tcp, kernel)
    found = []
    if path.idle_timeout_s is not None:
        timeout = path.idle_timeout_s
        prediction = after_idle_expiry(
            kernel,
            tcp,
            Activity.IDLE,
            timeout,
            # With keepalive (or pings), what it does while idle; without, the next
            # request's fate.
            Traffic(
                next_request_s=None if in_force.keepalive or idle_ping(deadlines) else timeout + 1
            ),
            deadlines,
            reset=path.resets,
        )
        reason = _idle_expiry_reason(prediction, kernel, in_force, deadlines, path)
        found.append(Outcome(_path_scenario("idle-expiry"), prediction, reason))
    if path.outage_s is not None:
        prediction = after_partition(
            kernel, tcp, Activity.ACTIVE, path.outage_s, Traffic(request_offset_s=0), deadlines
        )
        reason = _partition_reason(prediction, kernel, in_force, deadlines, path.outage_s)
        found.append(Outcome(_path_scenario("partition"), prediction, reason))
    if path.ip_reuse_after_s is not None:
        reuse = path.ip_reuse_after_s
        prediction = after_ip_reuse(
            kernel, tcp, Activity.ACTIVE, reuse, Traffic(request_offset_s=0), deadlines
        )
        reason = (
            f"the retransmissions go unanswered until the new pod comes up "
            f"({format_duration(reuse)}); it answers the first one after that with RST"
            if prediction.mechanism is Mechanism.ADDRESS_REUSED
            else f"it ends before the new pod comes up ({format_duration(reuse)}): "
            + _mechanism_reason(
                _path_scenario("ip-reuse"), prediction.mechanism, kernel, in_force, deadlines
            )
        )
        found.append(Outcome(_path_scenario("ip-reuse"), prediction, reason))
    if path.via_proxy:
        prediction = behind_proxy(kernel, TcpOptions(), Activity.ACTIVE, Traffic(), deadlines)
        found.append(Outcome(_path_scenario("sidecar"), prediction, _sidecar_reason(prediction)))
    connect = predict(kernel, tcp, Failure.SILENT, Activity.CONNECTING, deadlines)
    scenario = _path_scenario("stale-conntrack")
    reason = (
        "every retransmitted SYN of the socket follows the entry, untranslated, into nothing: "
        + _mechanism_reason(scenario, connect.mechanism, kernel, in_force, deadlines)
        + "; a new socket (a new source port) gets through at once"
    )
    found.append(Outcome(scenario, connect, reason))
    return found


def _path_scenario(name: str) -> Scenario:
    activity = Activity.CONNECTING if name == "stale-conntrack" else Activity.ACTIVE
    if name == "idle-expiry":
        activity = Activity.IDLE
    return Scenario(name, PATH_SCENARIOS[name], Failure.SILENT, activity)


def _idle_expiry_reason(
    prediction: Prediction,
    kernel: KernelSettings,
    in_force: InForce,
    deadlines: Deadlines,
    path: PathContext,
) -> str:
    keepalive = in_force.keepalive
    timeout = path.idle_timeout_named
    ping = idle_ping(deadlines)
    if ping is not None and (keepalive is None or ping.interval_s < keepalive.idle_s):
        return _idle_expiry_ping_reason(prediction, kernel, in_force, ping, path)
    if prediction.survives and keepalive is not None:
        return (
            f"keepalive's first probe, {keepalive.idle_s} s after the last data, comes before "
            f"{timeout} runs out, and every probe and its ACK keep the flow"
        )
    if prediction.mechanism in (Mechanism.KEEPALIVE, Mechanism.KEEPALIVE_USER_TIMEOUT):
        assert keepalive is not None
        fate = "answered with RST" if path.resets else "dropped"
        return (
            f"keepalive's first probe comes after {keepalive.idle_s} s idle, past {timeout}: "
            f"the path has forgotten the flow, the probes are {fate}, and "
            + _keepalive_reason(in_force, prediction.mechanism)
        )
    if prediction.mechanism is Mechanism.MIDDLEBOX_RESET:
        return (
            f"nothing is sent while idle, so the path forgets the flow after {timeout}; it "
            "answers the next request with RST"
        )
    scenario = Scenario("idle-expiry", "", Failure.SILENT, Activity.ACTIVE)
    return (
        f"nothing is sent while idle, so the path forgets the flow after {timeout} and drops "
        "the next request, which then fares as a lost one (from that request): "
        + _mechanism_reason(scenario, prediction.mechanism, kernel, in_force, deadlines)
    )


def _idle_expiry_ping_reason(
    prediction: Prediction,
    kernel: KernelSettings,
    in_force: InForce,
    ping: Ping,
    path: PathContext,
) -> str:
    timeout = path.idle_timeout_named
    after = f"the library's ping, {format_duration(ping.interval_s)} after the last read"
    if prediction.survives:
        return (
            f"{after}, comes before {timeout} runs out, and every ping and its answer keep the flow"
        )
    fate = "answered with RST" if path.resets else "dropped"
    scenario = Scenario("idle-expiry", "", Failure.SILENT, Activity.IDLE)
    return (
        f"{after}, comes past {timeout}: the path has forgotten the flow and the ping is "
        f"{fate}; "
        + _mechanism_reason(scenario, prediction.mechanism, kernel, in_force, Deadlines(ping=ping))
    )


def _partition_reason(
    prediction: Prediction,
    kernel: KernelSettings,
    in_force: InForce,
    deadlines: Deadlines,
    outage_s: float,
) -> str:
    outage = format_duration(outage_s)
    if prediction.survives:
        return (
            f"the retransmissions back off through the {outage} outage; the first one after "
            f"the heal gets through, {_span(prediction)} after the request, and nothing gives "
            "up before it"
        )
    scenario = Scenario("partition", "", Failure.SILENT, Activity.ACTIVE)
    return (
        f"the connection is cut before the path heals ({outage}), though the peer is still "
        "there: " + _mechanism_reason(scenario, prediction.mechanism, kernel, in_force, deadlines)
    )


def _sidecar_reason(prediction: Prediction) -> str:
    ends = (
        "--read-timeout ends it"
        if prediction.mechanism is Mechanism.READ_TIMEOUT
        else "the proxy's upstream socket gives up after the kernel's budget (its own options "
        "unknown here), and the proxy then closes the app's side"
    )
    return (
        "the app's TCP options act on its loopback connection to the proxy, which stays "
        f"healthy and answers every probe: {ends}"
    )


def _span(prediction: Prediction) -> str:
    return prediction.describe().removeprefix("survives: echo ")


def _reasoning(
    scenario: Scenario,
    prediction: Prediction,
    kernel: KernelSettings,
    in_force: InForce,
    deadlines: Deadlines,
) -> str:
    """One line: why this scenario ends when it does (or never)."""
    text = _mechanism_reason(scenario, prediction.mechanism, kernel, in_force, deadlines)
    if scenario.failure is Failure.UNREACHABLE and prediction.mechanism is not Mechanism.RECVERR:
        text += (
            "; the router's ICMP errors are soft (they change only the final errno) and each "
            "undoes one backoff (RFC 6069), which can end it a backed-off step later"
        )
    return text


def _mechanism_reason(
    scenario: Scenario,
    mechanism: Mechanism,
    kernel: KernelSettings,
    in_force: InForce,
    deadlines: Deadlines,
) -> str:
    if mechanism is Mechanism.TCP_RETRIES2:
        return (
            f"nothing bounds it but tcp_retries2={kernel.tcp_retries2}: retransmissions from an "
            f"RTO of ~0.2 s doubling to {kernel.tcp_rto_max_s:g} s, a "
            f"{retries2_budget(kernel):.1f} s budget counted from the first one"
        )
    ping = deadlines.ping
    if ping is not None and (pinged := _ping_reason(scenario, mechanism, in_force, ping)):
        return pinged
    if mechanism is Mechanism.USER_TIMEOUT:
        where = "the connect" if scenario.activity is Activity.CONNECTING else "sent data"
        return (
            f"TCP_USER_TIMEOUT ({format_duration(in_force.user_timeout_s)}) ends the "
            "retransmissions of "
            f"{where} that stays unacknowledged that long"
        )
    if mechanism is Mechanism.READ_TIMEOUT:
        return _deadline_reason("--read-timeout", deadlines.read_timeout_s)
    if mechanism is Mechanism.CONNECT_TIMEOUT:
        return _deadline_reason("--connect-timeout", deadlines.connect_timeout_s)
    if mechanism is Mechanism.RECVERR:
        return "IP_RECVERR turns the router's ICMP unreachable into an error at once"
    if mechanism in (Mechanism.KEEPALIVE, Mechanism.KEEPALIVE_USER_TIMEOUT):
        return _keepalive_reason(in_force, mechanism)
    if mechanism is Mechanism.SYN_RETRIES:
        retries = in_force.syn_retries
        source = "TCP_SYNCNT" if in_force.syn_retries_from_socket else "tcp_syn_retries"
        return (
            f"{source}={retries}: SYNs 1 s apart, then doubling, within a "
            f"{syn_budget(kernel, retries):.0f} s budget"
        )
    if scenario.failure is Failure.STALLED:
        return (
            "the peer's kernel still acknowledges every request: no retransmission timer "
            "runs and keepalive probes are answered; only --read-timeout bounds it"
        )
    if ping is not None and not ping.watches_idle:
        return (
            f"the library stops pinging after {ping.limit_without_data} pings with no data "
            "sent between them, and keepalive is off: a call that waits longer is watched by "
            "nothing"
        )
    return (
        "an idle connection sends nothing and keepalive is off: nothing notices until the "
        "next request, which then fares as busy"
    )


def _ping_reason(
    scenario: Scenario, mechanism: Mechanism, in_force: InForce, ping: Ping
) -> str | None:
    """Why the library's ping ends it, if it does: unanswered for its timeout, or by the user
    timeout on it as sent data."""
    interval, timeout = format_duration(ping.interval_s), format_duration(ping.ack_timeout_s)
    if mechanism is Mechanism.USER_TIMEOUT and scenario.activity is Activity.IDLE:
        return (
            f"the library's ping, {interval} after the last read, is sent data: "
            f"TCP_USER_TIMEOUT ({format_duration(in_force.user_timeout_s)}) ends its "
            "retransmissions"
        )
    if mechanism is not Mechanism.PING_TIMEOUT:
        return None
    answered = (
        "the peer's kernel acknowledges it, but its program never answers"
        if scenario.failure is Failure.STALLED
        else "it gets no answer"
    )
    return (
        f"the library's ping goes {interval} after the last read; {answered}, and the library "
        f"closes the connection after its ping timeout ({timeout})"
    )


def _deadline_reason(flag: str, seconds: float | None) -> str:
    return (
        f"the client's own {flag} ({format_duration(seconds or 0)}) ends the wait, whatever the "
        "kernel does"
    )


def _keepalive_reason(in_force: InForce, mechanism: Mechanism) -> str:
    keepalive = in_force.keepalive
    assert keepalive is not None  # the mechanism is keepalive's
    text = (
        f"keepalive: a first probe after {keepalive.idle_s} s idle, then one every "
        f"{keepalive.interval_s} s"
    )
    if mechanism is Mechanism.KEEPALIVE:
        return f"{text}, {keepalive.count} unanswered probes"
    return (
        f"{text}, until the first probe past TCP_USER_TIMEOUT "
        f"({format_duration(in_force.user_timeout_s)}): the probe count no longer counts"
    )


def traps(
    kernel: KernelSettings,
    tcp: TcpOptions,
    deadlines: Deadlines,
    predicted: dict[str, Prediction],
) -> list[Trap]:
    """The known traps these options fall into, each with why, in the options' own numbers,
    and its fix. ``predicted``: each scenario's prediction, by name."""
    in_force = InForce.of(tcp, kernel)
    busy, connect, idle = predicted["busy"], predicted["connect"], predicted["idle"]
    found = _keepalive_traps(kernel, tcp, in_force, busy, idle)
    found = _with_ping_traps(found, deadlines.ping)
    ut = in_force.user_timeout_s
    if 0 < ut < SHORT_USER_TIMEOUT_S:
        found.append(
            Trap(
                "user-timeout-too-short",
                f"TCP_USER_TIMEOUT {format_duration(ut)} ends the connection before a healthy "
                f"but lossy path gets over {len(LOSSY_STREAK_S)} losses in a row (its "
                f"retransmissions take {_sum_of(LOSSY_STREAK_S)} s from the minimum RTO), and "
                "cuts a peer that pauses reading (a zero window) as if it were gone",
                f"use at least ~{ENOUGH_USER_TIMEOUT_S}s: above those {sum(LOSSY_STREAK_S):g} s, "
                "with room for a slower path's longer RTO",
            )
        )
    read = deadlines.read_timeout_s
    if read is not None and read < SHORT_READ_TIMEOUT_S:
        found.append(
            Trap(
                "read-timeout-too-short",
                f"--read-timeout {format_duration(read)}: one lost segment costs at least 0.2 s "
                "(1 s before the first RTT sample), so a healthy echo can miss it",
                "use a few seconds: the slowest echo you expect plus a retransmission",
            )
        )
    if in_force.recverr and ut == 0 and read is None:
        found.append(
            Trap(
                "recverr-without-user-timeout",
                "IP_RECVERR acts only when a router answers with ICMP; a silent black hole "
                f"(a force-deleted pod) still takes {busy.describe()}",
                _user_timeout_fix(kernel, tcp, in_force, busy),
            )
        )
    if kernel.tcp_retries2 != DEFAULT_TCP_RETRIES2:
        found.append(
            Trap(
                "tcp-retries2-sysctl",
                f"this network namespace sets tcp_retries2={kernel.tcp_retries2}: in "
                "Kubernetes that is an unsafe pod sysctl, and every new network namespace "
                f"starts again from {DEFAULT_TCP_RETRIES2}",
                "set --user-timeout on the socket: it goes wherever the program goes",
            )
        )
    if connect.low_s > SLOW_CONNECT_S:
        found.append(_slow_connect(kernel, tcp, connect))
    return found


def _with_ping_traps(found: list[Trap], ping: Ping | None) -> list[Trap]:
    """gRPC's own: pings that stop, and pings its servers refuse. Its pings stand for
    keepalive (gRPC sets no SO_KEEPALIVE): where they stop, ``ping-limit`` says so in the
    library's terms, not ``user-timeout-without-keepalive`` in tcpecho's."""
    if ping is None:
        return found
    found = [trap for trap in found if trap.code != "user-timeout-without-keepalive"]
    if not ping.watches_idle:
        found.append(
            Trap(
                "ping-limit",
                f"the library sends at most {ping.limit_without_data} pings with no data "
                "between them (gRPC's grpc.http2.max_pings_without_data, 2 by default), then "
                "none: a call that waits longer for its answer is not watched",
                "set grpc.http2.max_pings_without_data=0",
            )
        )
    allowed = ping.server_min_interval_s
    if allowed is not None and ping.interval_s < allowed:
        found.append(
            Trap(
                "ping-faster-than-server-allows",
                f"a ping every {format_duration(ping.interval_s)} without data: a gRPC server "
                f"takes one at most every {format_duration(allowed)} by default and closes the "
                'connection with GOAWAY "too_many_pings" after two more',
                "on the server: grpc.keepalive_permit_without_calls=1 and "
                "grpc.http2.min_ping_interval_without_data_ms at most the client's "
                "grpc.keepalive_time_ms",
            )
        )
    return found


def _path_idle_traps(in_force: InForce, path: PathContext, deadlines: Deadlines) -> list[Trap]:
    """Keepalive (and a library's pings) that let a middlebox forget an idle flow."""
    found = []
    keepalive = in_force.keepalive
    timeout_s = path.idle_timeout_s
    ping = idle_ping(deadlines)
    pinged = ping is not None and timeout_s is not None and ping.interval_s < timeout_s
    if (
        timeout_s is not None
        and not pinged
        and (keepalive is None or keepalive.idle_s >= timeout_s)
    ):
        timeout = path.idle_timeout_named
        why = (
            "keepalive is off"
            if keepalive is None
            else f"keepalive's first probe comes after {keepalive.idle_s} s idle"
        )
        if deadlines.ping is not None:
            why += _ping_on_idle(deadlines.ping)
        fate = "answers its next packet with RST" if path.resets else "drops its next packet"
        suggested = max(1, math.floor(timeout_s / 2))
        found.append(
            Trap(
                "keepalive-exceeds-path-idle",
                f"{why}: an idle connection's flow is forgotten after {timeout}, and the path "
                f"{fate}; the connection is not noticed dead until then, or hangs at its next "
                "request",
                f"set --keepalive-idle below it, for example {suggested}s (half of it): every "
                "probe and its ACK then keep the flow"
                if deadlines.ping is None
                else f"set grpc.keepalive_time_ms below it, for example {suggested * 1000} "
                "(half of it), with grpc.keepalive_permit_without_calls=1 and "
                "grpc.http2.max_pings_without_data=0: every ping and its answer then keep the "
                "flow",
            )
        )
    return found


def _ping_on_idle(ping: Ping) -> str:
    """Why the library's ping does not keep an idle pooled connection's flow."""
    if not ping.without_calls:
        return (
            " and the library pings only while a call is in flight (gRPC's "
            "grpc.keepalive_permit_without_calls=0)"
        )
    if not ping.watches_idle:
        return f" and the library stops pinging after {ping.limit_without_data} pings"
    return f" and the library's ping comes after {format_duration(ping.interval_s)}"


def path_traps(
    kernel: KernelSettings,
    tcp: TcpOptions,
    path: PathContext,
    predicted: dict[str, Prediction],
    deadlines: Deadlines = Deadlines(),  # noqa: B008 - frozen, so one shared value is safe
) -> list[Trap]:
    """The traps the path sets for these options: keepalive (or a library's ping) that lets
    a middlebox forget an idle flow, a user timeout (or deadline) that cuts an outage the
    connection must survive, TCP options that act only on the loopback connection to a
    sidecar."""
    in_force = InForce.of(tcp, kernel)
    found = _path_idle_traps(in_force, path, deadlines)
    partition = predicted.get("partition")
    outage = path.outage_s
    if outage is not None and partition is not None and partition.outcome is PredictedOutcome.CUT:
        found.append(_cuts_outage(kernel, tcp, partition, outage))
    set_here = in_force.user_timeout_s > 0 or tcp.keepalive or in_force.recverr
    if path.via_proxy and set_here:
        found.append(
            Trap(
                "options-behind-proxy",
                "the app's TCP options (user timeout, keepalive, recverr) act on its loopback "
                "connection to the proxy in its pod, which stays healthy: they never fire when "
                "the proxy's peer vanishes",
                "set --read-timeout (the app's own deadline), and the timeouts of the proxy's "
                "upstream connections (Envoy: its cluster's TCP keepalive and idle timeout)",
            )
        )
    return found


# The scenarios whose predictions ``traps`` and ``path_traps`` read (the partition aside).
_TRAPS_READ = ("busy", "idle", "connect")


def socket_traps(
    kernel: KernelSettings, tcp: TcpOptions, path: PathContext = PathContext()
) -> list[Trap]:
    """The traps of these options on this path with no deadlines of the program's own, as
    ``explain`` names them for the same options, path and no deadlines, in its order.

    For ``tcpecho watch``, which reads a live socket's options but cannot see its program's
    deadlines: only the scenarios the traps read are predicted, so it costs a fraction of
    ``explain``."""
    deadlines = Deadlines()
    if path.outage_s is not None:  # the outage's trap reads the partition scenario
        return list(explain(kernel, tcp, deadlines, path).traps)
    predicted = {
        scenario.name: predict(kernel, tcp, scenario.failure, scenario.activity)
        for scenario in SCENARIOS
        if scenario.name in _TRAPS_READ
    }
    return traps(kernel, tcp, deadlines, predicted) + path_traps(kernel, tcp, path, predicted)


def _cuts_outage(
    kernel: KernelSettings, tcp: TcpOptions, partition: Prediction, outage_s: float
) -> Trap:
    """A user timeout (or deadline) that ends the connection before the outage heals: the
    least whole-second user timeout that lets the first retransmission after the heal
    through, as the fix."""
    outage = format_duration(outage_s)
    surviving = next(
        (
            seconds
            for seconds in range(1, int(outage_s * 8) + 2)
            if after_partition(
                kernel,
                replace(tcp, user_timeout_ms=seconds * 1000),
                Activity.ACTIVE,
                outage_s,
                Traffic(request_offset_s=0),
            ).survives
        ),
        None,
    )
    if partition.mechanism is Mechanism.READ_TIMEOUT:
        fix = "make --read-timeout longer than the outage plus the retransmission after it"
    elif surviving is not None:
        fix = (
            f"make --user-timeout at least {surviving}s: the retransmission after a {outage} "
            "heal then comes before it gives up"
        )
    else:
        fix = "no user timeout survives this outage: shorten what must be survived"
    return Trap(
        "user-timeout-cuts-outage",
        f"{partition.mechanism.description} ends a request after {partition.describe()}, "
        f"before a {outage} outage heals: a connection whose peer is still there is cut",
        fix,
    )


def _keepalive_traps(
    kernel: KernelSettings, tcp: TcpOptions, in_force: InForce, busy: Prediction, idle: Prediction
) -> list[Trap]:
    found = []
    ut = in_force.user_timeout_s
    keepalive = in_force.keepalive
    if busy.mechanism is Mechanism.TCP_RETRIES2 and keepalive is None:
        found.append(
            Trap(
                "no-bound",
                f"nothing but tcp_retries2={kernel.tcp_retries2} bounds a request the peer "
                f"never answers: {busy.describe()} (the field report's 15 m 39 s)",
                f"{_user_timeout_fix(kernel, tcp, in_force, busy)}; and keepalive for idle "
                "connections, which the user timeout does not watch",
            )
        )
    if busy.mechanism is Mechanism.TCP_RETRIES2 and keepalive is not None:
        found.append(
            Trap(
                "keepalive-without-user-timeout",
                "keepalive sends no probe while a request is unacknowledged: a busy "
                f"connection still hangs until tcp_retries2={kernel.tcp_retries2} gives up, "
                f"{busy.describe()}",
                _user_timeout_fix(kernel, tcp, in_force, busy),
            )
        )
    if ut > 0 and keepalive is None:
        found.append(
            Trap(
                "user-timeout-without-keepalive",
                "TCP_USER_TIMEOUT runs only while data is unacknowledged: a client that "
                "idles between requests finds a dead peer only at its next request",
                _keepalive_fix(kernel, tcp, ut),
            )
        )
    if keepalive is not None:
        probing = keepalive.probing_s
        if ut > probing:
            found.append(_user_timeout_past_keepalive(tcp, keepalive, idle))
        if keepalive.idle_from_namespace and keepalive.idle_s >= 600:
            found.append(
                Trap(
                    "keepalive-default-idle",
                    f"keepalive waits this namespace's tcp_keepalive_time "
                    f"({keepalive.idle_s} s) before its first probe: a dead idle peer is "
                    f"noticed only {idle.describe()} after the last data",
                    "set --keepalive-idle (and --keepalive-interval, --keepalive-count)",
                )
            )
    return found


def _slow_connect(kernel: KernelSettings, tcp: TcpOptions, connect: Prediction) -> Trap:
    fewer = replace(tcp, syn_retries=EXAMPLE_SYN_RETRIES)
    fewer_after = predict(kernel, fewer, Failure.SILENT, Activity.CONNECTING).describe()
    return Trap(
        "slow-connect",
        f"a connect to an address that never answers takes {connect.describe()}",
        f"add --connect-timeout, for example {EXAMPLE_CONNECT_TIMEOUT_S}s: a connect that works "
        f"takes one round trip and a lost SYN is sent again after {TCP_TIMEOUT_INIT_S:g} s, so "
        f"{EXAMPLE_CONNECT_TIMEOUT_S} s still allows for a few lost SYNs; or fewer SYN retries "
        f"(--syn-retries {EXAMPLE_SYN_RETRIES} gives up after {fewer_after})",
    )


def _user_timeout_past_keepalive(tcp: TcpOptions, keepalive: Keepalive, idle: Prediction) -> Trap:
    """The user timeout, not the count, ends the probing: past idle + count x interval, it
    makes a dead idle peer noticed later than the count says."""
    probing = keepalive.probing_s
    return Trap(
        "user-timeout-exceeds-keepalive",
        "with keepalive on, the kernel ends an idle connection's probing at the first probe at "
        "or past TCP_USER_TIMEOUT, not after the probe count: with "
        f"{_flag(tcp, 'user_timeout_ms')} it probes on to {idle.low_s:g} s after the last data, "
        f"{idle.low_s - probing:g} s later than the {probing} s that "
        f"{_keepalive_terms(tcp, keepalive)} would give",
        f"make --user-timeout at most {probing}s, so probing ends by then (a dead idle peer "
        f"noticed within {probing} s), or accept the idle detection at {idle.low_s:g} s",
    )


def _user_timeout_fix(
    kernel: KernelSettings, tcp: TcpOptions, in_force: InForce, busy: Prediction
) -> str:
    """Add --user-timeout: an example, what it would give, and why that much.

    30 s, well above a lossy path's streak of retransmissions; with keepalive on, no more
    than its idle + count x interval (when that is at least 10 s), past which a user
    timeout stretches the probing (``user-timeout-exceeds-keepalive``)."""
    keepalive = in_force.keepalive
    example = EXAMPLE_USER_TIMEOUT_S
    if keepalive is not None and ENOUGH_USER_TIMEOUT_S <= keepalive.probing_s < example:
        example = keepalive.probing_s
    bounded = replace(tcp, user_timeout_ms=example * 1000)
    after = predict(kernel, bounded, Failure.SILENT, Activity.ACTIVE).describe()
    text = (
        f"add --user-timeout, for example {example}s: a request the peer never answers then "
        f"fails after {after} instead of {busy.describe()}, and {example} s stays well above "
        f"the {sum(LOSSY_STREAK_S):g} s a lossy but healthy path takes to retransmit "
        f"{len(LOSSY_STREAK_S)} times in a row"
    )
    if keepalive is not None and example == keepalive.probing_s:
        text += (
            f", and no longer than keepalive's {_keepalive_terms(tcp, keepalive)} = "
            f"{keepalive.probing_s} s: a longer one would keep probing past the count"
        )
    return text


def _keepalive_fix(kernel: KernelSettings, tcp: TcpOptions, user_timeout_s: float) -> str:
    """Add keepalive: an example whose idle + count x interval reaches the user timeout, so
    the user timeout, which ends the probing too, does not stretch it past the count."""
    idle = EXAMPLE_KEEPALIVE_IDLE_S
    interval = max(EXAMPLE_KEEPALIVE_INTERVAL_S, math.ceil((user_timeout_s - idle) / MAX_COUNT))
    count = max(1, math.ceil((user_timeout_s - idle) / interval))
    example = replace(
        tcp,
        keepalive=True,  # a --no-keepalive given would refuse the tuning
        keepalive_idle_s=idle,
        keepalive_interval_s=interval,
        keepalive_count=count,
    )
    noticed = predict(kernel, example, Failure.SILENT, Activity.IDLE)
    flags = " ".join(_flag(example, field) for field in _KEEPALIVE_FIELDS)
    return (
        f"add keepalive, for example {flags}: a dead idle peer is then noticed "
        f"{noticed.low_s:g} s after the last data; keep idle + count x interval (here "
        f"{idle + count * interval} s) at least the user timeout "
        f"({format_duration(user_timeout_s)}), which also ends the probing, at the first probe "
        "at or past it"
    )


def _keepalive_terms(tcp: TcpOptions, keepalive: Keepalive) -> str:
    """``idle + count x interval`` as the user knows them: the flags they gave, the
    namespace's sysctls for the others."""
    idle = _flag(tcp, "keepalive_idle_s") or f"tcp_keepalive_time={keepalive.idle_s}"
    count = _flag(tcp, "keepalive_count") or f"tcp_keepalive_probes={keepalive.count}"
    interval = _flag(tcp, "keepalive_interval_s") or f"tcp_keepalive_intvl={keepalive.interval_s}"
    return f"{idle} + {count} x {interval}"


def _flag(tcp: TcpOptions, field: str) -> str:
    """``--keepalive-idle 10s``: the flag that gave the option, or "" when none did."""
    option = next(option for option in OPTIONS if option.field == field)
    return " ".join(option.flags(getattr(tcp, field)))


def _sum_of(steps: tuple[float, ...]) -> str:
    return f"{'+'.join(f'{step:g}' for step in steps)} = {sum(steps):g}"


# -- output -----------------------------------------------------------------------------------


def to_json(explanation: Explanation) -> dict[str, Any]:
    """``settings``, ``sysctls``, ``scenarios`` and ``warnings``, as one object."""
    return {
        "settings": {
            "flags": [*explanation.tcp.as_flags(), *explanation.deadlines.as_flags()],
            "tcp": dataclasses.asdict(explanation.tcp),
            "deadlines": dataclasses.asdict(explanation.deadlines),
        },
        "sysctls": _client_sysctls(explanation.kernel),
        "absent_sysctls": list(explanation.kernel.absent),
        "scenarios": [
            {
                "name": outcome.scenario.name,
                "description": outcome.scenario.description,
                "outcome": str(outcome.prediction.outcome),
                "detected_after_s": None
                if outcome.prediction.never or outcome.prediction.survives
                else {
                    "low": round(outcome.prediction.low_s, 3),
                    "high": round(outcome.prediction.high_s, 3),
                },
                "echo_after_s": {
                    "low": round(outcome.prediction.low_s, 3),
                    "high": round(outcome.prediction.high_s, 3),
                }
                if outcome.prediction.survives
                else None,
                "clock": outcome.prediction.clock,
                "mechanism": str(outcome.prediction.mechanism),
                "errno": outcome.prediction.errnos[0] if outcome.prediction.errnos else None,
                "reasoning": outcome.reasoning,
            }
            for outcome in explanation.outcomes
        ],
        "warnings": [dataclasses.asdict(trap) for trap in explanation.traps],
    }


def render(explanation: Explanation, width: int = 100) -> str:
    """For people: the options, the sysctls used, each scenario and why, then the traps."""
    flags = [*explanation.tcp.as_flags(), *explanation.deadlines.as_flags()]
    shown = " ".join(
        f"{key.rsplit('.', 1)[1]}={value}" for key, value in _shown_sysctls(explanation)
    )
    lines = [
        "options: " + (" ".join(flags) if flags else "none (the kernel's defaults)"),
        *textwrap.wrap(f"this network namespace: {shown}", width, subsequent_indent="  "),
        "",
        *_scenario_table(explanation.outcomes, width),
    ]
    if explanation.traps:
        lines += ["", "warnings:"]
        for trap in explanation.traps:
            lines += _wrap(f"{trap.code}: {trap.message}", width, "  ", "    ")
            lines += _wrap(f"fix: {trap.fix}", width, "    ", "      ")
    return "\n".join(lines)


_HEADERS = ("scenario", "detected after", "error", "what happens")
_GAP = "  "  # between columns: a cell as wide as its column still stands apart
_NARROWEST_DESCRIPTION = 30  # a narrower last column would be wrapped into a word a line


def _scenario_table(outcomes: tuple[Outcome, ...], width: int) -> list[str]:
    """One row per scenario, each column as wide as its widest cell (the header's included),
    so no value runs into the next; the reasoning below each row, from the second column.
    What happens, the last column, wraps within ``width``."""
    rows = [
        (
            outcome.scenario.name,
            "survives" if outcome.prediction.survives else outcome.prediction.describe(),
            outcome.prediction.errnos[0] if outcome.prediction.errnos else "-",
        )
        for outcome in outcomes
    ]
    widths = [max(len(row[i]) for row in [_HEADERS[:-1], *rows]) for i in range(len(rows[0]))]

    def leading(cells: tuple[str, ...]) -> str:
        padded = (cell.ljust(column) for cell, column in zip(cells, widths, strict=True))
        return "".join(f"{cell}{_GAP}" for cell in padded)

    lines = [leading(_HEADERS[:-1]) + _HEADERS[-1]]
    indent = " " * (widths[0] + len(_GAP))
    for outcome, row in zip(outcomes, rows, strict=True):
        start = leading(row)
        described = textwrap.wrap(
            outcome.scenario.description, max(width - len(start), _NARROWEST_DESCRIPTION)
        )
        lines.append(start + described[0])
        lines += [" " * len(start) + rest for rest in described[1:]]
        lines += _wrap(f"because {outcome.reasoning}", width, indent, indent)
    return lines


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    """Lines of ``text`` within ``width``, broken at spaces only: a flag (--keepalive-count)
    or a range (30.4-32.5 s) stays whole."""
    return textwrap.wrap(
        text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    )


def _client_sysctls(kernel: KernelSettings) -> dict[str, int]:
    """The sysctls the scenarios depend on: an orphan's budget is no client's wait."""
    sysctls = kernel.sysctls()
    del sysctls["net.ipv4.tcp_orphan_retries"]
    return sysctls


def _shown_sysctls(explanation: Explanation) -> list[tuple[str, int]]:
    absent = set(explanation.kernel.absent)
    return [
        (key, value)
        for key, value in _client_sysctls(explanation.kernel).items()
        if key not in absent
    ]
