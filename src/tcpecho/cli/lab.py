"""``tcpecho lab``: parse the matrix (faults, profiles, kernel budget) into a ``LabConfig``.

A custom profile comes as client flags (``--client-args``); they are parsed once, here, by
the client's own TCP and deadline declarations, into the same data as the named profiles.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tcpecho.cli.options import (
    deadline_options,
    environment_epilog,
    settings_errors,
    tcp_options,
)
from tcpecho.cli.params import BOOLEAN, Duration, LazyChoice, Option, option

if TYPE_CHECKING:
    from tcpecho.experiment import Profile
    from tcpecho.settings import Deadlines
    from tcpecho.tcp.options import TcpOptions

EPILOG = """\b
Examples:
  sudo tcpecho lab --quick --json out/lab.json --plot out/lab.png
  sudo tcpecho lab --fault force-delete --client-args "--user-timeout 10s --keepalive"
  sudo tcpecho lab --fault partition --outage 20s --client-args "--user-timeout 30s"
  sudo tcpecho lab --fault force-delete \\
      --client-cmd 'pinger=while :; do echo ping; sleep 1; done | socat - TCP:{host}:{port}'

""" + environment_epilog("lab", "QUICK=true")


def _fault_names() -> Sequence[str]:
    from tcpecho.experiment import Fault

    return [str(fault) for fault in Fault]


def _server_names() -> Sequence[str]:
    from tcpecho.lab.servers import PRESETS

    return list(PRESETS)


def _profile_names() -> Sequence[str]:
    from tcpecho.lab.profiles import PROFILES

    return list(PROFILES)


@click.command(epilog=EPILOG)
@option(
    "--fault",
    "faults",
    multiple=True,
    type=LazyChoice(_fault_names),
    help="Fault to inject (repeat for several; default: all).",
)
@option(
    "--profile",
    "profiles",
    multiple=True,
    type=LazyChoice(_profile_names),
    help="Client profile (repeat for several; default: all, or none with --client-args or "
    "--client-cmd).",
)
@option(
    "--client-args",
    multiple=True,
    help="A custom profile: the client's TCP and deadline options, quoted as one argument "
    "(see the examples below); repeat for several.",
)
@option(
    "--client-cmd",
    "client_commands",
    multiple=True,
    help="Any program as the client, a shell command line ({host} and {port}: the service; "
    "also $TCPECHO_LAB_HOST, $TCPECHO_LAB_PORT), named NAME=CMD or after itself; repeatable. "
    "The lab watches its socket, not its output. Without --profile, no built-in profile runs "
    "beside it.",
)
@option(
    "--server-cmd",
    "server_command",
    default=None,
    help="Any program as the server, in every case: a shell command line listening on {port}.",
)
@option(
    "--server-preset",
    "server_preset",
    type=LazyChoice(_server_names),
    default=None,
    help="A server set up for you, in every case: postgres, redis, mariadb (each a throwaway "
    "data directory, trust for the lab's pods, its own user), grpc or http; not with "
    "--server-cmd.",
)
@option(
    "--program-timeout",
    type=Duration(),
    default=None,
    help="How long a --client-cmd or --server-cmd program may take to be ready (talking to "
    "the service, listening on {port}); default: 10s while it holds no socket and uses no "
    "CPU, 60s in all.",
)
@option(
    "--path-idle-timeout",
    type=Duration(),
    default="15s",
    help="idle-expiry: the node forgets a flow idle this long (whole seconds, 2s-1h).",
)
@option(
    "--outage",
    type=Duration(),
    default="9s",
    help="partition: the path drops everything this long, then heals (1s-1h).",
)
@option(
    "--ip-reuse-after",
    type=Duration(),
    default="3s",
    help="ip-reuse: a new pod takes the vanished pod's IP this long after the fault (0.5s-1h).",
)
@option(
    "--quick",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Shorten only the baseline's ~15.5 min kernel budget (tcp_rto_max_ms, or "
    "tcp_retries2 on kernels before 6.15) so the whole matrix takes under a minute.",
)
@option(
    "--tcp-retries2",
    type=int,
    default=None,
    help="Set net.ipv4.tcp_retries2 in every client namespace (1-100).",
)
@option(
    "--rto-max",
    type=Duration(),
    default=None,
    help="Set net.ipv4.tcp_rto_max_ms in every client namespace (1s-2m; Linux >= 6.15).",
)
@option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write every case, prediction and log event to this file.",
)
@option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Draw detection times as a PNG bar chart (needs tcpecho[plot]).",
)
@option(
    "--cleanup",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Only remove what killed lab runs left behind (namespaces, their rules and processes).",
)
def lab(
    faults: tuple[str, ...],
    profiles: tuple[str, ...],
    client_args: tuple[str, ...],
    client_commands: tuple[str, ...],
    server_command: str | None,
    server_preset: str | None,
    program_timeout: float | None,
    path_idle_timeout: float,
    outage: float,
    ip_reuse_after: float,
    quick: bool,
    tcp_retries2: int | None,
    rto_max: float | None,
    json_path: Path | None,
    plot_path: Path | None,
    cleanup: bool,
) -> None:
    """Reproduce the vanished-peer hang in network namespaces and compare the mitigations.

    Each case builds a client pod, a node with kube-proxy-style DNAT and a server pod in
    fresh network namespaces, runs the real server and client, injects the fault and
    measures when the client notices, next to what the kernel model predicts. Needs root,
    ip and nft."""
    from tcpecho.experiment import Fault, FaultTiming
    from tcpecho.lab import main as lab_main
    from tcpecho.lab.programs import StartupTimeouts
    from tcpecho.lab.runner import KernelBudget

    chosen = chosen_profiles(profiles, client_args, client_commands)
    _check_server_preset(server_preset, server_command)
    with settings_errors():
        budget = KernelBudget(
            quick=quick,
            tcp_retries2=tcp_retries2,
            rto_max_ms=None if rto_max is None else round(rto_max * 1000),
        )
        config = lab_main.LabConfig(
            faults=tuple(Fault(name) for name in faults) or tuple(Fault),
            profiles=tuple(chosen),
            paired=not (profiles or client_args or client_commands),
            timing=FaultTiming(
                path_idle_timeout_s=path_idle_timeout,
                outage_s=outage,
                reuse_after_s=ip_reuse_after,
            ),
            budget=budget,
            json_path=json_path,
            plot_path=plot_path,
            server_command=server_command,
            server_preset=server_preset,
            program_startup=StartupTimeouts.given(program_timeout),
        )
    lab_main.check_requirements(plot=plot_path is not None, rto_max=rto_max is not None)
    if cleanup:
        raise SystemExit(lab_main.cleanup())
    raise SystemExit(lab_main.run(config))


def _check_server_preset(preset: str | None, server_command: str | None) -> None:
    """A usage error for ``--server-preset`` beside ``--server-cmd``, or for a preset whose server
    this machine lacks (naming what installs it)."""
    if preset is None:
        return
    if server_command is not None:
        raise click.UsageError("--server-preset and --server-cmd both name the server: give one")
    from tcpecho.lab.servers import missing

    lacking = missing(preset)
    if lacking is not None:
        raise click.UsageError(f"--server-preset {preset}: {lacking}")


def chosen_profiles(
    profiles: Sequence[str], client_args: Sequence[str], client_commands: Sequence[str]
) -> list[Profile]:
    """The built-in profiles named by ``--profile``, then the custom ones (``--client-args``)
    and the programs (``--client-cmd``). Without ``--profile``: every built-in profile, unless
    a custom profile or a program is given, which then runs alone."""
    from tcpecho.lab.profiles import PROFILES

    custom = client_args or client_commands
    chosen = [PROFILES[name] for name in (profiles or (() if custom else PROFILES))]
    for number, args in enumerate(client_args, start=1):
        chosen.append(
            custom_profile(args, "custom" if len(client_args) == 1 else f"custom-{number}")
        )
    return chosen + program_profiles(tuple(client_commands))


def custom_profile(text: str, name: str = "custom") -> Profile:
    """The profile ``--client-args`` describes; a usage error for what the client refuses."""
    from tcpecho.experiment import Profile
    from tcpecho.lab.profiles import LAB_OWNED_OPTIONS

    try:
        parts = shlex.split(text)
    except ValueError as error:
        raise click.UsageError(f"--client-args: {error}") from None
    for part in parts:
        flag = part.split("=", 1)[0]
        if flag in LAB_OWNED_OPTIONS:
            raise click.UsageError(
                f"--client-args must not set {flag}: the lab sets "
                f"{', '.join(LAB_OWNED_OPTIONS)} for every client"
            )
    try:
        tcp, deadlines = _client_settings.main(
            parts, prog_name="--client-args", standalone_mode=False
        )
    except click.ClickException as error:
        raise click.UsageError(f"--client-args: {error.format_message()}") from None
    return Profile(name, tcp, deadlines)


def client_settings_from_environment(
    environment: Mapping[str, str],
) -> tuple[TcpOptions, Deadlines]:
    """The TCP options and deadlines that ``tcpecho client`` takes from ``environment`` (its
    ``TCPECHO_CLIENT_*`` variables, as a pod sets them), read by the client's own
    declarations: a value the client would refuse is a usage error naming the variable."""
    # The prefix `tcpecho client` reads (tcpecho.cli's ENVVAR_PREFIX and the command's name).
    ctx = click.Context(_client_settings, auto_envvar_prefix="TCPECHO_CLIENT")
    given: dict[str, str] = {}
    for param in _client_settings.params:
        variable = param.environment_variable(ctx) if isinstance(param, Option) else None
        if variable and environment.get(variable) and param.name:
            given[param.name] = environment[variable]
    try:
        tcp, deadlines = _client_settings.main(
            [], prog_name="the client's environment", standalone_mode=False, default_map=given
        )
    except click.ClickException as error:
        raise click.UsageError(f"the client's environment: {error.format_message()}") from None
    return tcp, deadlines


def program_profiles(commands: tuple[str, ...]) -> list[Profile]:
    """A profile for each ``--client-cmd``: the program, watched busy or idle as it runs."""
    from tcpecho.experiment import Profile
    from tcpecho.lab.programs import program_names
    from tcpecho.model import Activity

    profiles = []
    for name, command in program_names(commands):
        if not command.strip():
            raise click.BadParameter("is empty", param_hint="'--client-cmd'")
        profiles.append(Profile(name, command=command, activities=(Activity.ACTIVE,)))
    return profiles


@click.command(add_help_option=False)
@tcp_options(connect=True)
@deadline_options
def _client_settings(tcp: TcpOptions, deadlines: Deadlines) -> tuple[TcpOptions, Deadlines]:
    """The client's TCP and deadline options alone: what a lab profile is made of."""
    return tcp, deadlines
