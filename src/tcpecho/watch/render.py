"""How a snapshot is shown: a table for people (``render_table``), refreshed in place on a
terminal, or one JSON object per line for programs (``render_json``).

The table uses ``ss``'s names for states and counters, which users know, and puts the most
telling columns first, since a narrow terminal cuts the last ones. A command line is
another user's text: the table shows its control characters as ``ps`` does (``?``), so
none can move the cursor or recolour the table; the JSON keeps it whole, since
``json.dumps`` escapes every control character.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from typing import Any

from tcpecho.durations import format_seconds
from tcpecho.model import KernelSettings, Prediction
from tcpecho.streams import escape_controls
from tcpecho.tcp.options import EffectiveOptions
from tcpecho.watch.look import Watched

COMMAND_CHARS = 200  # the JSON's command line; the table shows a shorter form


def render_json(watched: list[Watched], at: datetime.datetime) -> str:
    """One line: ``{"timestamp": ..., "connections": [...]}``."""
    return json.dumps({"timestamp": at.isoformat(), "connections": [_as_dict(w) for w in watched]})


def _as_dict(watched: Watched) -> dict[str, Any]:
    """One connection of the JSON: its addresses, owner, counters, and the model's answer."""
    connection, info = watched.connection, watched.connection.info
    return {
        "local": connection.local,
        "peer": connection.peer,
        "state": connection.state,
        "pid": None if watched.owner is None else watched.owner.pid,
        "command": None if watched.owner is None else watched.owner.command[:COMMAND_CHARS],
        "fd": None if watched.owner is None else watched.owner.fd,
        "timer": connection.timer,
        "timer_expires_ms": connection.timer_expires_ms,
        "send_queue": connection.send_queue,
        "receive_queue": connection.receive_queue,
        "tcp_info": None if info is None else info.as_dict(),
        "stuck": connection.stuck,
        "stuck_for_s": None if watched.stuck_for_s is None else round(watched.stuck_for_s, 3),
        "gives_up_after_s": watched.gives_up_after_s,
        "gives_up_in_s": watched.gives_up_in_s,
        "limited_by": watched.limited_by,
        "clock": None if watched.prediction is None else watched.prediction.clock,
        "orphaned": watched.orphaned,
        "if_idle": None if watched.if_idle is None else _idle_as_dict(watched.if_idle),
        "options": None if watched.options is None else watched.options.as_dict(),
        "options_source": watched.options_source,
        "assumption": watched.assumption,
    }


def _idle_as_dict(prediction: Prediction) -> dict[str, Any]:
    """When a peer that vanished while the connection is idle would be noticed."""
    return {
        "gives_up_after_s": None if prediction.never else round(prediction.low_s, 3),
        "limited_by": str(prediction.mechanism),
        "clock": prediction.clock,
    }


_SS_STATES = {  # the table uses ss's short names, which users know
    "ESTABLISHED": "ESTAB",
    "SYN_SENT": "SYN-SENT",
    "SYN_RECV": "SYN-RECV",
    "FIN_WAIT1": "FIN-WAIT-1",
    "FIN_WAIT2": "FIN-WAIT-2",
    "TIME_WAIT": "TIME-WAIT",
    "CLOSE_WAIT": "CLOSE-WAIT",
    "LAST_ACK": "LAST-ACK",
    "CLOSE": "UNCONN",
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
    """The owner's command line, as another user wrote it: escaped for the terminal."""
    return "-" if watched.owner is None else escape_controls(short_command(watched.owner.command))


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
    ("IF IDLE", True, lambda w: _gives_up(w.if_idle)),
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
    unnoticed = sum(1 for w in watched if w.if_idle is not None and w.if_idle.never)
    orphans = sum(1 for w in watched if w.orphaned)
    counts = [
        _counted(len(watched), "connection"),
        f"{stuck} stuck",
        *([f"{orphans} orphaned"] if orphans else []),
        *([f"{unnoticed} never noticed if idle"] if unnoticed else []),
    ]
    lines = [
        f"tcpecho watch  {at:%H:%M:%S}  {', '.join(counts)}  "
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
            "request lost now would take. IF IDLE: a peer that vanished while nothing is",
            "sent is noticed this long after the last data, by keepalive; never without it.",
        ]
        if orphans:
            lines.append(
                "orphaned: no program holds it; the kernel ends it at tcp_orphan_retries "
                f"(={kernel.tcp_orphan_retries}; 0 means 8)."
            )
    if any(w.options is None for w in watched):
        lines += [
            "?: options unreadable, predicted with the kernel's defaults (no TCP_USER_TIMEOUT);",
            "--json's assumption says what it takes to read them.",
        ]
    if width is not None:
        lines = [line[:width] for line in lines]
    return "\n".join(lines)


def _counted(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


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
