"""The lab's profiles are data; a custom profile is parsed by the client's own declarations."""

from __future__ import annotations

import click
import pytest

from tcpecho.cli.lab import custom_profile
from tcpecho.lab.profiles import PROFILES
from tcpecho.model import Activity
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions


def test_builtin_profiles_carry_the_settings_they_are_named_for() -> None:
    assert PROFILES["default"].tcp == TcpOptions()
    assert PROFILES["user-timeout"].tcp.user_timeout_ms == 5000
    keepalive = PROFILES["keepalive"].tcp
    assert (keepalive.keepalive_enabled, keepalive.keepalive_idle_s) == (True, 10)
    both = PROFILES["keepalive+user-timeout"].tcp
    assert (both.keepalive_enabled, both.user_timeout_ms) == (True, 5000)
    assert PROFILES["read-timeout"].deadlines == Deadlines(read_timeout_s=3.0)
    assert PROFILES["recverr"].tcp.recverr is True


def test_idle_runs_only_where_it_can_differ() -> None:
    assert PROFILES["keepalive"].activities == (Activity.ACTIVE, Activity.IDLE)
    assert PROFILES["read-timeout"].activities == (Activity.ACTIVE,)


def test_a_profile_is_rendered_to_the_clients_flags() -> None:
    assert PROFILES["default"].client_flags() == ()
    assert PROFILES["keepalive+user-timeout"].client_flags() == (
        *("--user-timeout", "5s", "--keepalive-idle", "10s"),
        *("--keepalive-interval", "1s", "--keepalive-count", "3"),
    )
    assert PROFILES["read-timeout"].client_flags() == ("--read-timeout", "3s")


def test_custom_profile_from_client_flags() -> None:
    profile = custom_profile("--user-timeout 1m30s --keepalive --recverr --read-timeout 20s")
    assert profile.name == "custom"
    assert profile.tcp == TcpOptions(user_timeout_ms=90_000, keepalive=True, recverr=True)
    assert profile.deadlines == Deadlines(read_timeout_s=20.0)
    assert profile.client_flags() == (
        *("--user-timeout", "1m30s", "--keepalive", "--recverr", "--read-timeout", "20s"),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--interval 5s", "must not set --interval"),
        ("--server=elsewhere", "must not set --server"),
        ("--user-timeout 30", "not a duration"),
        ("--keepalive-count 500", "--keepalive-count"),
        ("--no-keepalive --keepalive-idle 5s", "need keepalive"),
        ("--message hello", "No such option"),  # only TCP and deadline options make a profile
        ("--bogus", "No such option"),
        ('"--user-timeout 5s', "No closing quotation"),
    ],
)
def test_custom_profile_refuses_what_the_client_or_the_lab_would(args: str, message: str) -> None:
    with pytest.raises(click.UsageError, match=message):
        custom_profile(args)
