"""Go-style durations (``500ms``, ``30s``, ``1m30s``): the one parser every option uses.

durationpy parses Go's syntax, so the values users copy from Go programs and Kubernetes
manifests mean the same here. On top of it this module adds what a command line needs: a
unit is required (``30`` is ambiguous), negatives are refused, and each option states its
own bounds and granularity (the kernel takes TCP_USER_TIMEOUT in whole milliseconds and the
keepalive times in whole seconds). Values come out as float seconds.
"""

from __future__ import annotations

import datetime as dt

import click
import durationpy

_MICROSECONDS = {"us": 1, "ms": 1_000, "s": 1_000_000}


def parse_duration(text: str) -> float:
    """Parse a non-negative Go duration into seconds, or raise ``ValueError`` saying why."""
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is negative: a duration must be 0 or more")
    try:
        delta = durationpy.from_str(stripped)
    except durationpy.DurationError:
        raise ValueError(
            f"{text!r} is not a duration: give a number with a unit, such as 500ms, 30s or 1m30s"
        ) from None
    return delta.total_seconds()


def format_duration(seconds: float) -> str:
    """Render seconds the way users type them (``1m30s``, ``500ms``)."""
    return str(durationpy.to_str(dt.timedelta(seconds=seconds)))


class Duration(click.ParamType[float]):
    """A click parameter type for a bounded duration, converted to float seconds."""

    name = "duration"

    def __init__(
        self,
        *,
        minimum: float = 0.0,
        maximum: float | None = None,
        granularity: str = "us",
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.granularity = granularity

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "DURATION"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):  # a default already converted, or a programmatic call
            return value
        try:
            seconds = parse_duration(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)
        step = _MICROSECONDS[self.granularity]
        micros = round(seconds * 1_000_000)
        if micros % step:
            self.fail(f"{value!r} must be a whole number of {self._unit_name()}", param, ctx)
        if seconds < self.minimum:
            self.fail(
                f"{value!r} is below the minimum of {format_duration(self.minimum)}", param, ctx
            )
        if self.maximum is not None and seconds > self.maximum:
            self.fail(
                f"{value!r} is above the maximum of {format_duration(self.maximum)}", param, ctx
            )
        return seconds

    def _unit_name(self) -> str:
        return {"us": "microseconds", "ms": "milliseconds", "s": "seconds"}[self.granularity]
