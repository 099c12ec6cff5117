"""The duration parser: Go syntax in, float seconds out, and clear refusals."""

from __future__ import annotations

import click
import pytest

from tcpecho.durations import Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("0s", 0.0),
        ("0", 0.0),  # Go accepts a bare zero too
    ],
)
def test_parses_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("30", "not a duration"),
        ("abc", "not a duration"),
        ("", "not a duration"),
        ("5 s", "not a duration"),
        ("1.2.3s", "not a duration"),
        ("10parsecs", "not a duration"),
        ("-1s", "negative"),
        ("-0s", "negative"),
    ],
)
def test_refuses_what_is_not_a_non_negative_duration(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


def test_param_type_enforces_granularity_and_bounds() -> None:
    whole_seconds = Duration(minimum=1, maximum=32767, granularity="s")
    assert whole_seconds.convert("2m", None, None) == 120.0
    for bad, message in [
        ("1500ms", "whole number of seconds"),
        ("500ms", "whole number of seconds"),
        ("0s", "below the minimum of 1s"),
        ("32768s", "above the maximum"),
    ]:
        with pytest.raises(click.BadParameter, match=message):
            whole_seconds.convert(bad, None, None)
    milliseconds = Duration(granularity="ms")
    assert milliseconds.convert("1.5s", None, None) == 1.5
    with pytest.raises(click.BadParameter, match="whole number of milliseconds"):
        milliseconds.convert("1500us", None, None)


def test_param_type_passes_converted_defaults_through() -> None:
    assert Duration().convert(2.5, None, None) == 2.5


@pytest.mark.parametrize(("seconds", "text"), [(90.0, "1m30s"), (0.5, "500ms"), (30.0, "30s")])
def test_formats_like_users_type(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == seconds
