"""How a snapshot is shown: a table for people (``render_table``), refreshed in place on a
terminal, or one JSON object per line for programs (``render_json``).

The table uses ``ss``'s names for states and counters, which users know, and puts the most
telling columns first, since a narrow terminal cuts the last ones. COMMAND shows what ``ps``
would, without directories, in the room the other columns leave: the interpreter goes
before the script's name and its first argument, which tell two runs apart. A command line is
another user's text: the table shows its control characters as ``ps`` does (``?``), so
none can move the cursor or recolour the table; the JSON keeps it whole, since
``json.dumps`` escapes every control character. RISK shows a connection's first risk's code
(and how many more), and a note under the table each code's message, once: the messages,
explain's, are too long for a row.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import textwrap
from collections.abc import Callable
from typing import Any

from tcpecho.durations import format_seconds
from tcpecho.model import KernelSettings, Prediction, orphan_retries
from tcpecho.streams import escape_controls
from tcpecho.tcp.options import EffectiveOptions
from tcpecho.watch.look import Risk, Watched

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
        "at_risk": [{"code": risk.code, "message": risk.message} for risk in watched.at_risk],
        **({} if watched.netns is None else _pod_as_dict(watched)),
    }


def _pod_as_dict(watched: Watched) -> dict[str, Any]:
    """With --all-namespaces: the network namespace, and the pod (nulls: the host's)."""
    pod = watched.pod
    return {
        "netns": watched.netns,
        "namespace": None if pod is None else pod.namespace,
        "pod": None if pod is None else pod.pod,
        "container": None if pod is None else pod.container,
        "pod_uid": None if pod is None else pod.uid,
        "container_id": None if pod is None else pod.container_id,
    }


def _idle_as_dict(prediction: Prediction) -> dict[str, Any]:
    """When a peer that vanished while the connection is idle would be noticed."""
    return {
        "gives_up_after_s": None if prediction.never else round(prediction.low_s, 3),
        "limited_by": str(prediction.mechanism),
        "clock": prediction.clock,
    }


SS_STATES = {  # the table uses ss's short names, which users know
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
# COMMAND takes the room the other columns leave on the terminal, at least _COMMAND_WIDTH;
# off a terminal (a pipe, a file: no width to fill) _COMMAND_PLAIN_WIDTH. A program's or a
# script's name is cut only past _COMMAND_NAME_WIDTH: the column widens for it instead.
_COMMAND_WIDTH = 16
_COMMAND_PLAIN_WIDTH = 48
_COMMAND_NAME_WIDTH = 32


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


def _risk(watched: Watched) -> str:
    """The first risk's code, and how many more the JSON and the note below list."""
    if not watched.at_risk:
        return "-"
    more = len(watched.at_risk) - 1
    return watched.at_risk[0].code + (f" +{more}" if more else "")


def _command(watched: Watched, room: int | None = None) -> str:
    """The owner's command line, as another user wrote it: short, within ``room`` if given,
    and escaped for the terminal."""
    if watched.owner is None:
        return "-"
    return escape_controls(short_command(watched.owner.command, room))


# The columns, most telling first, since a narrow terminal cuts the last ones:
# (header, right-aligned, cell).
_COLUMNS: tuple[tuple[str, bool, Callable[[Watched], str]], ...] = (
    ("PID", True, lambda w: "-" if w.owner is None else str(w.owner.pid)),
    ("COMMAND", False, _command),  # fitted to the room the others leave: render_table
    ("PEER", False, lambda w: w.connection.peer),
    ("STATE", False, lambda w: SS_STATES.get(w.connection.state, w.connection.state)),
    ("STUCK", True, lambda w: _seconds(w.stuck_for_s)),
    ("GIVES UP", True, lambda w: _gives_up(w.prediction)),
    ("LEFT", True, lambda w: _seconds(w.gives_up_in_s)),
    ("LIMITED BY", False, lambda w: w.limited_by or "-"),
    ("IF IDLE", True, lambda w: _gives_up(w.if_idle)),
    ("RISK", False, _risk),
    ("RETRANS", True, _retransmissions),
    ("RTO", True, _rto),
    ("OPTIONS", False, lambda w: _options_summary(w.options)),
    ("LOCAL", False, lambda w: w.connection.local),
)


def _pod_name(watched: Watched) -> str:
    pod = watched.pod
    if pod is None:  # the host's: its network namespace says which
        return "-" if watched.netns is None else f"host:{watched.netns}"
    return escape_controls(pod.pod or pod.uid)


# With --all-namespaces, as kubectl's -A: the pod first. Names are other people's text.
_POD_COLUMNS: tuple[tuple[str, bool, Callable[[Watched], str]], ...] = (
    ("NAMESPACE", False, lambda w: escape_controls((w.pod and w.pod.namespace) or "-")),
    ("POD", False, _pod_name),
    ("CONTAINER", False, lambda w: escape_controls((w.pod and w.pod.container) or "-")),
)


def render_table(
    watched: list[Watched],
    kernel: KernelSettings,
    at: datetime.datetime,
    width: int | None = None,
    pods: bool = False,
) -> str:
    """The snapshot as a table, one row per connection; lines cut at ``width`` if given;
    ``pods``: each connection's namespace, pod and container first (``--all-namespaces``)."""
    lines = [_heading(watched, kernel, at)]
    columns = _POD_COLUMNS + _COLUMNS if pods else _COLUMNS
    if not watched:
        lines.append("no connection matches")
    else:
        header = tuple(name for name, _, _ in columns)
        rows = [tuple(cell(w) for _, _, cell in columns) for w in watched]
        lines += _aligned([header, *_commands_fitted(header, rows, watched, width)], columns)
        lines += [
            "STUCK and GIVES UP count from the first unanswered send (SYN-SENT: the connect;",
            "keepalive probes: the last data received); a healthy row's GIVES UP is what a",
            "request lost now would take. IF IDLE: a peer that vanished while nothing is",
            "sent is noticed this long after the last data, by keepalive; never without it.",
        ]
        if any(w.orphaned for w in watched):
            lines += [
                "orphaned: no program holds it, and its options went with the program; the",
                f"kernel ends it after {orphan_retries(kernel)} retries (tcp_orphan_retries="
                f"{kernel.tcp_orphan_retries}), not tcp_retries2.",
            ]
    if any(w.options is None and not w.orphaned for w in watched):
        lines += [
            "?: options unreadable, predicted with the kernel's defaults (no TCP_USER_TIMEOUT);",
            "--json's assumption says what it takes to read them.",
        ]
    lines += _risk_notes(watched, width)
    if width is not None:
        lines = [line[:width] for line in lines]
    return "\n".join(lines)


def _heading(watched: list[Watched], kernel: KernelSettings, at: datetime.datetime) -> str:
    """The snapshot's first line: when, what it counts, and the sysctls that bound it."""
    stuck = sum(1 for w in watched if w.connection.stuck)
    unnoticed = sum(1 for w in watched if w.if_idle is not None and w.if_idle.never)
    orphans = sum(1 for w in watched if w.orphaned)
    counts = [
        _counted(len(watched), "connection"),
        f"{stuck} stuck",
        *([f"{orphans} orphaned"] if orphans else []),
        *([f"{unnoticed} never noticed if idle"] if unnoticed else []),
        f"{sum(1 for w in watched if w.at_risk)} at risk",
    ]
    return (
        f"tcpecho watch  {at:%H:%M:%S}  {', '.join(counts)}  "
        f"(tcp_retries2={kernel.tcp_retries2}, "
        f"tcp_rto_max_ms={round(kernel.tcp_rto_max_s * 1000)})"
    )


_NOTE_WIDTH = 88  # the risks' messages are wrapped within this, or the terminal's width


def _risk_notes(watched: list[Watched], width: int | None) -> list[str]:
    """Each risk of the snapshot once, its code and message (a code whose message differs
    between connections, with their own numbers, once with each), wrapped to be read whole
    where the table's rows are cut."""
    by_code: dict[str, dict[Risk, None]] = {}  # codes in the order the rows show them
    for w in watched:
        for risk in w.at_risk:
            by_code.setdefault(risk.code, {})[risk] = None
    risks = [risk for same_code in by_code.values() for risk in same_code]
    if not risks:
        return []
    room = min(width or _NOTE_WIDTH, _NOTE_WIDTH)
    lines = [
        "RISK: what a connection's own options will let go wrong in the state it is in now,",
        "the first of them (+N: more, all in --json):",
    ]
    for risk in risks:
        lines += textwrap.wrap(
            f"{risk.code}: {risk.message}", room, subsequent_indent="  ", break_on_hyphens=False
        )
    return lines


def _counted(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


def _commands_fitted(
    header: tuple[str, ...], rows: list[tuple[str, ...]], watched: list[Watched], width: int | None
) -> list[tuple[str, ...]]:
    """The rows with each COMMAND cut to the room the other columns leave in ``width``, at
    least ``_COMMAND_WIDTH``: a wide terminal shows more of each command line."""
    at = header.index("COMMAND")
    room = _COMMAND_PLAIN_WIDTH
    if width is not None:
        others = sum(
            max(len(row[i]) for row in [header, *rows]) + 2  # and the gap _aligned leaves
            for i in range(len(header))
            if i != at
        )
        room = max(_COMMAND_WIDTH, width - others)
    return [
        (*row[:at], _command(w, room), *row[at + 1 :]) for row, w in zip(rows, watched, strict=True)
    ]


def _aligned(
    rows: list[tuple[str, ...]],
    columns: tuple[tuple[str, bool, Callable[[Watched], str]], ...] = _COLUMNS,
) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return [
        "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for (_, right, _), cell, width in zip(columns, row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def short_command(command: str, room: int | None = None) -> str:
    """``python3 tcpecho server --port 8000`` for ``/venv/bin/python3 /venv/bin/tcpecho server
    --port 8000``, as ``ps`` shows it but without the directories that hide the program's
    and the script's names; within ``room`` characters if given.

    Cut to ``room`` at the end, as ``ps`` cuts, but never into what tells the rows apart: where
    the cut would reach the script's name or its first argument (``tcpecho server`` and
    ``tcpecho client``), the interpreter is left out first; the program's and the script's
    names are cut only past ``_COMMAND_NAME_WIDTH``."""
    words = command.split(" ")
    script = _script_at(words)
    words[0] = _without_directories(words[0])
    if script is not None:
        words[script] = _without_directories(words[script])
    shown = " ".join(words)
    if room is None or len(shown) <= room:
        return shown
    if script is None:
        return shown[: _at_least(room, words[0])]
    if len(" ".join(words[: script + 2])) > room:  # no room for the interpreter
        shown = " ".join(words[script:])
    return shown[: _at_least(room, words[script])]


def _script_at(words: list[str]) -> int | None:
    """Where an interpreter's script is among a command line's words: the first that is not
    an option, when it names a file (``/venv/bin/tcpecho``, ``./run``, ``rclient.py``) or
    follows python's ``-m``; None for a program that runs no script (``socat - TCP:...``)."""
    for index, word in enumerate(words[1:], start=1):
        if word.startswith("-"):
            continue
        if words[index - 1] == "-m" or _names_a_file(word):
            return index
        return None
    return None


def _names_a_file(word: str) -> bool:
    """A path (``/venv/bin/tcpecho``, ``./run``) or a name with an extension (``rclient.py``),
    not an address (``TCP:10.96.0.10:8000``, ``http://...``) or a word (``root@pts/0``)."""
    if ":" in word:
        return False
    return word.startswith(("/", "./", "../")) or bool(_EXTENSION.search(word))


_EXTENSION = re.compile(r"[^./]\.[A-Za-z][A-Za-z0-9]{0,4}$")


def _without_directories(word: str) -> str:
    return os.path.basename(word) or word if _names_a_file(word) else word


def _at_least(room: int, name: str) -> int:
    """``room``, or more to keep ``name`` whole, up to ``_COMMAND_NAME_WIDTH``."""
    return max(room, min(len(name), _COMMAND_NAME_WIDTH))


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_seconds(value, unit="s", minutes=True)


def _options_summary(options: EffectiveOptions | None) -> str:
    return "?" if options is None else options.summary()
