"""Client profiles: named sets of ``tcpecho client`` flags, each a mitigation to compare.

Each profile runs *active* (a request every second: data is unacknowledged when the peer
vanishes) and, where it matters, *idle* (one request an hour: only keepalive can notice).
The flags are parsed by the client command itself, so the lab predicts from exactly the
settings the client will run with, and a custom profile gets the client's own errors.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from tcpecho.timing import Activity, ConnectionSettings

ACTIVE_INTERVAL = "1s"
IDLE_INTERVAL = "1h"
# The lab decides these for every client; a custom profile must leave them alone.
LAB_OWNED_OPTIONS = ("--server", "--port", "--interval", "--count", "--retries", "--log-format")

# A 10 s idle time leaves the lab room to inject the fault before the first probe even on
# a busy machine (an answered probe would restart the kernel's idle clock). With the user
# timeout as well, probing ends at the first probe past it (11 s) instead of after
# 10 + 3 x 1 = 13 s: KEEPCNT no longer counts.
_KEEPALIVE = ("--keepalive-idle", "10s", "--keepalive-interval", "1s", "--keepalive-count", "3")
_USER_TIMEOUT = ("--user-timeout", "5s")


@dataclass(frozen=True)
class Profile:
    name: str
    args: tuple[str, ...]
    activities: tuple[Activity, ...] = (Activity.ACTIVE, Activity.IDLE)

    def connection_settings(self) -> ConnectionSettings:
        return connection_settings(self.args)


PROFILES = {
    profile.name: profile
    for profile in (
        Profile("default", ()),
        Profile("user-timeout", _USER_TIMEOUT),
        Profile("keepalive", _KEEPALIVE),
        Profile("keepalive+user-timeout", _KEEPALIVE + _USER_TIMEOUT),
        Profile("read-timeout", ("--read-timeout", "3s"), (Activity.ACTIVE,)),
        Profile("recverr", ("--recverr",), (Activity.ACTIVE,)),
    )
}


def custom_profile(args: str) -> Profile:
    """A profile from ``--client-args``; ``click.UsageError`` if the client would refuse it."""
    parts = tuple(shlex.split(args))
    for part in parts:
        option = part.split("=", 1)[0]
        if option in LAB_OWNED_OPTIONS:
            raise click.UsageError(
                f"--client-args must not set {option}: the lab sets "
                f"{', '.join(LAB_OWNED_OPTIONS)} for every client"
            )
    connection_settings(parts)  # refuse now what the client would refuse later
    return Profile("custom", parts)


def connection_settings(args: tuple[str, ...]) -> ConnectionSettings:
    """The settings ``tcpecho client ARGS`` would run with, parsed by the client command."""
    from tcpecho import cli

    try:
        context = cli.client.make_context("client", list(args))
    except click.ClickException as error:
        raise click.UsageError(f"--client-args: {error.format_message()}") from None
    return settings_from_params(context.params)


def settings_from_params(params: Mapping[str, Any]) -> ConnectionSettings:
    """The settings in the parameters of a parsed ``tcpecho client`` command line."""
    from tcpecho import cli

    tcp = cli.build_tcp_options(
        user_timeout=params["user_timeout"],
        keepalive=params["keepalive"],
        keepalive_idle=params["keepalive_idle"],
        keepalive_interval=params["keepalive_interval"],
        keepalive_count=params["keepalive_count"],
        recverr=params["recverr"],
        syn_retries=params["syn_retries"],
    )
    return ConnectionSettings.of(tcp, read_timeout_s=params["read_timeout"])
