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
from tcpecho.model import (
    FAST_S,
    Activity,
    Clock,
    Failure,
    KernelSettings,
    Mechanism,
    Prediction,
    Traffic,
    after_idle_expiry,
    after_ip_reuse,
    after_partition,
    behind_proxy,
    predict,
    stalled_reader,
)
from tcpecho.settings import Deadlines, check_duration
from tcpecho.tcp.options import TcpOptions


class Fault(StrEnum):
    """How the server side goes away."""

    FORCE_DELETE = "force-delete"
    NODE_LOSS = "node-loss"
    UNREACHABLE = "unreachable"
    KILL = "kill"
    GRACEFUL = "graceful"
    # The hangs users file most (docs/lab.md, "The field's faults"): the path, not the peer.
    IDLE_EXPIRY = "idle-expiry"
    IDLE_EXPIRY_RESET = "idle-expiry-reset"
    STALE_CONNTRACK = "stale-conntrack"
    IP_REUSE = "ip-reuse"
    PARTITION = "partition"
    STALLED_READER = "stalled-reader"
    SIDECAR = "sidecar"

    @property
    def failure(self) -> Failure:
        """What the fault looks like from the client, for ``predict``; the field's faults
        need more than that: ``expect``."""
        return _FAILURES[self]

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def peer_remains(self) -> bool:
        """Whether the peer is still there (or comes back): a failure is then a cut."""
        return self in (Fault.PARTITION, Fault.STALLED_READER)

    def activities(self, profile: Profile) -> tuple[Activity, ...]:
        """What the client does in this fault's cases: a stale conntrack entry catches the
        connect, whatever the profile's client does once connected."""
        if self is Fault.STALE_CONNTRACK:
            return (Activity.CONNECTING,)
        return profile.activities

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
    Fault.IDLE_EXPIRY: Failure.SILENT,
    Fault.IDLE_EXPIRY_RESET: Failure.CLOSED,
    Fault.STALE_CONNTRACK: Failure.SILENT,
    Fault.IP_REUSE: Failure.SILENT,
    Fault.PARTITION: Failure.SILENT,
    Fault.STALLED_READER: Failure.STALLED,
    Fault.SIDECAR: Failure.SILENT,
}

_DESCRIPTIONS = {
    Fault.FORCE_DELETE: "pod route blackholed, pod link down, server killed: its FIN is lost",
    Fault.NODE_LOSS: "everything to and from the server pod dropped (nft)",
    Fault.UNREACHABLE: "pod link removed: the node answers ICMP network unreachable",
    Fault.KILL: "server killed (SIGKILL) with the network intact: FIN/RST arrive",
    Fault.GRACEFUL: "server stopped with SIGTERM (no --catch-sigterm): it closes cleanly",
    Fault.IDLE_EXPIRY: "the node forgets a flow idle for --path-idle-timeout, then drops it",
    Fault.IDLE_EXPIRY_RESET: "the node forgets an idle flow, then answers it with RST",
    Fault.STALE_CONNTRACK: "the SYN leaves before the Service's DNAT rule: a stale entry",
    Fault.IP_REUSE: "force-delete, then a new pod takes the IP after --ip-reuse-after",
    Fault.PARTITION: "the path drops everything for --outage, then heals",
    Fault.STALLED_READER: "the server process is stopped: its kernel ACKs, it reads nothing",
    Fault.SIDECAR: "the client talks through a proxy in its pod; the server is force-deleted",
}


@dataclass(frozen=True)
class FaultTiming:
    """How long the field's faults last, and when an idle client comes back to look."""

    path_idle_timeout_s: float = 15.0  # the node forgets a flow idle this long
    # A partition heals after this. Its end falls between two retransmissions of a request
    # sent up to 1 s into it (6.5-7.2 s and 13-14.4 s after the send), and before the first
    # keepalive probe of the profiles (10 s): each case has one outcome, not two.
    outage_s: float = 9.0
    reuse_after_s: float = 3.0  # a new pod takes the vanished pod's IP after this
    # An idle client's next request comes this long after the fault's window (the idle
    # timeout, the outage): the request that shows whether the connection survived.
    next_request_after_s: float = 3.0
    # The sidecar's data timeouts (HAProxy's timeout client and server): Envoy's tcp_proxy
    # idle timeout, which Istio's sidecars run with.
    proxy_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        hour = 3600.0
        # conntrack counts its timeouts in whole seconds
        check_duration(
            "path_idle_timeout", self.path_idle_timeout_s, minimum=2.0, maximum=hour, step=1
        )
        check_duration("outage", self.outage_s, minimum=1.0, maximum=hour)
        check_duration("ip_reuse_after", self.reuse_after_s, minimum=0.5, maximum=hour)

    def window_s(self, fault: Fault) -> float | None:
        """How long after the fault the path is broken, for a fault that ends (or that a
        connection can outlive): the first echo after it shows that the connection
        survived."""
        if fault in (Fault.IDLE_EXPIRY, Fault.IDLE_EXPIRY_RESET):
            return self.path_idle_timeout_s
        if fault is Fault.PARTITION:
            return self.outage_s
        return None

    def idle_interval_s(self, fault: Fault) -> float | None:
        """An idle client's interval in this fault's cases; None: one request an hour."""
        window = self.window_s(fault)
        return None if window is None else window + self.next_request_after_s


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
    # Each request this many bytes (tcpecho's --request-size): more than the peer's buffers
    # take, a request fills the windows of a peer that stopped reading.
    request_size: int | None = None

    def client_flags(self) -> tuple[str, ...]:
        """The ``tcpecho client`` flags for these settings."""
        size = () if self.request_size is None else ("--request-size", str(self.request_size))
        return self.tcp.as_flags() + self.deadlines.as_flags() + size

    @property
    def fills_windows(self) -> bool:
        return self.request_size is not None and self.request_size >= WINDOW_FILLING_BYTES


# More than a peer's receive buffer and the sender's send buffer together can hold: Linux
# 6.x autotunes a receive buffer up to tcp_rmem's maximum, 32 MiB (seen: a stopped reader
# held a whole 16 MiB request), and a send buffer up to tcp_wmem's, 4 MiB.
WINDOW_FILLING_BYTES = 64 * 1024 * 1024


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


def expect(
    fault: Fault,
    timing: FaultTiming,
    kernel: KernelSettings,
    profile: Profile,
    activity: Activity,
    tcp: TcpOptions | None = None,
    traffic: Traffic = Traffic(),  # noqa: B008 - frozen, so one shared value is safe
    proxy_tcp: TcpOptions = TcpOptions(),  # noqa: B008 - frozen, so one shared value is safe
) -> Prediction:
    """What the model expects of ``profile``'s client in ``fault``: the options its socket
    carries (``tcp``, the profile's by default), its deadlines, and ``traffic`` (when it
    sends, its RTO); ``proxy_tcp``: the sidecar's upstream socket's options."""
    tcp = profile.tcp if tcp is None else tcp
    deadlines = profile.deadlines
    if fault in (Fault.IDLE_EXPIRY, Fault.IDLE_EXPIRY_RESET):
        return after_idle_expiry(
            kernel,
            tcp,
            activity,
            timing.path_idle_timeout_s,
            traffic,
            deadlines,
            reset=fault is Fault.IDLE_EXPIRY_RESET,
        )
    if fault is Fault.PARTITION:
        return after_partition(kernel, tcp, activity, timing.outage_s, traffic, deadlines)
    if fault is Fault.IP_REUSE:
        return after_ip_reuse(kernel, tcp, activity, timing.reuse_after_s, traffic, deadlines)
    if fault is Fault.STALLED_READER:
        return stalled_reader(kernel, tcp, activity, deadlines, profile.fills_windows)
    if fault is Fault.SIDECAR:
        return behind_proxy(kernel, proxy_tcp, activity, traffic, deadlines, timing.proxy_timeout_s)
    return predict(
        kernel,
        tcp,
        fault.failure,
        activity,
        deadlines,
        traffic.first_rto_s,
        traffic.lone_segment,
    )


class Verdict(StrEnum):
    FAST = "fast"  # noticed within a second (a FIN, a RST, a hard ICMP error)
    DETECTED = "detected"  # a mitigation the user chose ended the wait
    HANG = "hang"  # not noticed, or only by the kernel's retransmission budget
    SURVIVED = "survived"  # nothing failed, and the echo worked after the fault's window
    CUT = "cut"  # a failure, though the peer was still there or came back
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
    # The first echo after the fault's window (the heal, the idle timeout), on the clock of
    # the prediction (``measured_clock``); for a connect that failed, the first echo of the
    # client's next connection, from the fault.
    recovered_s: float | None = None

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
    if measured is None and result.recovered_s is not None:
        return Verdict.SURVIVED, prediction.survives and prediction.contains(result.recovered_s)
    detected = measured is not None
    # A program's error is its own business: the lab sees only the socket, and no errno.
    errno_fits = not detected or result.errno is None or result.errno in prediction.errnos
    matches = prediction.contains(measured) and errno_fits and not prediction.survives
    if measured is None and result.observed_s is not None and result.observed_s < prediction.low_s:
        matches = True  # watched for less than the model's earliest time: not contradicted
    if measured is None:
        return Verdict.HANG, matches
    if result.case.fault.peer_remains:
        return Verdict.CUT, matches
    if measured < FAST_S:
        return Verdict.FAST, matches
    if prediction.mechanism in (Mechanism.TCP_RETRIES2, Mechanism.SYN_RETRIES):
        return Verdict.HANG, matches  # only the kernel's retransmission budget ended it
    return Verdict.DETECTED, matches
