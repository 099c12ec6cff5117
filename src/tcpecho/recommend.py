"""``tcpecho explain --recommend``: the client settings that meet a user's constraints (how soon
a dead peer must be noticed, busy and idle; how long an outage must be survived; the path's
idle timeout), each value chosen by the kernel model and checked by it, or the conflict that
makes the constraints impossible.

The search is over whole seconds, as the kernel takes keepalive's values: the longest user
timeout that still notices a busy dead peer in time (the most tolerance for a slow or lossy
path) and survives the outage; then the longest keepalive idle time under both the deadline
and the path's idle timeout (the fewest probes), with an interval and count whose probing
reaches the user timeout, so that the user timeout, not the count, ends it
(``explain``'s ``user-timeout-exceeds-keepalive``). A library that watches idle connections
with its own pings (gRPC) gets the longest ping interval under both instead of keepalive.
Every choice is checked with the same predictions ``explain`` shows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any

from tcpecho.durations import format_duration
from tcpecho.explain import ENOUGH_USER_TIMEOUT_S, MAX_COUNT, PathContext, explain
from tcpecho.model import (
    Activity,
    Failure,
    KernelSettings,
    Prediction,
    Traffic,
    after_partition,
    predict,
)
from tcpecho.settings import Deadlines, Ping
from tcpecho.tcp.options import OPTIONS, TcpOptions

# The path's idle timeout is never cut finer than this: a first probe this much before it
# still refreshes the flow if the probe's timer fires a little late.
PATH_MARGIN = 0.8
DEFAULT_KEEPALIVE_COUNT = 3


class ImpossibleError(Exception):
    """The constraints conflict; the message names the conflict."""


@dataclass(frozen=True)
class Constraints:
    detect_within_s: float
    survive_outage_s: float | None = None
    path: PathContext = PathContext()  # noqa: RUF009 - frozen, so one shared value is safe


@dataclass(frozen=True)
class Recommendation:
    constraints: Constraints
    tcp: TcpOptions
    busy: Prediction
    idle: Prediction
    outage: Prediction | None
    why: tuple[tuple[str, str], ...]  # (flag and value, why that value)
    caveats: tuple[str, ...]  # explain's warnings that the constraints leave standing
    deadlines: Deadlines = Deadlines()  # noqa: RUF009 - frozen; a library's pings, if chosen

    @property
    def first_packet_s(self) -> float:
        """When an idle connection sends its first probe (or ping) after the last data."""
        ping = self.deadlines.ping
        return ping.interval_s if ping is not None else float(self.tcp.keepalive_idle_s or 0)

    @property
    def environment(self) -> tuple[str, ...]:
        """The settings as ``tcpecho client`` takes them from its environment (a manifest)."""
        return tuple(
            f"TCPECHO_CLIENT_{flag.removeprefix('--').replace('-', '_').upper()}={value or 'true'}"
            for flag, value in flag_values(self.tcp).items()
        )


def flag_values(tcp: TcpOptions) -> dict[str, str | None]:
    """Each flag of ``tcp`` with its value (None for a switch such as ``--keepalive``)."""
    values: dict[str, str | None] = {}
    flag = None
    for part in tcp.as_flags():
        if part.startswith("--"):
            flag = part
            values[flag] = None
        elif flag is not None:
            values[flag] = part
    return values


def recommend(
    kernel: KernelSettings, constraints: Constraints, ping: Ping | None = None
) -> Recommendation:
    """The settings that meet ``constraints`` here; ``ImpossibleError`` when none can.

    ``ping``: the client library watches idle connections with its own pings, of this shape
    (how long an answer is waited for, what its servers allow), and sets no keepalive (gRPC,
    Go's HTTP/2); the interval is chosen here."""
    if ping is not None:
        return _recommend_pings(kernel, constraints, ping)
    deadline = constraints.detect_within_s
    failure: ImpossibleError | None = None
    # The longest user timeout whose idle connections keepalive can also watch in time (the
    # kernel's timers run late by a few percent, so a long one may leave no room for probes).
    for user_timeout in _user_timeouts(kernel, constraints):
        try:
            tcp, idle = _keepalive(kernel, constraints, _ut(user_timeout))
            break
        except ImpossibleError as error:
            failure = failure or error
    else:
        assert failure is not None
        raise failure
    busy = predict(kernel, tcp, Failure.SILENT, Activity.ACTIVE)
    outage = None
    if constraints.survive_outage_s is not None:
        outage = _outage(kernel, tcp, constraints.survive_outage_s)
    assert busy.high_s <= deadline
    why = _why(constraints, tcp, busy, idle)
    explanation = explain(kernel, tcp, Deadlines(), constraints.path)
    caveats = tuple(f"{trap.code}: {trap.message}" for trap in explanation.traps)
    return Recommendation(constraints, tcp, busy, idle, outage, why, caveats)


def _recommend_pings(
    kernel: KernelSettings, constraints: Constraints, shape: Ping
) -> Recommendation:
    """The shortest user timeout that survives the outage and outlasts a lossy path's streak
    of retransmissions (``explain``'s ``user-timeout-too-short``), then the longest
    whole-second ping interval that notices a dead idle peer in time (the ping, then that
    user timeout on it) and stays under the path's idle timeout: the deadline goes to the
    interval, and the fewest pings reach the server, which limits them. Pings also without
    calls and without limit, or an idle pooled connection lets its flow go and a long call
    stops being watched."""
    deadline = constraints.detect_within_s
    path_timeout = constraints.path.idle_timeout_s
    highest = math.floor(deadline) - 1
    if path_timeout is not None:
        highest = min(highest, math.floor(path_timeout * PATH_MARGIN))
    fitting = _user_timeouts(kernel, constraints)  # longest first
    enough = [seconds for seconds in reversed(fitting) if seconds >= ENOUGH_USER_TIMEOUT_S]
    for user_timeout in enough + [seconds for seconds in fitting if seconds not in enough]:
        tcp = replace(_ut(user_timeout), keepalive=False)
        for interval in range(highest, 0, -1):
            ping = replace(shape, interval_s=interval, without_calls=True, limit_without_data=None)
            deadlines = Deadlines(ping=ping)
            idle = predict(kernel, tcp, Failure.SILENT, Activity.IDLE, deadlines)
            if idle.high_s <= deadline:
                return _pinged(kernel, constraints, tcp, deadlines, idle)
    where = "" if path_timeout is None else f" and under the path's {format_duration(path_timeout)}"
    raise ImpossibleError(
        f"no ping interval notices a dead idle peer within {format_duration(deadline)}{where}"
    )


def _pinged(
    kernel: KernelSettings,
    constraints: Constraints,
    tcp: TcpOptions,
    deadlines: Deadlines,
    idle: Prediction,
) -> Recommendation:
    busy = predict(kernel, tcp, Failure.SILENT, Activity.ACTIVE, deadlines)
    outage = None
    if constraints.survive_outage_s is not None:
        outage = _outage(kernel, tcp, constraints.survive_outage_s)
    assert busy.high_s <= constraints.detect_within_s
    ping = deadlines.ping
    assert ping is not None
    deadline = format_duration(constraints.detect_within_s)
    path = constraints.path
    why = (
        (
            f"user timeout {format_duration((tcp.user_timeout_ms or 0) / 1000)}",
            f"notices a busy dead peer within {deadline} (after {busy.describe()})"
            + _surviving(constraints)
            + f", at least {ENOUGH_USER_TIMEOUT_S} s for a lossy path's retransmissions, and "
            "no longer, to leave the deadline to the ping interval",
        ),
        (
            f"ping interval {format_duration(ping.interval_s)}",
            f"the longest that notices a dead idle peer within {deadline} (after "
            f"{idle.describe()}: the ping, then the user timeout on it)"
            + (
                f" and stays under {path.idle_timeout_named}"
                if path.idle_timeout_s is not None
                else ""
            ),
        ),
        (
            "pings without calls, without limit",
            "so that an idle pooled connection keeps its flow and a call that waits long "
            "is watched throughout",
        ),
    )
    explanation = explain(kernel, tcp, deadlines, path)
    caveats = tuple(f"{trap.code}: {trap.message}" for trap in explanation.traps)
    return Recommendation(constraints, tcp, busy, idle, outage, why, caveats, deadlines)


def _surviving(constraints: Constraints) -> str:
    outage = constraints.survive_outage_s
    return "" if outage is None else f", and survives a {format_duration(outage)} outage"


def _user_timeouts(kernel: KernelSettings, constraints: Constraints) -> list[int]:
    """The whole-second user timeouts that notice a busy dead peer within the deadline and
    survive the outage, longest first."""
    deadline = constraints.detect_within_s
    fitting = [
        seconds
        for seconds in range(math.floor(deadline), 0, -1)
        if _busy(kernel, seconds).high_s <= deadline
    ]
    if not fitting:
        raise ImpossibleError(
            f"no user timeout notices a busy dead peer within {format_duration(deadline)}: "
            f"the first retransmission alone comes ~0.4 s after the request"
        )
    outage = constraints.survive_outage_s
    if outage is None:
        return fitting
    surviving = [s for s in fitting if _outage(kernel, _ut(s), outage).survives]
    if not surviving:
        least = _least_surviving(kernel, outage)
        need = "" if least is None else f"; surviving it takes a user timeout of {least}s, "
        busy = (
            ""
            if least is None
            else "which notices a dead peer only after " + (_busy(kernel, least).describe())
        )
        raise ImpossibleError(
            f"to notice a busy dead peer within {format_duration(deadline)}, the user timeout "
            f"must be at most {fitting[0]}s, and that cuts a {format_duration(outage)} outage"
            f"{need}{busy}"
        )
    return surviving


def _keepalive(
    kernel: KernelSettings, constraints: Constraints, base: TcpOptions
) -> tuple[TcpOptions, Prediction]:
    """The longest keepalive idle time under the deadline and the path's idle timeout that
    leaves room for probes: with an outage to survive, a probe after any outage that starts
    at the first probe and before the user timeout gives up; else ``DEFAULT_KEEPALIVE_COUNT``
    probes. The count makes the probing reach the user timeout, which then ends it."""
    deadline = constraints.detect_within_s
    path_timeout = constraints.path.idle_timeout_s
    outage = constraints.survive_outage_s
    user_timeout = (base.user_timeout_ms or 0) // 1000
    highest = min(math.floor(deadline), user_timeout) - 1
    if path_timeout is not None:
        highest = min(highest, math.floor(path_timeout * PATH_MARGIN))
    for idle in range(highest, 0, -1):
        room = user_timeout - idle
        if outage is not None:
            interval = room - math.ceil(outage)  # a probe lands in [idle + outage, timeout)
        else:
            interval = room // DEFAULT_KEEPALIVE_COUNT
        if interval < 1:
            continue
        if path_timeout is not None:  # a probe unanswered for longer would let the flow go
            interval = min(interval, math.floor(path_timeout * PATH_MARGIN))
        tcp = TcpOptions(
            user_timeout_ms=base.user_timeout_ms,
            keepalive=True,
            keepalive_idle_s=idle,
            keepalive_interval_s=interval,
            keepalive_count=min(MAX_COUNT, math.ceil(room / interval)),
        )
        noticed = predict(kernel, tcp, Failure.SILENT, Activity.IDLE)
        if noticed.high_s <= deadline:
            return tcp, noticed
    where = "" if path_timeout is None else f" and under the path's {format_duration(path_timeout)}"
    raise ImpossibleError(
        f"no keepalive notices a dead idle peer within {format_duration(deadline)}{where} "
        "and still probes after the outage"
    )


def _ut(seconds: int) -> TcpOptions:
    return TcpOptions(user_timeout_ms=seconds * 1000)


def _busy(kernel: KernelSettings, seconds: int) -> Prediction:
    return predict(kernel, _ut(seconds), Failure.SILENT, Activity.ACTIVE)


def _outage(kernel: KernelSettings, tcp: TcpOptions, outage_s: float) -> Prediction:
    return after_partition(kernel, tcp, Activity.ACTIVE, outage_s, Traffic(request_offset_s=0))


def _least_surviving(kernel: KernelSettings, outage_s: float) -> int | None:
    return next(
        (s for s in range(1, int(outage_s * 8) + 2) if _outage(kernel, _ut(s), outage_s).survives),
        None,
    )


def _why(
    constraints: Constraints,
    tcp: TcpOptions,
    busy: Prediction,
    idle: Prediction,
) -> tuple[tuple[str, str], ...]:
    deadline = format_duration(constraints.detect_within_s)
    flags = flag_values(tcp)
    reasons = [
        (
            f"--user-timeout {flags['--user-timeout']}",
            f"the longest that notices a busy dead peer within {deadline} (after "
            f"{busy.describe()}), the most room for a slow or lossy path" + _surviving(constraints),
        ),
        (
            f"--keepalive-idle {flags['--keepalive-idle']}",
            f"the longest first-probe time that notices a dead idle peer within {deadline} "
            f"(after {idle.describe()})"
            + (
                f" and stays under {constraints.path.idle_timeout_named}"
                if constraints.path.idle_timeout_s is not None
                else ""
            ),
        ),
        (
            f"--keepalive-interval {flags['--keepalive-interval']} "
            f"--keepalive-count {flags['--keepalive-count']}",
            "probes that reach the user timeout, which then ends them at the first probe "
            "past it"
            + (
                ", with one after any outage of that length that starts at the first probe"
                if constraints.survive_outage_s is not None
                else ""
            ),
        ),
    ]
    return tuple(reasons)


def to_json(recommendation: Recommendation) -> dict[str, Any]:
    """``constraints``, ``settings``, ``predictions`` and ``why``, as one object."""
    constraints = recommendation.constraints
    path = constraints.path
    outage = recommendation.outage
    ping = recommendation.deadlines.ping
    return {
        "constraints": {
            "detect_within_s": constraints.detect_within_s,
            "survive_outage_s": constraints.survive_outage_s,
            "path": path.preset,
            "path_idle_timeout_s": path.idle_timeout_s,
        },
        "settings": {
            "flags": list(recommendation.tcp.as_flags()),
            "environment": list(recommendation.environment),
            "tcp": {
                option.field: getattr(recommendation.tcp, option.field)
                for option in OPTIONS
                if getattr(recommendation.tcp, option.field) is not None
            },
            "ping": None if ping is None else dataclasses.asdict(ping),
        },
        "predictions": {
            "busy": _range(recommendation.busy),
            "idle": _range(recommendation.idle),
            "outage": None
            if outage is None
            else {"outcome": str(outage.outcome), **_range(outage)},
            "path_margin_s": None
            if path.idle_timeout_s is None
            else path.idle_timeout_s - recommendation.first_packet_s,
        },
        "why": [{"setting": setting, "reason": reason} for setting, reason in recommendation.why],
        "caveats": list(recommendation.caveats),
    }


def _range(prediction: Prediction) -> dict[str, Any]:
    return {
        "low_s": round(prediction.low_s, 3),
        "high_s": round(prediction.high_s, 3),
        "mechanism": str(prediction.mechanism),
    }


def render(recommendation: Recommendation) -> str:
    constraints = recommendation.constraints
    path = constraints.path
    asked = [f"detect a dead peer within {format_duration(constraints.detect_within_s)}"]
    if constraints.survive_outage_s is not None:
        asked.append(f"survive a {format_duration(constraints.survive_outage_s)} outage")
    if path.idle_timeout_s is not None:
        asked.append(f"keep flows through {path.idle_timeout_named}")
    settings = ["settings:"]
    if recommendation.deadlines.ping is None:  # a library's pings have no tcpecho flag
        settings += [
            "  " + " ".join(recommendation.tcp.as_flags()),
            "  " + " ".join(recommendation.environment),
        ]
    lines = [
        "constraints: " + ", ".join(asked),
        "",
        *settings,
        "",
        "predicted:",
        f"  busy: a dead peer noticed after {recommendation.busy.describe()}",
        f"  idle: a dead peer noticed after {recommendation.idle.describe()} from the last data",
    ]
    outage = recommendation.outage
    if outage is not None:
        through = outage.describe().removeprefix("survives: echo ")
        lines.append(
            f"  a {format_duration(constraints.survive_outage_s or 0)} outage: survived, the "
            f"first retransmission after the heal {through} after the request"
        )
    if path.idle_timeout_s is not None:
        margin = path.idle_timeout_s - recommendation.first_packet_s
        first = "probe" if recommendation.deadlines.ping is None else "ping"
        lines.append(
            f"  the path: the first {first} {format_duration(margin)} before "
            f"{path.idle_timeout_named}"
        )
    lines += ["", "why:"]
    lines += [f"  {setting}: {reason}" for setting, reason in recommendation.why]
    if recommendation.caveats:
        lines += ["", "caveats (explain's warnings these constraints leave standing):"]
        lines += [f"  {caveat}" for caveat in recommendation.caveats]
    return "\n".join(lines)
