"""Byte sizes on the command line (``1024``, ``1KiB``, ``64KiB``, ``1MiB``) as a click type.

Powers of two throughout: ``K`` and ``KiB`` both mean 1024 bytes, since buffer and message
sizes are thought of that way; a bare number is bytes.
"""

from __future__ import annotations

import re

import click

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``, or ``ValueError`` saying why it is not a size."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: give bytes, or a number with KiB or MiB")
    return int(match.group(1)) * _UNITS[unit]


class ByteSize(click.ParamType[int]):
    """A click parameter type for a bounded byte size."""

    name = "size"

    def __init__(self, *, minimum: int = 1, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "SIZE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            size = value
        else:
            try:
                size = parse_size(str(value))
            except ValueError as error:
                self.fail(str(error), param, ctx)
        if size < self.minimum:
            self.fail(f"{value!r} is below the minimum of {self.minimum} bytes", param, ctx)
        if self.maximum is not None and size > self.maximum:
            self.fail(f"{value!r} is above the maximum of {self.maximum} bytes", param, ctx)
        return size
