"""The report of an experiment: a table of expected and measured detection times, JSON, and a
chart. The lab and the cluster run print the same table.

Times are on the clock the kernel model names for each case: from the request that was
never answered (active clients), from the last data received (idle clients, keepalive),
or from the fault itself (a FIN, RST or ICMP error arrives at once).

A case's error can quote other programs (a client's or server's last line of output, its
command line): the text report shows its control characters escaped, as ``ps`` does
(``streams.escape_controls``), wherever it prints it; the JSON keeps it whole.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcpecho.durations import format_seconds
from tcpecho.experiment import Fault, Result, Verdict
from tcpecho.streams import escape_controls
from tcpecho.tcp.options import EffectiveOptions

if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLUMNS = (
    "fault",
    "profile",
    "mode",
    "expected",
    "measured",
    "from",
    "error",
    "retrans",
    "verdict",
    "model",
)
CLOCK_NAMES = {"request": "request", "last-data": "last data", "fault": "fault"}


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run as a whole."""

    wall_s: float
    quick_note: str | None  # what --quick shortened (the cases marked *), if anything
    sysctl_note: str | None  # explicit --tcp-retries2 / --rto-max
    kernel_release: str
    stopped_by: str | None = None  # the signal that ended the run early (SIGINT, SIGTERM)


def counted(count: int, noun: str) -> str:
    """``1 case``, ``2 cases``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def format_measured(value: float) -> str:
    """``929 s (15m29s)``: past two minutes, the minutes too, as the field reports them."""
    shown = format_seconds(value)
    return shown if value < 120 else f"{shown} ({format_seconds(value, minutes=True)})"


def row(result: Result) -> dict[str, str]:
    case, prediction = result.case, result.prediction
    if result.interrupted:
        measured = (
            "interrupted before the fault"
            if result.observed_s is None
            else f"interrupted {format_measured(result.observed_s)} after the fault"
        )
    elif result.error is not None:
        measured = f"error: {_shortened(escape_controls(result.error))}"
    elif result.measured_s is None and result.recovered_s is not None:
        measured = f"echo at {format_measured(result.recovered_s)}"
    elif result.measured_s is None and result.observed_s is not None:
        measured = f"none in {format_measured(result.observed_s)}"
    elif result.measured_s is None:
        measured = "none"
    else:
        measured = format_measured(result.measured_s)
    clock = result.measured_clock or (prediction.clock if prediction else None)
    expected = prediction.describe() if prediction else "?"
    if result.quick:
        expected += " *"
    return {
        "fault": str(case.fault),
        "profile": case.profile.name,
        "mode": str(result.activity),
        "expected": expected,
        "measured": measured,
        "from": CLOCK_NAMES.get(clock or "", "-") if _measured(result) else "-",
        "error": result.errno or "-",
        "retrans": "-" if result.retransmissions is None else str(result.retransmissions),
        "verdict": str(result.verdict),
        "model": _model_cell(result),
    }


def _measured(result: Result) -> bool:
    return result.measured_s is not None or result.recovered_s is not None


def _model_cell(result: Result) -> str:
    if result.interrupted:
        return "-"
    if result.prediction is None:
        return "?"
    return "ok" if result.matches else "MISS"


def _shortened(text: str, length: int = 60) -> str:
    """A case's error in the table (the JSON keeps it whole)."""
    return text if len(text) <= length else text[: length - 3] + "..."


def render_table(rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    """A plain-text table (also what the in-cluster reproduction prints)."""
    widths = {
        column: max([len(column), *(len(r.get(column, "")) for r in rows)]) for column in columns
    }
    lines = ["  ".join(column.ljust(widths[column]) for column in columns).rstrip()]
    lines.append("  ".join("-" * widths[column] for column in columns))
    for r in rows:
        lines.append(
            "  ".join(r.get(column, "").ljust(widths[column]) for column in columns).rstrip()
        )
    return "\n".join(lines)


def render(results: Sequence[Result], info: RunInfo) -> str:
    parts = [
        f"tcpecho lab: {counted(len(results), 'case')} in {info.wall_s:.1f} s wall, "
        f"kernel {info.kernel_release}",
        render_table([row(result) for result in results]),
    ]
    notes = []
    if info.quick_note:
        notes.append(quick_footnote(results, info.quick_note))
    if info.sysctl_note:
        notes.append(info.sysctl_note)
    notes.append(
        "expected/measured: from the unanswered request (active), the last data (idle), "
        "or the fault (FIN/RST/ICMP; a survivor's first echo after the fault's window). "
        "verdict: fast < 1 s; detected by a mitigation; hang = not detected, or only by the "
        "kernel's retransmission budget; survived = nothing failed and the echo worked after "
        "the window; cut = a failure though the peer was still there or came back."
    )
    notes.append(model_note(results))
    options = program_options_note(results)
    if options:
        notes.append(options)
    if info.stopped_by is not None:
        unfinished = sum(result.interrupted for result in results)
        notes.append(
            f"interrupted: {info.stopped_by} stopped the run before "
            f"{counted(unfinished, 'case')} of {len(results)} had finished (verdict interrupted)"
        )
    failed = [result for result in results if result.error is not None]
    for result in failed:
        notes.append(f"could not run {result.case.name}: {escape_controls(result.error or '')}")
    for fault, caption in _CONNTRACK_CAPTIONS.items():
        shown = next((r for r in results if r.conntrack and r.case.fault is fault), None)
        if shown is not None:
            notes.append(f"node conntrack {caption}:\n  " + "\n  ".join(shown.conntrack))
    reconnected = [r for r in results if r.measured_s is not None and r.recovered_s is not None]
    for result in reconnected:
        notes.append(
            f"{result.case.name}: then a fresh socket (a new source port) got its echo "
            f"{format_seconds(result.recovered_s or 0)} after the fault"
        )
    parts.append("\n".join(notes))
    return "\n\n".join(parts)


_CONNTRACK_CAPTIONS = {
    Fault.FORCE_DELETE: "after force-delete (the pod is gone, the flow is not)",
    Fault.STALE_CONNTRACK: (
        "after stale-conntrack (the first SYN's entry, untranslated, beside the fresh socket's)"
    ),
}


def quick_footnote(results: Sequence[Result], note: str) -> str:
    """The note on --quick, under a ``*`` when a case carries the mark."""
    return f"* {note}" if any(result.quick for result in results) else note


def program_options_note(results: Sequence[Result]) -> str | None:
    """The options the lab read from each program's socket, as ``tcpecho watch`` shows them
    (``TcpOptions.summary``): what the program's prediction comes from. One line a program,
    naming the faults where its cases' sockets differ."""
    shown: dict[str, dict[str, list[str]]] = {}
    for result in results:
        if result.case.profile.command is None:
            continue
        if result.options is not None:
            summary = EffectiveOptions(**result.options).summary()
        elif result.error is None:
            summary = "not read (the kernel gave no duplicate of its socket)"
        else:
            continue  # it never got as far as a socket
        faults = shown.setdefault(result.case.profile.name, {})
        faults.setdefault(summary, []).append(str(result.case.fault))
    if not shown:
        return None
    width = max(len(name) for name in shown)
    lines = ["options read from each program's socket (as tcpecho watch shows them):"]
    for name, summaries in shown.items():
        if len(summaries) == 1:
            text = next(iter(summaries))
        else:
            text = "; ".join(f"{summary} ({', '.join(f)})" for summary, f in summaries.items())
        lines.append(f"  {name:{width}}  {text}")
    return "\n".join(lines)


def model_note(results: Sequence[Result]) -> str:
    """What the run says of the model: only cases that ran were held to it, and when none
    ran, nothing was."""
    interrupted = [result for result in results if result.interrupted]
    failed = [result for result in results if result.error is not None and not result.interrupted]
    judged = [result for result in results if result.error is None and not result.interrupted]
    misses = [result for result in judged if not result.matches]
    unjudged = [
        f"{counted(len(failed), 'case')} could not run" if failed else "",
        f"{counted(len(interrupted), 'case')} interrupted" if interrupted else "",
    ]
    apart = ", ".join(part for part in unjudged if part)
    if not judged:
        return f"model: nothing measured ({apart})" if apart else "model: nothing measured"
    if misses:
        verdict = f"model: {counted(len(misses), 'case')} outside the predicted range (MISS)"
    else:
        verdict = "model: every measurement within its predicted range"
    return f"{verdict}; {apart}" if apart else verdict


def seconds_or_none(value: float | None) -> float | None:
    """Seconds for JSON, where "never" (infinity) has no number: null."""
    return None if value is None or math.isinf(value) else round(value, 6)


def to_json(results: Sequence[Result], info: RunInfo) -> dict[str, Any]:
    cases = []
    for result in results:
        prediction = result.prediction
        cases.append(
            {
                "name": result.case.name,
                "fault": str(result.case.fault),
                "fault_description": result.case.fault.description,
                "profile": result.case.profile.name,
                "client_args": list(result.case.profile.client_flags()),
                "command": result.case.profile.command,
                "mode": str(result.activity),
                "options": result.options,
                "exit_status": result.exit_status,
                "exited_after_s": result.exited_after_s,
                "sysctls": result.sysctls,
                "quick": result.quick,
                "prediction": None
                if prediction is None
                else {
                    "low_s": seconds_or_none(prediction.low_s),
                    "high_s": seconds_or_none(prediction.high_s),
                    "never": prediction.never,
                    "clock": prediction.clock,
                    "mechanism": str(prediction.mechanism),
                    "errnos": list(prediction.errnos),
                    "outcome": str(prediction.outcome),
                },
                "fault_at": result.fault_at,
                "measured_s": result.measured_s,
                "measured_clock": result.measured_clock,
                "observed_s": seconds_or_none(result.observed_s),
                "recovered_s": result.recovered_s,
                "errno": result.errno,
                "retransmissions": result.retransmissions,
                "verdict": str(result.verdict),
                "matches_model": result.matches,
                "error": result.error,
                "conntrack": result.conntrack,
                "client_events": result.client_events,
                "server_events": result.server_events,
            }
        )
    return {
        "wall_s": round(info.wall_s, 3),
        "kernel_release": info.kernel_release,
        "quick": info.quick_note,
        "sysctls": info.sysctl_note,
        "stopped_by": info.stopped_by,
        "cases": cases,
    }


def write_json(results: Sequence[Result], info: RunInfo, path: Path) -> None:
    path.write_text(json.dumps(to_json(results, info), indent=2) + "\n")


_COLORS = {
    Verdict.FAST: "#2a9d8f",
    Verdict.DETECTED: "#4c78a8",
    Verdict.HANG: "#e76f51",
    Verdict.SURVIVED: "#8ab17d",
    Verdict.CUT: "#e9c46a",
    Verdict.ERROR: "#999999",
    Verdict.INTERRUPTED: "#cccccc",
}


# The log axis has no zero: a time shorter than this (or none at all) is drawn at this height.
_LOG_FLOOR_S = 0.01


def plot(results: Sequence[Result], info: RunInfo, path: Path) -> None:
    """A bar chart of detection time per profile and mode, one panel per fault, log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    faults = list(dict.fromkeys(str(result.case.fault) for result in results))
    figure, axes = plt.subplots(
        len(faults), 1, figsize=(11, 2.6 * len(faults) + 1), squeeze=False, sharey=True
    )
    for axis, fault in zip(axes[:, 0], faults, strict=True):
        _plot_fault(axis, fault, [result for result in results if str(result.case.fault) == fault])
    legend = [Patch(color=color, label=verdict) for verdict, color in _COLORS.items()]
    legend.append(
        Patch(facecolor="white", edgecolor="black", hatch="//", label="not detected (watched)")
    )
    figure.legend(handles=legend, loc="upper right", fontsize=8, ncols=len(legend))
    title = (
        "tcpecho lab: time to detect a vanished peer, or a survivor's first echo after the "
        "fault's window (black: the model's range)"
    )
    if info.quick_note:
        title += "\n" + textwrap.fill(quick_footnote(results, info.quick_note), 120)
    figure.suptitle(title, fontsize=10, x=0.01, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_fault(axis: Axes, fault: str, chosen: Sequence[Result]) -> None:
    """One fault's panel: a bar per case, labelled with its time, and the model's range."""
    labels, heights, colors, hatches = [], [], [], []
    for result in chosen:
        labels.append(f"{result.case.profile.name}\n{result.activity}")
        value = result.measured_s
        if value is None:
            value = result.recovered_s if result.recovered_s is not None else result.observed_s
        heights.append(max(value or 0, _LOG_FLOOR_S))
        colors.append(_COLORS.get(result.verdict, "#999999"))
        hatches.append("//" if not _measured(result) else "")
    positions = range(len(chosen))
    bars = axis.bar(positions, heights, color=colors)
    for bar, hatch, result in zip(bars, hatches, chosen, strict=True):
        bar.set_hatch(hatch)
        text = row(result)["measured"] if _measured(result) else "none"
        if result.quick:
            text += " *"
        axis.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    for position, result in zip(positions, chosen, strict=True):
        prediction = result.prediction
        if prediction is not None and not prediction.never:
            axis.plot(
                [position, position],
                [max(prediction.low_s, _LOG_FLOOR_S), max(prediction.high_s, _LOG_FLOOR_S)],
                color="black",
                linewidth=3,
                alpha=0.6,
            )
    axis.set_yscale("log")
    axis.set_xticks(list(positions), labels, fontsize=7, rotation=15)
    axis.set_title(f"{fault}", fontsize=9, loc="left")
    axis.set_ylabel("seconds to detection")
