"""Settings: the duration parser (Go syntax in, float seconds out), the checks every setting
makes of itself, and the client's deadlines."""

from __future__ import annotations

from typing import Any

import pytest

from tcpecho.durations import format_duration, format_seconds, parse_duration
from tcpecho.settings import Deadlines, SettingError, check_duration, check_range


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


def test_durations_are_checked_for_granularity_and_bounds() -> None:
    check_duration("idle", 120.0, minimum=1, maximum=32767, step=1)
    for seconds, message in [
        (1.5, "1.5s must be a whole number of seconds"),
        (0.5, "whole number of seconds"),
        (0.0, "0s is below the minimum of 1s"),
        (32768.0, "9h6m8s is above the maximum of 9h6m7s"),
        (-1.0, "negative"),
    ]:
        with pytest.raises(SettingError, match=message) as refused:
            check_duration("idle", seconds, minimum=1, maximum=32767, step=1)
        assert refused.value.setting == "idle"
    check_duration("timeout", 1.5, step=0.001)
    with pytest.raises(SettingError, match="whole number of milliseconds"):
        check_duration("timeout", 0.0015, step=0.001)
    check_duration("anything", None)  # not set: nothing to check


def test_whole_numbers_are_checked_against_their_range() -> None:
    check_range("count", 5, 1, 127)
    check_range("count", None, 1, 127)
    with pytest.raises(SettingError, match="must be between 1 and 127, not 0"):
        check_range("count", 0, 1, 127)
    with pytest.raises(SettingError, match="must be at least -1, not -2"):
        check_range("retries", -2, -1)


def test_deadlines_refuse_zero_and_render_as_flags() -> None:
    with pytest.raises(SettingError, match="below the minimum of 1ms") as refused:
        Deadlines(read_timeout_s=0.0)
    assert refused.value.setting == "read_timeout"
    assert Deadlines().as_flags() == ()
    deadlines = Deadlines(connect_timeout_s=2.5, read_timeout_s=10.0)
    assert deadlines.as_flags() == ("--connect-timeout", "2.5s", "--read-timeout", "10s")


@pytest.mark.parametrize(
    ("seconds", "text"), [(90.0, "1m30s"), (0.5, "500ms"), (30.0, "30s"), (0.0, "0s")]
)
def test_formats_like_users_type(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("seconds", "options", "text"),
    [
        (0.41, {}, "0.41 s"),
        (9.999, {}, "10.0 s"),
        (30.44, {}, "30.4 s"),
        (99.96, {}, "100 s"),
        (929.4, {}, "929 s"),
        (929.4, {"unit": ""}, "929"),
        (3.04, {"unit": "s", "minutes": True}, "3.0s"),
        (929.4, {"unit": "s", "minutes": True}, "15m29s"),
        (7275.0, {"minutes": True}, "2h1m15s"),
    ],
)
def test_a_time_is_shown_as_precisely_as_it_is_worth(
    seconds: float, options: dict[str, Any], text: str
) -> None:
    assert format_seconds(seconds, **options) == text
