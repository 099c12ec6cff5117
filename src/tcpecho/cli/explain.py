"""``tcpecho explain``: the client's own TCP and deadline options, explained before they run."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import click

from tcpecho.cli.options import deadline_options, environment_epilog, path_options, tcp_options
from tcpecho.cli.params import BOOLEAN, Duration, LazyChoice, option

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tcpecho.explain import PathContext
    from tcpecho.settings import Deadlines
    from tcpecho.tcp.options import TcpOptions

EPILOG = environment_epilog("explain", "USER_TIMEOUT=30s")


def _stack_names() -> Sequence[str]:
    from tcpecho.stacks import STACK_NAMES

    return STACK_NAMES


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
    "--ip-reuse-after",
    type=Duration(),
    default=None,
    help="A new pod takes a vanished peer's IP this long after it vanished; adds the "
    "ip-reuse scenario.",
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
@option(
    "--stack",
    "stack_name",
    type=LazyChoice(_stack_names),
    default=None,
    help="A client library: explain its defaults (with --stack-options over them), or, with "
    "--recommend, give the settings in its own words.",
)
@option(
    "--stack-options",
    default=None,
    help="The library's own settings, in its own syntax (libpq: \"keepalives_idle=10 "
    'tcp_user_timeout=5000").',
)
@tcp_options(connect=True)
@deadline_options
def explain(
    json_output: bool,
    path: PathContext,
    outage: float | None,
    ip_reuse_after: float | None,
    via_proxy: bool,
    recommend: bool,
    detect_within: float | None,
    survive_outage: float | None,
    stack_name: str | None,
    stack_options: str | None,
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

    for flag, seconds in (("--outage", outage), ("--ip-reuse-after", ip_reuse_after)):
        if seconds is not None and seconds <= 0:
            raise click.UsageError(f"{flag} must be more than 0s")
    path = dataclasses.replace(
        path, outage_s=outage, via_proxy=via_proxy, ip_reuse_after_s=ip_reuse_after
    )
    if stack_options is not None and stack_name is None:
        raise click.UsageError("--stack-options needs --stack")
    if recommend or detect_within is not None or survive_outage is not None:
        if stack_options is not None:
            raise click.UsageError("--recommend chooses the settings: give no --stack-options")
        _recommend(json_output, detect_within, survive_outage, path, tcp, deadlines, stack_name)
        return
    stack = None
    if stack_name is not None:
        tcp, deadlines, stack = _stack_settings(stack_name, stack_options, tcp, deadlines)
    explanation = explaining.explain(KernelSettings.here(), tcp, deadlines, path)
    if json_output:
        document = explaining.to_json(explanation)
        if stack is not None:
            document["stack"] = stack
        write_stdout(json.dumps(document, indent=2))
    else:
        shown = explaining.render(explanation)
        if stack is not None:
            shown = f"stack: {stack['library']}: {stack['settings']}\n{shown}"
        write_stdout(shown)


def _stack_settings(
    name: str, text: str | None, tcp: TcpOptions, deadlines: Deadlines
) -> tuple[TcpOptions, Deadlines, dict[str, str]]:
    """A library's defaults, with its own settings (``text``) over them, as tcpecho's
    options; and how the library says them."""
    from tcpecho.settings import Deadlines
    from tcpecho.stacks import STACKS, StackSyntaxError, read
    from tcpecho.tcp.options import TcpOptions

    if tcp != TcpOptions() or deadlines != Deadlines():
        raise click.UsageError(
            "--stack takes the library's settings from --stack-options, not tcpecho's flags"
        )
    stack = STACKS[name]
    try:
        tcp, deadlines = read(stack, text)
    except StackSyntaxError as error:
        example = f" (for example: {stack.syntax})" if stack.syntax else ""
        raise click.BadParameter(f"{error}{example}", param_hint="'--stack-options'") from None
    shown = {"name": name, "library": stack.library, "settings": stack.render(tcp, deadlines)}
    return tcp, deadlines, shown


def _recommend(
    json_output: bool,
    detect_within_s: float | None,
    survive_outage_s: float | None,
    path: PathContext,
    tcp: TcpOptions,
    deadlines: Deadlines,
    stack_name: str | None = None,
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
    from tcpecho.stacks import STACKS

    library = None if stack_name is None else STACKS[stack_name]
    constraints = recommending.Constraints(detect_within_s, survive_outage_s, path)
    try:
        chosen = recommending.recommend(
            KernelSettings.here(),
            constraints,
            None if library is None else library.ping,
        )
    except recommending.ImpossibleError as error:
        click.echo(f"tcpecho explain: impossible: {error}", err=True)
        raise SystemExit(1) from None
    stack = None
    if library is not None:
        stack = {
            "name": library.name,
            "library": library.library,
            "settings": library.render(chosen.tcp, chosen.deadlines),
        }
    if json_output:
        document = recommending.to_json(chosen)
        document["stack"] = stack
        write_stdout(json.dumps(document, indent=2))
    else:
        shown = recommending.render(chosen)
        if stack is not None:
            shown = shown.replace(
                "\n\npredicted:", f"\n  {stack['name']}: {stack['settings']}\n\npredicted:", 1
            )
        write_stdout(shown)
