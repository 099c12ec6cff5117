"""Every log event tcpecho emits: its name, its level and its fields, and how a line is read back.

The server and the client emit through ``emit``, so each event has exactly the fields its
class declares; the lab, the cluster run and the tests read JSON lines back with
``parse_line`` into the same classes. The reference (docs/events.md) lists the same events,
and a test holds the two together.

Names of failures that are not errno names (the client's own deadlines and checks) are
declared here too: with the errno names (``tcp.names``) they are everything
``connection_failed`` can report.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tcpecho.model import Prediction
from tcpecho.tcp.info import TcpInfo
from tcpecho.tcp.options import EffectiveOptions

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

Level = Literal["debug", "info", "warning", "error"]
Phase = Literal["resolve", "connect", "request", "idle"]

# connection_failed's errno, when the failure is the client's own finding.
READ_TIMEOUT = "READ_TIMEOUT"  # no echo within --read-timeout
CONNECT_TIMEOUT = "CONNECT_TIMEOUT"  # no connection within --connect-timeout
MISMATCH = "MISMATCH"  # the echo differs from the request
UNEXPECTED_DATA = "UNEXPECTED_DATA"  # the server sent bytes no request asked for
CLIENT_FAILURES = (READ_TIMEOUT, CONNECT_TIMEOUT, MISMATCH, UNEXPECTED_DATA)


class Event:
    """A log event: a frozen dataclass whose fields are the line's fields."""

    name: ClassVar[str]
    level: ClassVar[Level] = "info"

    def severity(self) -> Level:
        """The level this line is logged at (a class's level, unless it depends on values)."""
        return self.level

    def fields(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            values[name] = value.as_dict() if hasattr(value, "as_dict") else value
        return values


_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _field_names(event_class: type[Event]) -> tuple[str, ...]:
    # Looked up once per class: the server emits two events per connection, and
    # dataclasses.fields() each time was a measurable part of its accept path.
    names = _FIELD_NAMES.get(event_class)
    if names is None:
        fields = dataclasses.fields(event_class)  # type: ignore[arg-type]
        names = _FIELD_NAMES[event_class] = tuple(field.name for field in fields)
    return names


def emit(log: FilteringBoundLogger, event: Event) -> None:
    """Log ``event`` at its level, with its fields."""
    getattr(log, event.severity())(event.name, **event.fields())


# -- the server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStarted(Event):
    name = "server_started"
    addresses: list[str]
    pid: int
    max_open_files: int
    backlog: int
    loop: str
    catch_sigterm: bool
    options: EffectiveOptions


@dataclass(frozen=True)
class ServerFailed(Event):
    name = "server_failed"
    level = "error"
    host: str
    port: int
    errno: str
    error: str


@dataclass(frozen=True)
class ConnectionAccepted(Event):
    name = "connection_accepted"
    peer: str
    local: str
    options: EffectiveOptions | None  # what the accepted socket really carries
    connections: int


@dataclass(frozen=True)
class ConnectionClosed(Event):
    name = "connection_closed"
    peer: str
    bytes_echoed: int
    duration_s: float
    error: str | None
    connections: int


@dataclass(frozen=True)
class ConnectionRejected(Event):
    name = "connection_rejected"
    level = "warning"
    peer: str
    connections: int  # open ones, none of which is touched
    max_connections: int


@dataclass(frozen=True)
class ConnectionIdle(Event):
    name = "connection_idle"
    peer: str
    idle_s: float  # since the connection last echoed a byte


@dataclass(frozen=True)
class DescriptorsExhausted(Event):
    name = "descriptors_exhausted"
    level = "warning"
    max_open_files: int
    connections: int  # open ones


@dataclass(frozen=True)
class DescriptorsAvailable(Event):
    name = "descriptors_available"
    connections: int
    exhausted_s: float  # since descriptors_exhausted


@dataclass(frozen=True)
class SignalIgnored(Event):
    name = "signal_ignored"
    level = "warning"
    signal: str
    reason: str


@dataclass(frozen=True)
class ShutdownStarted(Event):
    name = "shutdown_started"
    signal: str
    connections: int


@dataclass(frozen=True)
class ShutdownForced(Event):
    name = "shutdown_forced"
    level = "warning"
    signal: str
    connections: int  # cut at once


@dataclass(frozen=True)
class ServerStopped(Event):
    name = "server_stopped"
    duration_s: float
    aborted_connections: int


@dataclass(frozen=True)
class WorkersStarted(Event):
    name = "workers_started"
    addresses: list[str]
    workers: dict[str, int]  # worker number -> pid
    max_open_files: int


@dataclass(frozen=True)
class WorkerExited(Event):
    name = "worker_exited"
    worker: int
    pid: int
    exit_code: int
    expected: bool  # a worker told to stop, stopping with 0

    def severity(self) -> Level:
        return "info" if self.expected else "error"


@dataclass(frozen=True)
class WorkerFailed(Event):
    name = "worker_failed"
    level = "error"
    error: str


# -- the metrics endpoint (server and client, --metrics-port) --------------------------------


@dataclass(frozen=True)
class MetricsStarted(Event):
    name = "metrics_started"
    addresses: list[str]  # where /metrics is served, one per listening socket


@dataclass(frozen=True)
class MetricsFailed(Event):
    """The metrics port could not be listened on; the process exits 1, as for server_failed."""

    name = "metrics_failed"
    level = "error"
    host: str
    port: int
    errno: str
    error: str


# -- the node agent (watch --all-namespaces --metrics-port) ------------------------------------


@dataclass(frozen=True)
class AgentStarted(Event):
    """The node agent serves /metrics (metrics_started came first) and takes its snapshots."""

    name = "agent_started"
    pid: int
    interval_s: float  # between the starts of two snapshots
    service_cidrs: list[str]  # the Services' ranges: a peer in one is labelled peer="service"
    loop: str


@dataclass(frozen=True)
class SnapshotFailed(Event):
    """A snapshot raised: counted, the last one's metrics stay, the next is taken on time.
    Logged for the 1st, 2nd, 4th, 8th, ... failure in a row, so a lasting one stays quiet."""

    name = "snapshot_failed"
    level = "warning"
    error: str  # the exception, as Python shows it (repr)
    failures: int  # in a row, this one included
    duration_s: float  # how long the failed snapshot ran


@dataclass(frozen=True)
class SnapshotRecovered(Event):
    name = "snapshot_recovered"
    failures: int  # in a row before this snapshot
    failing_s: float  # since the first of them started


@dataclass(frozen=True)
class MetricsPartFailed(Event):
    """A part of the node's metrics could not be built from a snapshot: it is left out of the
    scrapes, the others are served. Logged once per part and run; counted every time."""

    name = "metrics_part_failed"
    level = "error"
    part: str  # namespaces, connections, stuck or at_risk
    error: str


@dataclass(frozen=True)
class AgentStopped(Event):
    name = "agent_stopped"
    signal: str
    snapshots: int  # taken whole since the start
    failures: int  # snapshots that failed since the start
    duration_s: float  # since the start


# -- the client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """When the kernel model expects a vanished peer to be noticed, for one situation."""

    low_s: float | None  # None: never
    high_s: float | None
    limited_by: str  # model.Mechanism: tcp_retries2, user_timeout, read_timeout, keepalive, ...

    @classmethod
    def of(cls, prediction: Prediction) -> Expected:
        never = prediction.never
        return cls(
            low_s=None if never else round(prediction.low_s, 3),
            high_s=None if never else round(prediction.high_s, 3),
            limited_by=str(prediction.mechanism),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ClientStarted(Event):
    name = "client_started"
    server: str
    port: int
    interval_s: float
    count: int
    retries: int
    loop: str


@dataclass(frozen=True)
class Connecting(Event):
    name = "connecting"
    server: str
    port: int
    attempt: int


@dataclass(frozen=True)
class Connected(Event):
    name = "connected"
    local: str
    peer: str
    connect_s: float
    options: EffectiveOptions
    # From the send of a request the peer never answers, under the options in effect and
    # this namespace's sysctls; and from the last data, for a connection that idles.
    expected_busy: Expected
    expected_idle: Expected


@dataclass(frozen=True)
class RequestSent(Event):
    name = "request_sent"
    seq: int
    bytes: int


@dataclass(frozen=True)
class ResponseReceived(Event):
    name = "response_received"
    seq: int
    rtt_ms: float
    rto_ms: float | None  # the kernel's retransmission timeout after this echo


@dataclass(frozen=True)
class WaitingForResponse(Event):
    """A request unanswered for longer than --tcp-info-interval: what the kernel is doing."""

    name = "waiting_for_response"
    level = "warning"
    seq: int
    waiting_s: float  # since the send
    tcp_info: TcpInfo
    gives_up_after_s: float | None  # from the send, as the model expects; None: never
    gives_up_in_s: float | None  # what is left of it
    limited_by: str  # tcp_retries2, user_timeout or read_timeout


@dataclass(frozen=True)
class ConnectionFailed(Event):
    name = "connection_failed"
    level = "error"
    phase: Phase
    errno: str  # an errno name (ETIMEDOUT), EOF, EAI_*, or one of CLIENT_FAILURES
    error: str
    seq: int | None
    # From the unanswered send (or the start of the connect) to the failure; None when
    # nothing was waiting for an answer (idle, or a name that did not resolve).
    detection_s: float | None
    since_last_response_s: float | None
    tcp_info: TcpInfo | None


@dataclass(frozen=True)
class Reconnecting(Event):
    name = "reconnecting"
    level = "warning"
    attempt: int
    retries: int
    delay_s: float


@dataclass(frozen=True)
class Stopping(Event):
    name = "stopping"
    signal: str


@dataclass(frozen=True)
class Summary(Event):
    name = "summary"
    sent: int
    received: int
    failures: int
    reconnects: int
    longest_detection_s: float | None
    unanswered_seq: int | None  # a request still waiting for its echo at the stop
    unanswered_for_s: float | None  # and since when
    stopped_by: str | None
    exit_code: int


@dataclass(frozen=True)
class LogLinesDropped(Event):
    """Lines that stdout could not take (nobody reading it, full, closed), said once lines get
    through again; the server and the client never wait for their log's reader."""

    name = "log_lines_dropped"
    level = "warning"
    dropped: int  # since the last line that got through
    dropped_total: int  # since the start


def report_lines_dropped(log: FilteringBoundLogger, dropped: int, dropped_total: int) -> None:
    """``log_lines_dropped``: the reporter the commands hand ``logs.configure``, which calls it
    once lines get through again (``logs`` stands below the events and names none)."""
    emit(log, LogLinesDropped(dropped=dropped, dropped_total=dropped_total))


EVENTS: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        ServerStarted,
        ServerFailed,
        ConnectionAccepted,
        ConnectionClosed,
        ConnectionRejected,
        ConnectionIdle,
        DescriptorsExhausted,
        DescriptorsAvailable,
        LogLinesDropped,
        SignalIgnored,
        ShutdownStarted,
        ShutdownForced,
        ServerStopped,
        WorkersStarted,
        WorkerExited,
        WorkerFailed,
        MetricsStarted,
        MetricsFailed,
        AgentStarted,
        SnapshotFailed,
        SnapshotRecovered,
        MetricsPartFailed,
        AgentStopped,
        ClientStarted,
        Connecting,
        Connected,
        RequestSent,
        ResponseReceived,
        WaitingForResponse,
        ConnectionFailed,
        Reconnecting,
        Stopping,
        Summary,
    )
}

# -- reading lines back ------------------------------------------------------------------------

_LINE_KEYS = ("timestamp", "level", "event")


@dataclass(frozen=True)
class Logged:
    """One JSON log line read back: the event, when it was logged, and what was bound."""

    event: Event
    timestamp: float  # seconds since the epoch, as time.time()
    context: dict[str, Any]  # fields bound to the logger: connection, worker
    raw: dict[str, Any]  # the line as it was, for reports that keep it


def parse_line(line: str | bytes) -> Logged | None:
    """A tcpecho JSON log line as its event; None for anything else (kubectl's own words,
    a console line). A line that names a tcpecho event but lacks its fields is a
    ``ValueError``: the writer and the reader disagree, and that must not pass unseen."""
    try:
        raw = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict):
        return None
    cls = EVENTS.get(str(raw.get("event")))
    if cls is None or "timestamp" not in raw:
        return None
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {key: raw[key] for key in names if key in raw}
    for key, nested in _nested_types(cls).items():
        if isinstance(values.get(key), dict):
            values[key] = _nested(nested, values[key])
    try:
        event = cls(**values)
    except TypeError as error:
        raise ValueError(f"a {cls.name} line without its fields: {error}") from None
    context = {k: v for k, v in raw.items() if k not in names and k not in _LINE_KEYS}
    return Logged(event, _epoch(raw["timestamp"]), context, raw)


_NESTED_TYPES: dict[str, dict[str, type[Any]]] = {}


def _nested_types(cls: type[Event]) -> dict[str, type[Any]]:
    """The fields of ``cls`` that hold a dataclass (TcpInfo, EffectiveOptions), by name."""
    if cls.name not in _NESTED_TYPES:
        nested = {}
        for name, hint in typing.get_type_hints(cls).items():
            for candidate in typing.get_args(hint) or (hint,):
                if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
                    nested[name] = candidate
        _NESTED_TYPES[cls.name] = nested
    return _NESTED_TYPES[cls.name]


def _nested(cls: type[Any], values: dict[str, Any]) -> Any:
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in names})


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
