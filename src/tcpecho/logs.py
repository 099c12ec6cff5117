"""Structured logs: one event name per line, JSON lines for machines, a console for people.

JSON is the default whenever stdout is not a terminal (containers, the lab, tests), so
every line can be parsed; the console renderer is used on a TTY. Timestamps are UTC.
structlog is imported on first use, so ``tcpecho --help`` does not pay for it.
Context bound with ``structlog.contextvars`` (such as the client's connection number) is
merged first, so it appears on every line logged while it is bound.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger, Processor

LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def configure(log_format: LogFormat = "auto", level: str = "info") -> None:
    """Set up structlog for the whole process; call once, before the first event."""
    import logging  # here, not at the top: tcpecho --help would pay for it

    import structlog

    use_console = log_format == "console" or (log_format == "auto" and sys.stdout.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _lead_with_time_level_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (print() makes two when PYTHONUNBUFFERED is set): the workers
        # of ``server --workers`` share stdout, and their lines must not interleave.
        logger_factory=lambda *args: _LineWriter(sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: object) -> FilteringBoundLogger:
    import structlog

    logger: FilteringBoundLogger = structlog.get_logger(**context)
    return logger


def _lead_with_time_level_event(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put timestamp, level and event first, so a JSON line reads like a log line."""
    lead = {
        key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict
    }
    return {**lead, **event_dict}


class _LineWriter:
    """Writes each rendered line to a file: one write per line, and never an exception.

    One write keeps lines whole when the workers of ``server --workers`` share stdout. A line
    that cannot be written is dropped: a server whose stdout went away (``tcpecho server |
    head -1``, a log collector that died) must go on echoing and, above all, still stop on
    SIGTERM, whose shutdown logs a line.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):  # ValueError: file closed
            self._file.write(message + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg
