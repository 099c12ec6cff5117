"""``tcpecho explain``: the client's own TCP and deadline options, explained before they run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from tcpecho.cli.options import deadline_options, environment_epilog, tcp_options
from tcpecho.cli.params import BOOLEAN, Duration, LazyChoice, option

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tcpecho.explain import PathContext
    from tcpecho.settings import Deadlines
    from tcpecho.tcp.options import TcpOptions

EPILOG = environment_epilog("explain", "USER_TIMEOUT=30s")


def _path_names() -> Sequence[str]:
    from tcpecho.model.paths import PATH_NAMES

    return PATH_NAMES


@click.command(epilog=EPILOG)
@option("--json", "json_output", is_flag=True, type=BOOLEAN, help="Print one JSON object.")
@option(
    "--path",
    "path_name",
    type=LazyChoice(_path_names),
    default=None,
    help="The middlebox on the path with the shortest idle timeout, by name (its vendor's "
    "default); adds the idle-expiry scenario.",
)
@option(
    "--path-idle-timeout",
    type=Duration(),
    default=None,
    help="The shortest idle timeout of any middlebox on the path, instead of --path.",
)
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
    path_name: str | None,
    path_idle_timeout: float | None,
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

    path = _path_context(path_name, path_idle_timeout, outage, via_proxy)
    if recommend or detect_within is not None or survive_outage is not None:
        _recommend(json_output, detect_within, survive_outage, path, tcp, deadlines)
        return
    explanation = explaining.explain(KernelSettings.here(), tcp, deadlines, path)
    if json_output:
        write_stdout(json.dumps(explaining.to_json(explanation), indent=2))
    else:
        write_stdout(explaining.render(explanation))


def _path_context(
    path_name: str | None, idle_timeout_s: float | None, outage_s: float | None, via_proxy: bool
) -> PathContext:
    """The path as the options describe it; --path and --path-idle-timeout both name its
    idle timeout, so only one of them may be given."""
    from tcpecho.explain import PathContext
    from tcpecho.model.paths import PATHS

    if path_name is not None and idle_timeout_s is not None:
        raise click.UsageError("give --path or --path-idle-timeout, not both")
    for flag, seconds in (("--path-idle-timeout", idle_timeout_s), ("--outage", outage_s)):
        if seconds is not None and seconds <= 0:
            raise click.UsageError(f"{flag} must be more than 0s")
    if path_name is not None:
        preset = PATHS[path_name]
        return PathContext(preset.idle_timeout_s, preset.resets, preset.name, outage_s, via_proxy)
    return PathContext(idle_timeout_s, False, None, outage_s, via_proxy)


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
