"""Structured logs: one event name per line, JSON lines for machines, a console for people.

JSON is the default whenever stdout is not a terminal (containers, the lab, tests), so
every line can be parsed; the console renderer is used on a TTY, in colour unless
``NO_COLOR`` is set (no-color.org), with nested values written as ``{key=value ...}`` and unset
values left out. Timestamps are UTC.
structlog is imported on first use, so ``tcpecho --help`` does not pay for it.
Context bound with ``structlog.contextvars`` (such as the client's connection number) is
merged first, so it appears on every line logged while it is bound.

When lines get through again after stdout dropped some, the reporter handed to ``configure``
says how many were lost (the commands hand ``events.report_lines_dropped``, which logs
``log_lines_dropped``): this module knows no event, so it stands below every module that logs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from tcpecho.streams import STDOUT, STDOUT_OUTPUT

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger, Processor

LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Called as (logger, dropped, dropped_total) once lines get through again after stdout
# dropped ``dropped`` of them (``dropped_total`` since the start).
DroppedLinesReporter = Callable[["FilteringBoundLogger", int, int], None]


def configure(
    log_format: LogFormat = "auto",
    level: str = "info",
    *,
    report_dropped: DroppedLinesReporter | None = None,
) -> None:
    """Set up structlog for the whole process; call once, before the first event.
    ``report_dropped`` logs a burst of lines stdout dropped once lines get through again;
    without it the burst is only counted (``streams.Output.dropped``)."""
    import logging  # here, not at the top: tcpecho --help would pay for it

    import structlog

    on_terminal = os.isatty(STDOUT)
    use_console = log_format == "console" or (log_format == "auto" and on_terminal)
    for_people: list[Processor] = []
    if use_console:
        colors = on_terminal and not os.environ.get("NO_COLOR")
        for_people = [
            _waiting_as_status_line,
            _readable_values,
            structlog.dev.ConsoleRenderer(colors=colors),
        ]
    # For machines, one processor writes the whole line: the five steps it stands for (level,
    # time, traceback, order, JSON) cost the server's accept path a third more per line.
    rendering: list[Processor] = [_json_line]
    if use_console:
        rendering = [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _lead_with_time_level_event,
            *for_people,
        ]
    _LOG_SINK.report_dropped = report_dropped
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *args: _LOG_SINK,
        cache_logger_on_first_use=True,
    )


def get_logger(**context: object) -> FilteringBoundLogger:
    import structlog

    logger: FilteringBoundLogger = structlog.get_logger(**context)
    return logger


def _json_line(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """The JSON line: timestamp (UTC, ISO 8601 with ``Z``), level and event first, then the
    fields; a traceback as ``exception``; a value JSON has no type for as its ``repr``. The
    same line structlog's TimeStamper, add_log_level, format_exc_info and JSONRenderer make,
    in one step and with one encoder made once (``json.dumps`` with ``default=`` makes a
    new encoder for every line)."""
    if "exc_info" in event_dict:
        from structlog.processors import format_exc_info

        event_dict = format_exc_info(logger, method_name, event_dict)
    level = _LEVEL_OF_METHOD.get(method_name, method_name)
    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    line = {"timestamp": timestamp, "level": level, "event": event_dict.pop("event", None)}
    line.update(event_dict)
    return _JSON_ENCODER.encode(line)


# structlog's names for the levels of its methods (warn is the stdlib's alias).
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}
_JSON_ENCODER = json.JSONEncoder(default=repr)


def _lead_with_time_level_event(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put timestamp, level and event first, so a JSON line reads like a log line."""
    lead = {
        key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict
    }
    return {**lead, **event_dict}


def _waiting_as_status_line(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """For the console: ``waiting_for_response`` as one sentence that a terminal shows in
    place, updated every interval, instead of a new line each time."""
    if event_dict.get("event") != "waiting_for_response":
        return event_dict
    import structlog

    STDOUT_OUTPUT.status(f"{event_dict.get('timestamp', '')} {describe_waiting(event_dict)}")
    raise structlog.DropEvent


def describe_waiting(event: Mapping[str, Any]) -> str:
    """``waiting 312 s for #17: 9 retransmissions, RTO 102 s, the kernel gives up in about
    612 s (tcp_retries2)``."""
    info = event.get("tcp_info") or {}
    rto_ms = float(info.get("rto_ms") or 0)
    rto = f"{rto_ms / 1000:.3g} s" if rto_ms >= 1000 else f"{rto_ms:.0f} ms"
    limited_by = event.get("limited_by", "")
    who = "the client" if limited_by == "read_timeout" else "the kernel"
    left = event.get("gives_up_in_s")
    ending = "nothing ends the wait" if left is None else f"{who} gives up in about {left:.0f} s"
    return (
        f"waiting {event.get('waiting_s', 0):.0f} s for #{event.get('seq')}: "
        f"{info.get('retransmits', 0)} retransmissions, RTO {rto}, {ending} ({limited_by})"
    )


def _readable_values(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """For the console: no unset values, and nested ones as ``key=value`` rather than reprs."""
    return {
        key: _readable(value)
        for key, value in event_dict.items()
        if value is not None or key in ("timestamp", "level", "event")
    }


def _readable(value: Any) -> Any:
    if isinstance(value, dict):
        inner = " ".join(f"{k}={_readable(v)}" for k, v in value.items() if v is not None)
        return _Shown(f"{{{inner}}}")
    if isinstance(value, list | tuple):
        return _Shown(" ".join(str(_readable(item)) for item in value))
    if isinstance(value, bool):
        return _Shown("true" if value else "false")
    return value


class _Shown:
    """Text the console renderer shows as it is (it quotes plain strings holding '=')."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


class _LogSink:
    """structlog's logger: every level goes to stdout as one whole line (``streams``)."""

    def __init__(self) -> None:
        self.report_dropped: DroppedLinesReporter | None = None  # configure's

    def msg(self, message: str) -> None:
        dropped = STDOUT_OUTPUT.dropped_in_burst
        if STDOUT_OUTPUT.line(message) and dropped:
            # Lines get through again: say how many a stalled or failing stdout lost.
            STDOUT_OUTPUT.dropped_in_burst = 0
            if self.report_dropped is not None:
                self.report_dropped(get_logger(), dropped, STDOUT_OUTPUT.dropped)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_LOG_SINK = _LogSink()
