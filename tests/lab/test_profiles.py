"""Client profiles: parsed by the client command itself, so the model sees what the client runs."""

from __future__ import annotations

import click
import pytest

from tcpecho import cli
from tcpecho.lab.faults import Fault
from tcpecho.lab.profiles import PROFILES, custom_profile
from tcpecho.timing import Activity, ConnectionSettings


def test_builtin_profiles_carry_the_settings_they_are_named_for() -> None:
    assert PROFILES["default"].connection_settings() == ConnectionSettings()
    assert PROFILES["user-timeout"].connection_settings().user_timeout_s == 5.0
    keepalive = PROFILES["keepalive"].connection_settings()
    assert (keepalive.keepalive, keepalive.keepalive_idle_s) == (True, 10)
    both = PROFILES["keepalive+user-timeout"].connection_settings()
    assert (both.keepalive, both.user_timeout_s) == (True, 5.0)
    assert PROFILES["read-timeout"].connection_settings().read_timeout_s == 3.0
    assert PROFILES["recverr"].connection_settings().recverr is True


def test_idle_runs_only_where_it_can_differ() -> None:
    assert PROFILES["keepalive"].activities == (Activity.ACTIVE, Activity.IDLE)
    assert PROFILES["read-timeout"].activities == (Activity.ACTIVE,)


def test_custom_profile_from_client_flags() -> None:
    profile = custom_profile("--user-timeout 1m30s --keepalive --recverr")
    assert profile.name == "custom"
    assert profile.args == ("--user-timeout", "1m30s", "--keepalive", "--recverr")
    assert profile.connection_settings() == ConnectionSettings(
        user_timeout_s=90.0, keepalive=True, recverr=True
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--interval 5s", "must not set --interval"),
        ("--server=elsewhere", "must not set --server"),
        ("--user-timeout 30", "not a duration"),
        ("--keepalive-count 500", "--keepalive-count"),
        ("--no-keepalive --keepalive-idle 5s", "need keepalive"),
        ("--bogus", "No such option"),
    ],
)
def test_custom_profile_refuses_what_the_client_or_the_lab_would(args: str, message: str) -> None:
    with pytest.raises(click.UsageError, match=message):
        custom_profile(args)


def test_the_command_line_offers_exactly_the_labs_faults_and_profiles() -> None:
    """cli.py spells the names out so that --help does not import the lab: keep them equal."""
    assert tuple(fault.value for fault in Fault) == cli.FAULT_NAMES
    assert tuple(PROFILES) == cli.PROFILE_NAMES
