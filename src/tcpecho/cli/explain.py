"""``tcpecho explain``: the client's own TCP and deadline options, explained before they run."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import click

from tcpecho.cli.options import deadline_options, environment_epilog, path_options, tcp_options
from tcpecho.cli.params import BOOLEAN, Duration, option

if TYPE_CHECKING:
    from tcpecho.explain import PathContext
    from tcpecho.settings import Deadlines
    from tcpecho.tcp.options import TcpOptions

EPILOG = environment_epilog("explain", "USER_TIMEOUT=30s")


@click.command(epilog=EPILOG)
@option("--json", "json_output", is_flag=True, type=BOOLEAN, help="Print one JSON object.")
@path_options("adds the idle-expiry scenario")
@option(
    "--outage",
    type=Duration(),
    default=None,
    help="A network outage the connection must survive; adds the partition scenario.",
)
@option(
    "--via-proxy",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="The app talks to a proxy in its pod (a sidecar); adds the sidecar scenario.",
)
@option(
    "--recommend",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Instead of explaining options, choose them: the settings that meet --detect-within, "
    "--survive-outage and the path's idle timeout.",
)
@option(
    "--detect-within",
    type=Duration(),
    default=None,
    help="--recommend: a dead peer must be noticed within this, busy and idle.",
)
@option(
    "--survive-outage",
    type=Duration(),
    default=None,
    help="--recommend: an outage this long must not cut a connection.",
)
@tcp_options(connect=True)
@deadline_options
def explain(
    json_output: bool,
    path: PathContext,
    outage: float | None,
    via_proxy: bool,
    recommend: bool,
    detect_within: float | None,
    survive_outage: float | None,
    tcp: TcpOptions,
    deadlines: Deadlines,
) -> None:
    """When would a client with these options notice a vanished peer, on this host?

    Takes exactly the client's TCP and deadline options, reads this network namespace's
    sysctls, and prints for each scenario (busy, idle, unreachable, connect,
    stalled-reader) the expected time to detection and why, then the traps the options
    fall into, each with its fix. The lab and the client's live view use the same model."""
    from tcpecho import explain as explaining
    from tcpecho.model import KernelSettings
    from tcpecho.streams import write_stdout

    if outage is not None and outage <= 0:
        raise click.UsageError("--outage must be more than 0s")
    path = dataclasses.replace(path, outage_s=outage, via_proxy=via_proxy)
    if recommend or detect_within is not None or survive_outage is not None:
        _recommend(json_output, detect_within, survive_outage, path, tcp, deadlines)
        return
    explanation = explaining.explain(KernelSettings.here(), tcp, deadlines, path)
    if json_output:
        write_stdout(json.dumps(explaining.to_json(explanation), indent=2))
    else:
        write_stdout(explaining.render(explanation))


def _recommend(
    json_output: bool,
    detect_within_s: float | None,
    survive_outage_s: float | None,
    path: PathContext,
    tcp: TcpOptions,
    deadlines: Deadlines,
) -> None:
    """--recommend: the settings for the constraints, or the conflict (exit 1)."""
    from tcpecho import recommend as recommending
    from tcpecho.model import KernelSettings
    from tcpecho.settings import Deadlines
    from tcpecho.streams import write_stdout
    from tcpecho.tcp.options import TcpOptions

    if detect_within_s is None:
        raise click.UsageError("--recommend needs --detect-within")
    if tcp != TcpOptions() or deadlines != Deadlines():
        raise click.UsageError(
            "--recommend chooses the TCP options and deadlines: give only the constraints "
            "(--detect-within, --survive-outage, --path or --path-idle-timeout)"
        )
    for flag, seconds in (
        ("--detect-within", detect_within_s),
        ("--survive-outage", survive_outage_s),
    ):
        if seconds is not None and seconds <= 0:
            raise click.UsageError(f"{flag} must be more than 0s")
    constraints = recommending.Constraints(detect_within_s, survive_outage_s, path)
    try:
        chosen = recommending.recommend(KernelSettings.here(), constraints)
    except recommending.ImpossibleError as error:
        click.echo(f"tcpecho explain: impossible: {error}", err=True)
        raise SystemExit(1) from None
    if json_output:
        write_stdout(json.dumps(recommending.to_json(chosen), indent=2))
    else:
        write_stdout(recommending.render(chosen))
