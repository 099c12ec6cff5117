"""Byte sizes (``1024``, ``1KiB``, ``64KiB``, ``1MiB``): the one parser and formatter.

Powers of two throughout: ``K`` and ``KiB`` both mean 1024 bytes, since buffer and message
sizes are thought of that way; a bare number is bytes.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``, or ``ValueError`` saying why it is not a size."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: give bytes, or a number with KiB or MiB")
    return int(match.group(1)) * _UNITS[unit]


def format_size(size: int) -> str:
    """Bytes the way users type them: ``16MiB``, ``64KiB``, ``1000`` (bytes)."""
    for unit, factor in (("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
