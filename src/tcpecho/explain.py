"""``tcpecho explain``: what a set of client options will and will not cover, before anything runs.

For each scenario (a peer that vanishes while a request is in flight, or while the
connection idles, a router answering ICMP unreachable, a connect that is never answered, a
peer that is alive but stopped reading) it asks the kernel model, with this network
namespace's sysctls, when the client would notice, and says why in one line. The same model
drives the lab's expectations and the client's live view, so the three cannot disagree.
It also names the known traps in the options, each with its fix.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass
from typing import Any

from tcpecho.durations import format_duration
from tcpecho.model import (
    Activity,
    Failure,
    InForce,
    KernelSettings,
    Mechanism,
    Prediction,
    predict,
    retries2_budget,
    syn_budget,
)
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions

DEFAULT_TCP_RETRIES2 = KernelSettings().tcp_retries2
SHORT_USER_TIMEOUT_S = 5.0  # a few lost segments in a row (0.2+0.4+0.8+1.6 s) come near it
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


def explain(kernel: KernelSettings, tcp: TcpOptions, deadlines: Deadlines) -> Explanation:
    """Every scenario's expected detection with these options, and the traps in them."""
    in_force = InForce.of(tcp, kernel)
    outcomes = tuple(
        Outcome(scenario, prediction, _reasoning(scenario, prediction, kernel, in_force, deadlines))
        for scenario in SCENARIOS
        for prediction in [predict(kernel, tcp, scenario.failure, scenario.activity, deadlines)]
    )
    busy = next(outcome.prediction for outcome in outcomes if outcome.scenario.name == "busy")
    connect = next(o.prediction for o in outcomes if o.scenario.name == "connect")
    return Explanation(
        tcp, deadlines, kernel, outcomes, tuple(traps(kernel, in_force, deadlines, busy, connect))
    )


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
    return (
        "an idle connection sends nothing and keepalive is off: nothing notices until the "
        "next request, which then fares as busy"
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
    in_force: InForce,
    deadlines: Deadlines,
    busy: Prediction,
    connect: Prediction,
) -> list[Trap]:
    """The known traps these options fall into, each with its fix."""
    found = _keepalive_traps(in_force, busy)
    ut = in_force.user_timeout_s
    if 0 < ut < SHORT_USER_TIMEOUT_S:
        found.append(
            Trap(
                "user-timeout-too-short",
                f"TCP_USER_TIMEOUT {format_duration(ut)} cuts a healthy but lossy path (a few lost "
                "segments in a row take 0.2+0.4+0.8+1.6 s) and a peer that pauses reading "
                "(a zero window), as if the peer were gone",
                "use at least ~10s, well above the path's worst streak of retransmissions",
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
                "add --user-timeout",
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
        found.append(
            Trap(
                "slow-connect",
                f"a connect to an address that never answers takes {connect.describe()}",
                "add --connect-timeout (for example 5s) or --syn-retries",
            )
        )
    return found


def _keepalive_traps(in_force: InForce, busy: Prediction) -> list[Trap]:
    found = []
    ut = in_force.user_timeout_s
    keepalive = in_force.keepalive
    if busy.mechanism is Mechanism.TCP_RETRIES2 and keepalive is None:
        found.append(
            Trap(
                "no-bound",
                f"nothing but tcp_retries2 bounds a request the peer never answers: "
                f"{busy.describe()} (the field report's 15 m 39 s)",
                "add --user-timeout (for example 30s), and keepalive for idle connections",
            )
        )
    if busy.mechanism is Mechanism.TCP_RETRIES2 and keepalive is not None:
        found.append(
            Trap(
                "keepalive-without-user-timeout",
                "keepalive sends no probe while a request is unacknowledged: a busy "
                f"connection still hangs {busy.describe()}",
                "add --user-timeout (for example 30s)",
            )
        )
    if ut > 0 and keepalive is None:
        found.append(
            Trap(
                "user-timeout-without-keepalive",
                "TCP_USER_TIMEOUT runs only while data is unacknowledged: a client that "
                "idles between requests finds a dead peer only at its next request",
                "add --keepalive-idle, --keepalive-interval and --keepalive-count",
            )
        )
    if keepalive is not None:
        probing = keepalive.probing_s
        if ut > probing:
            found.append(
                Trap(
                    "user-timeout-exceeds-keepalive",
                    f"TCP_USER_TIMEOUT {format_duration(ut)} is longer than keepalive's idle + "
                    f"interval x count = {probing} s: it overrides the count, so probing goes "
                    f"on until the first probe past {format_duration(ut)}",
                    f"make --user-timeout at most {probing}s, or accept the longer idle detection",
                )
            )
        if keepalive.idle_from_namespace and keepalive.idle_s >= 600:
            found.append(
                Trap(
                    "keepalive-default-idle",
                    f"keepalive waits this namespace's tcp_keepalive_time "
                    f"({keepalive.idle_s} s) before its first probe",
                    "set --keepalive-idle (and --keepalive-interval, --keepalive-count)",
                )
            )
    return found


# -- output -----------------------------------------------------------------------------------


def to_json(explanation: Explanation) -> dict[str, Any]:
    """``settings``, ``sysctls``, ``scenarios`` and ``warnings``, as one object."""
    return {
        "settings": {
            "flags": [*explanation.tcp.as_flags(), *explanation.deadlines.as_flags()],
            "tcp": dataclasses.asdict(explanation.tcp),
            "deadlines": dataclasses.asdict(explanation.deadlines),
        },
        "sysctls": explanation.kernel.sysctls(),
        "absent_sysctls": list(explanation.kernel.absent),
        "scenarios": [
            {
                "name": outcome.scenario.name,
                "description": outcome.scenario.description,
                "detected_after_s": None
                if outcome.prediction.never
                else {
                    "low": round(outcome.prediction.low_s, 3),
                    "high": round(outcome.prediction.high_s, 3),
                },
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
            lines += textwrap.wrap(
                f"{trap.code}: {trap.message}", width, initial_indent="  ", subsequent_indent="    "
            )
            lines += textwrap.wrap(
                f"fix: {trap.fix}", width, initial_indent="    ", subsequent_indent="      "
            )
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
            outcome.prediction.describe(),
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
        lines += textwrap.wrap(
            f"because {outcome.reasoning}", width, initial_indent=indent, subsequent_indent=indent
        )
    return lines


def _shown_sysctls(explanation: Explanation) -> list[tuple[str, int]]:
    absent = set(explanation.kernel.absent)
    return [
        (key, value) for key, value in explanation.kernel.sysctls().items() if key not in absent
    ]
