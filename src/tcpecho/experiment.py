"""The experiment: which fault, which client settings, what the model expects, what was measured,
and the verdict. The lab, the cluster run and the tests share it.

A ``Case`` is a fault, a client ``Profile`` (its ``TcpOptions`` and ``Deadlines``, plain
data) and an activity. A ``Result`` holds the model's ``Prediction`` for the case and the
measurement taken from the client's ``connection_failed`` event (``record``); ``judge``
turns the two into a ``Verdict`` and says whether the measurement fits the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tcpecho.events import ConnectionFailed
from tcpecho.model import FAST_S, Activity, Clock, Failure, Mechanism, Prediction
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions


class Fault(StrEnum):
    """How the server side goes away."""

    FORCE_DELETE = "force-delete"
    NODE_LOSS = "node-loss"
    UNREACHABLE = "unreachable"
    KILL = "kill"
    GRACEFUL = "graceful"

    @property
    def failure(self) -> Failure:
        """What the fault looks like from the client: the kernel model's input."""
        return _FAILURES[self]

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def server_catches_sigterm(self) -> bool:
        """The original reproduction's server ignores SIGTERM; the graceful case must not."""
        return self is not Fault.GRACEFUL


_FAILURES = {
    Fault.FORCE_DELETE: Failure.SILENT,
    Fault.NODE_LOSS: Failure.SILENT,
    Fault.UNREACHABLE: Failure.UNREACHABLE,
    Fault.KILL: Failure.CLOSED,
    Fault.GRACEFUL: Failure.CLOSED,
}

_DESCRIPTIONS = {
    Fault.FORCE_DELETE: "pod route blackholed, pod link down, server killed: its FIN is lost",
    Fault.NODE_LOSS: "everything to and from the server pod dropped (nft)",
    Fault.UNREACHABLE: "pod link removed: the node answers ICMP network unreachable",
    Fault.KILL: "server killed (SIGKILL) with the network intact: FIN/RST arrive",
    Fault.GRACEFUL: "server stopped with SIGTERM (no --catch-sigterm): it closes cleanly",
}


@dataclass(frozen=True)
class Profile:
    """A named set of client settings to compare: plain data, rendered to flags when a
    client is started or a manifest written. With ``command``, the client is any program
    instead of ``tcpecho client``: its settings are what its socket is found to carry."""

    name: str
    tcp: TcpOptions = field(default_factory=TcpOptions)
    deadlines: Deadlines = field(default_factory=Deadlines)
    # Active: a request waits for its echo when the peer vanishes. Idle: nothing is sent.
    activities: tuple[Activity, ...] = (Activity.ACTIVE, Activity.IDLE)
    command: str | None = None  # a shell command line, {host} and {port} filled in
    # A tcpecho client started by this argv instead of the lab's own (a pod's launch, from
    # cluster/pods.py): ``tcp`` and ``deadlines`` are what its own configuration gives it,
    # its interval is its own, and its JSON log is read as the lab's client's.
    client_argv: tuple[str, ...] | None = None
    # Its own server instead of the run's, a shell command line: a database, a broker, or
    # the server pod's launch (cluster/pods.py).
    server_command: str | None = None
    # For a program: the fault waits until its connection has carried nothing new for this
    # long, so an idle program's setup is over (``deadlines``: its own timers, if any).
    quiet_s: float = 0.0
    # For a program: watched at most this long after the fault (a prediction of hours, as
    # with the kernel's keepalive defaults, is then reported as not reached), else as the
    # model's range asks.
    watch_s: float | None = None

    def client_flags(self) -> tuple[str, ...]:
        """The ``tcpecho client`` flags for these settings."""
        return self.tcp.as_flags() + self.deadlines.as_flags()


@dataclass(frozen=True)
class Case:
    fault: Fault
    profile: Profile
    activity: Activity
    number: int = 0  # its place in a run

    @property
    def name(self) -> str:
        if self.profile.command is not None:  # a program is busy or idle as it pleases
            return f"{self.fault}/{self.profile.name}"
        return f"{self.fault}/{self.profile.name}/{self.activity}"


class Verdict(StrEnum):
    FAST = "fast"  # noticed within a second (a FIN, a RST, a hard ICMP error)
    DETECTED = "detected"  # a mitigation the user chose ended the wait
    HANG = "hang"  # not noticed, or only by the kernel's retransmission budget
    ERROR = "error"  # the case could not be run
    INTERRUPTED = "interrupted"  # a stop signal ended the run before the case did


@dataclass
class Result:
    """One case run: the expectation, the measurement and what the run saw on the way."""

    case: Case
    prediction: Prediction | None = None
    measured_s: float | None = None  # None: the failure was not noticed
    measured_clock: Clock | None = None
    errno: str | None = None
    retransmissions: int | None = None
    observed_s: float | None = None  # how long the case was watched after the fault
    error: str | None = None  # why the case could not be run
    interrupted: bool = False  # a stop signal ended the run before the case had its outcome
    # What the lab also records (the cluster run leaves them empty).
    sysctls: dict[str, int] = field(default_factory=dict)
    quick: bool = False  # left to the retransmission budget, which --quick shortened: *
    fault_at: float | None = None  # wall clock, to set beside the logs' timestamps
    conntrack: list[str] = field(default_factory=list)
    client_events: list[dict[str, Any]] = field(default_factory=list)
    server_events: list[dict[str, Any]] = field(default_factory=list)
    # For a program's case: what the kernel showed of it (the lab watches the socket).
    observed_activity: Activity | None = None  # what the program was doing at the fault
    options: dict[str, Any] | None = None  # the options its socket carried
    exit_status: int | None = None  # the program's, when it exited during the case
    exited_after_s: float | None = None  # from the fault

    @property
    def activity(self) -> Activity:
        """What the client was doing when the peer vanished: planned, or seen."""
        return self.observed_activity or self.case.activity

    def record(self, failed: ConnectionFailed, since_fault_s: float | None = None) -> None:
        """Take the measurement from the client's ``connection_failed``, on the clock the
        prediction names; from the fault itself when that clock has no value."""
        self.errno = failed.errno
        if failed.tcp_info is not None and self.retransmissions is None:
            self.retransmissions = failed.tcp_info.total_retrans
        clocks: dict[Clock, float | None] = {
            "request": failed.detection_s,
            "last-data": failed.since_last_response_s,
            "fault": since_fault_s,
        }
        wanted: Clock = self.prediction.clock if self.prediction is not None else "request"
        for clock in (wanted, "fault", "request", "last-data"):
            if clocks[clock] is not None:
                self.measured_s, self.measured_clock = clocks[clock], clock
                return

    @property
    def verdict(self) -> Verdict:
        return judge(self)[0]

    @property
    def matches(self) -> bool:
        """Whether the measurement lies in the predicted range, with a predicted errno."""
        return judge(self)[1]


def judge(result: Result) -> tuple[Verdict, bool]:
    """The verdict on ``result``, and whether it matches the model's prediction."""
    prediction = result.prediction
    if result.interrupted:
        return Verdict.INTERRUPTED, False
    if result.error is not None or prediction is None:
        return Verdict.ERROR, False
    measured = result.measured_s
    detected = measured is not None
    # A program's error is its own business: the lab sees only the socket, and no errno.
    errno_fits = not detected or result.errno is None or result.errno in prediction.errnos
    matches = prediction.contains(measured) and errno_fits
    if measured is None and result.observed_s is not None and result.observed_s < prediction.low_s:
        matches = True  # watched for less than the model's earliest time: not contradicted
    if measured is None:
        return Verdict.HANG, matches
    if measured < FAST_S:
        return Verdict.FAST, matches
    if prediction.mechanism is Mechanism.TCP_RETRIES2:
        return Verdict.HANG, matches  # only the kernel's retransmission budget ended it
    return Verdict.DETECTED, matches
