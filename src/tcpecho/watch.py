"""``tcpecho watch``: every TCP connection of this network namespace, what the kernel is doing
about it, and when the kernel will give up on it.

This module owns the watch's settings (``WatchConfig``), one look at the connections
(``snapshot``: the kernel's socket diagnostics, the owning process, the program's own socket
options, and the kernel model's prediction for each), the way a snapshot is shown (a table,
or one JSON object per line) and the loop that repeats it (``run``).

The question it answers is a user's: "is my program stuck in the 15-minute hang right now,
and when will the kernel give up?". A connection with unacknowledged data the kernel keeps
retransmitting is the model's busy connection to a silent peer; one whose keepalive probes
go unanswered is its idle one. A healthy connection gets the answer for a request lost now.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tcpecho.durations import format_seconds
from tcpecho.model import (
    Activity,
    Failure,
    KernelSettings,
    Prediction,
    first_rto_s,
    predict,
    stuck_for_s,
)
from tcpecho.process import stop_signals_held
from tcpecho.settings import SettingError, check_duration, check_range
from tcpecho.streams import STDOUT, Output
from tcpecho.tcp import diag, names
from tcpecho.tcp.diag import Connection, Owner
from tcpecho.tcp.options import EffectiveOptions, TcpOptions

MIN_INTERVAL_S = 0.1  # below this the watch would mostly watch itself scanning /proc
PORT_MAX = 65535
COMMAND_CHARS = 200  # the JSON's command line; the table shows a shorter form

# States in which the connection can have data in flight that the peer must acknowledge.
_SENDING_STATES = frozenset({"ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "CLOSING", "LAST_ACK"})


@dataclass(frozen=True)
class WatchConfig:
    """What to watch and how to show it; refuses what it cannot take with ``SettingError``."""

    peer_host: str | None = None  # only connections to this host (an address or a name)
    peer_port: int | None = None  # ... and this port of it
    port: int | None = None  # only connections with this local or peer port
    pid: int | None = None  # only connections owned by this process
    stuck: bool = False  # only connections the kernel is retransmitting or probing on
    interval_s: float = 1.0
    once: bool = False
    json: bool = False

    def __post_init__(self) -> None:
        if self.peer_host is not None and not self.peer_host.strip():
            raise SettingError("peer", "the host is empty")
        if self.peer_port is not None and self.peer_host is None:
            raise SettingError("peer", "a peer port needs a peer host")
        check_range("peer", self.peer_port, 1, PORT_MAX)
        check_range("port", self.port, 1, PORT_MAX)
        check_range("pid", self.pid, 1)
        check_duration("interval", self.interval_s, minimum=MIN_INTERVAL_S, step=0.001)


@dataclass(frozen=True)
class Watched:
    """One connection, its owner and options, and what the kernel model makes of it.

    ``stuck_for_s`` and ``prediction`` run on the same clock (the prediction's ``clock``):
    from the first unacknowledged send (or the connect), or, for keepalive probing, from the
    last data received."""

    connection: Connection
    owner: Owner | None
    options: EffectiveOptions | None  # None: the program's own options could not be read
    prediction: Prediction | None  # None: nothing this state waits for is modelled
    stuck_for_s: float | None

    @property
    def gives_up_after_s(self) -> float | None:
        """The earliest time the model expects the kernel to end the wait; None: never."""
        if self.prediction is None or self.prediction.never:
            return None
        return round(self.prediction.low_s, 3)

    @property
    def gives_up_in_s(self) -> float | None:
        """What is left of the wait, for a stuck connection; None for a healthy one."""
        after = self.gives_up_after_s
        if after is None or self.stuck_for_s is None:
            return None
        return round(max(0.0, after - self.stuck_for_s), 3)

    @property
    def limited_by(self) -> str | None:
        return None if self.prediction is None else str(self.prediction.mechanism)

    @property
    def options_source(self) -> str:
        return "unknown" if self.options is None else "socket"

    @property
    def assumption(self) -> str | None:
        """What the prediction assumed in place of options it could not read, and how to get
        the real ones; None when the options are the socket's own."""
        if self.options is not None:
            return None
        keepalive = (
            "keepalive on with this namespace's tcp_keepalive_* sysctls (the kernel's keepalive "
            "timer runs)"
            if self.connection.timer == "keepalive"
            else "keepalive off (the kernel shows no keepalive timer)"
        )
        assumed = f"the kernel's defaults: no TCP_USER_TIMEOUT, {keepalive}"
        if self.connection.inode == 0:
            return (
                f"{assumed}. No program holds this socket any more (closed, or TIME_WAIT): "
                "the kernel finishes it alone"
            )
        if self.owner is None:
            return (
                f"{assumed}. No process shows this socket in /proc/PID/fd: run as the "
                "program's user, or as root with CAP_SYS_PTRACE over it, to see the owner "
                "and read its own options"
            )
        return (
            f"{assumed}. Reading the options of pid {self.owner.pid} was refused "
            "(pidfd_getfd): run as root or with CAP_SYS_PTRACE over the process "
            "(a container runtime's seccomp profile also wants CAP_SYS_PTRACE)"
        )

    def as_dict(self) -> dict[str, Any]:
        connection, info = self.connection, self.connection.info
        return {
            "local": connection.local,
            "peer": connection.peer,
            "state": connection.state,
            "pid": None if self.owner is None else self.owner.pid,
            "command": None if self.owner is None else self.owner.command[:COMMAND_CHARS],
            "fd": None if self.owner is None else self.owner.fd,
            "timer": connection.timer,
            "timer_expires_ms": connection.timer_expires_ms,
            "send_queue": connection.send_queue,
            "receive_queue": connection.receive_queue,
            "tcp_info": None if info is None else info.as_dict(),
            "stuck": connection.stuck,
            "stuck_for_s": None if self.stuck_for_s is None else round(self.stuck_for_s, 3),
            "gives_up_after_s": self.gives_up_after_s,
            "gives_up_in_s": self.gives_up_in_s,
            "limited_by": self.limited_by,
            "clock": None if self.prediction is None else self.prediction.clock,
            "options": None if self.options is None else self.options.as_dict(),
            "options_source": self.options_source,
            "assumption": self.assumption,
        }


# -- one look ------------------------------------------------------------------------------


def snapshot(config: WatchConfig, kernel: KernelSettings) -> list[Watched]:
    """The connections ``config`` selects, most urgent first: stuck ones by the time left."""
    selected = [c for c in diag.connections() if _addresses_match(c, config)]
    owners = diag.owners({c.inode for c in selected if c.inode})
    if config.pid is not None:
        selected = [c for c in selected if _owner_pid(owners.get(c.inode)) == config.pid]
    if config.stuck:
        selected = [c for c in selected if c.stuck]
    watched = [watch_connection(c, owners.get(c.inode), kernel) for c in selected]
    return sorted(watched, key=_urgency)


def _owner_pid(owner: Owner | None) -> int | None:
    return None if owner is None else owner.pid


def _urgency(watched: Watched) -> tuple[bool, float, str, str]:
    left = watched.gives_up_in_s
    return (
        not watched.connection.stuck,
        float("inf") if left is None else left,
        watched.connection.peer,
        watched.connection.local,
    )


def _addresses_match(connection: Connection, config: WatchConfig) -> bool:
    if config.port is not None and config.port not in (
        connection.local_port,
        connection.peer_port,
    ):
        return False
    if config.peer_host is None:
        return True
    if config.peer_port is not None and connection.peer_port != config.peer_port:
        return False
    return names.normalized(connection.peer_host) in _peer_addresses(config.peer_host)


@lru_cache(maxsize=16)
def _peer_addresses(host: str) -> frozenset[str]:
    """The addresses ``host`` stands for, resolved once: a watch that resolved a Service's
    name keeps its ClusterIP."""
    return names.host_addresses(host)


def watch_connection(
    connection: Connection, owner: Owner | None, kernel: KernelSettings
) -> Watched:
    """What the kernel model makes of one connection, with its program's own options when
    they can be read, and the kernel's defaults otherwise."""
    options = None if owner is None else diag.socket_options(owner)
    tcp = _model_options(options, connection)
    return Watched(
        connection=connection,
        owner=owner,
        options=options,
        prediction=_prediction(connection, tcp, kernel),
        stuck_for_s=stuck_for_s(connection, kernel),
    )


def _model_options(options: EffectiveOptions | None, connection: Connection) -> TcpOptions:
    """The options the model predicts from: the socket's own, or the kernel's defaults with
    keepalive as the kernel's timer shows it (the one option the diagnostics reveal)."""
    if options is not None:
        return options
    return TcpOptions(keepalive=True if connection.timer == "keepalive" else None)


def _prediction(
    connection: Connection, tcp: TcpOptions, kernel: KernelSettings
) -> Prediction | None:
    info = connection.info
    if info is None:
        return None
    if connection.state == "SYN_SENT":
        return predict(kernel, tcp, Failure.SILENT, Activity.CONNECTING)
    if connection.state not in _SENDING_STATES or connection.timer == "persist":
        return None  # closing down, or a peer that acknowledges but reads nothing
    if _probing_idle(connection):
        return predict(kernel, tcp, Failure.SILENT, Activity.IDLE)
    # Busy, or healthy: for a healthy connection, what a request lost now would take.
    return predict(
        kernel, tcp, Failure.SILENT, Activity.ACTIVE, first_rto_s=first_rto_s(connection, kernel)
    )


def _probing_idle(connection: Connection) -> bool:
    info = connection.info
    return info is not None and info.unacked == 0 and info.probes > 0


# -- showing it -----------------------------------------------------------------------------


def render_json(watched: list[Watched], at: datetime.datetime) -> str:
    """One line: ``{"timestamp": ..., "connections": [...]}``."""
    return json.dumps({"timestamp": at.isoformat(), "connections": [w.as_dict() for w in watched]})


_SS_STATES = {  # the table uses ss's short names, which users know
    "ESTABLISHED": "ESTAB",
    "SYN_SENT": "SYN-SENT",
    "SYN_RECV": "SYN-RECV",
    "FIN_WAIT1": "FIN-WAIT-1",
    "FIN_WAIT2": "FIN-WAIT-2",
    "TIME_WAIT": "TIME-WAIT",
    "CLOSE_WAIT": "CLOSE-WAIT",
    "LAST_ACK": "LAST-ACK",
}
_COMMAND_WIDTH = 16


def _retransmissions(watched: Watched) -> str:
    """ss's ``retrans:3/4``: retransmissions of the data waiting now, and in all."""
    info = watched.connection.info
    return "-" if info is None else f"{info.retransmits}/{info.total_retrans}"


def _rto(watched: Watched) -> str:
    info = watched.connection.info
    return "-" if info is None else _seconds(info.rto_ms / 1000)


def _gives_up(prediction: Prediction | None) -> str:
    if prediction is None:
        return "-"
    return "never" if prediction.never else _seconds(prediction.low_s)


def _command(watched: Watched) -> str:
    return "-" if watched.owner is None else short_command(watched.owner.command)


# The columns, most telling first, since a narrow terminal cuts the last ones:
# (header, right-aligned, cell).
_COLUMNS: tuple[tuple[str, bool, Callable[[Watched], str]], ...] = (
    ("PID", True, lambda w: "-" if w.owner is None else str(w.owner.pid)),
    ("COMMAND", False, lambda w: _command(w)[:_COMMAND_WIDTH]),
    ("PEER", False, lambda w: w.connection.peer),
    ("STATE", False, lambda w: _SS_STATES.get(w.connection.state, w.connection.state)),
    ("STUCK", True, lambda w: _seconds(w.stuck_for_s)),
    ("GIVES UP", True, lambda w: _gives_up(w.prediction)),
    ("LEFT", True, lambda w: _seconds(w.gives_up_in_s)),
    ("LIMITED BY", False, lambda w: w.limited_by or "-"),
    ("RETRANS", True, _retransmissions),
    ("RTO", True, _rto),
    ("OPTIONS", False, lambda w: _options_summary(w.options)),
    ("LOCAL", False, lambda w: w.connection.local),
)


def render_table(
    watched: list[Watched],
    kernel: KernelSettings,
    at: datetime.datetime,
    width: int | None = None,
) -> str:
    """The snapshot as a table, one row per connection; lines cut at ``width`` if given."""
    stuck = sum(1 for w in watched if w.connection.stuck)
    lines = [
        f"tcpecho watch  {at:%H:%M:%S}  {len(watched)} connection(s), {stuck} stuck  "
        f"(tcp_retries2={kernel.tcp_retries2}, "
        f"tcp_rto_max_ms={round(kernel.tcp_rto_max_s * 1000)})"
    ]
    if not watched:
        lines.append("no connection matches")
    else:
        header = tuple(name for name, _, _ in _COLUMNS)
        lines += _aligned([header, *(tuple(cell(w) for _, _, cell in _COLUMNS) for w in watched)])
        lines += [
            "STUCK and GIVES UP count from the first unanswered send (SYN-SENT: the connect;",
            "keepalive probes: the last data received); a healthy row's GIVES UP is what a",
            "request lost now would take.",
        ]
    if any(w.options is None for w in watched):
        lines += [
            "?: options unreadable, predicted with the kernel's defaults (no TCP_USER_TIMEOUT);",
            "--json's assumption says what it takes to read them.",
        ]
    if width is not None:
        lines = [line[:width] for line in lines]
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return [
        "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for (_, right, _), cell, width in zip(_COLUMNS, row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def short_command(command: str) -> str:
    """``python tcpecho server`` for ``/venv/bin/python /venv/bin/tcpecho server``: the
    program's name first, without the directories that hide it."""
    words = command.split(" ")
    for index, word in enumerate(words[:2]):
        if word.startswith("/"):
            words[index] = os.path.basename(word)
    return " ".join(words)


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_seconds(value, unit="s", minutes=True)


def _options_summary(options: EffectiveOptions | None) -> str:
    return "?" if options is None else options.summary()


# -- the loop -------------------------------------------------------------------------------


def run(config: WatchConfig) -> int:
    """Show snapshots until told to stop (SIGINT, SIGTERM), or one with ``once``; exit 0.

    On a terminal each snapshot replaces the last; elsewhere each is printed in turn. The
    watch also stops when its output is gone (``tcpecho watch --json | head -1``)."""
    output = Output(STDOUT)
    with stop_signals_held() as stop_signal_within:
        while True:
            at = datetime.datetime.now().astimezone()
            kernel = KernelSettings.here()  # a sysctl changed meanwhile counts from now
            output.line(_frame(config, snapshot(config, kernel), kernel, at, output.tty))
            if config.once or output.dropped or stop_signal_within(config.interval_s):
                return 0


def _frame(
    config: WatchConfig,
    watched: list[Watched],
    kernel: KernelSettings,
    at: datetime.datetime,
    terminal: bool,
) -> str:
    if config.json:
        return render_json(watched, at)
    if not terminal:
        return render_table(watched, kernel, at) + "\n"
    try:
        columns = os.get_terminal_size(STDOUT).columns
    except OSError:  # the terminal went away: the frame is dropped anyway
        columns = 0
    width = columns if columns > 0 else None  # a pseudo-terminal may say 0: cut nothing
    # Home and clear, then the table: one write, so the redraw does not flicker line by line.
    return "\x1b[H\x1b[J" + render_table(watched, kernel, at, width)
