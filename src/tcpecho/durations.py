"""Go-style durations (``500ms``, ``30s``, ``1m30s``): the one parser and formatter; and the
one way a measured or predicted number of seconds is shown to people (``format_seconds``).

durationpy parses Go's syntax, so the values users copy from Go programs and Kubernetes
manifests mean the same here. On top of it this module adds what a command line needs: a
unit is required (``30`` is ambiguous) and negatives are refused. Values are float seconds;
the bounds and granularity of each setting are checked where the setting is defined
(``settings.check_duration``).
"""

from __future__ import annotations

import durationpy


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
    """Render seconds the way users type them (``1m30s``, ``500ms``, ``1ms500us``, ``0s``),
    to the microsecond, in text ``parse_duration`` reads back to the same value."""
    micros = round(seconds * 1_000_000)
    if micros == 0:
        return "0s"
    if micros < 1_000_000:
        millis, rest = divmod(micros, 1000)
        return (f"{millis}ms" if millis else "") + (f"{rest}us" if rest else "")
    hours, micros = divmod(micros, 3_600_000_000)
    minutes, micros = divmod(micros, 60_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if fraction:
        # Not "1m1e-06s" (float formatting), which no parser reads: decimal digits.
        text += f"{whole}.{fraction:06d}".rstrip("0") + "s"
    elif whole:
        text += f"{whole}s"
    return text


def format_seconds(seconds: float, *, unit: str = " s", minutes: bool = False) -> str:
    """A measured or predicted time, as precise as it is worth: ``0.41 s``, ``30.4 s``,
    ``929 s`` (two decimals under 10 s, one under 100 s, whole seconds above).

    ``unit`` follows the number (``""`` for the ends of a range). With ``minutes``, the form
    of a column of running times (``ss``, ``kubectl``): tenths under a minute (``3.0s``),
    whole seconds as a duration from a minute on (``15m29s``)."""
    if minutes:
        return f"{seconds:.1f}{unit}" if seconds < 60 else format_duration(round(seconds))
    if round(seconds, 2) < 10:  # rounded first: 9.999 is 10.0, not 10.00
        return f"{seconds:.2f}{unit}"
    return f"{seconds:.1f}{unit}" if round(seconds, 1) < 100 else f"{seconds:.0f}{unit}"
