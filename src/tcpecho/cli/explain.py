"""``tcpecho explain``: the client's own TCP and deadline options, explained before they run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from tcpecho.cli.options import deadline_options, environment_epilog, tcp_options
from tcpecho.cli.params import BOOLEAN, option

if TYPE_CHECKING:
    from tcpecho.settings import Deadlines
    from tcpecho.tcp.options import TcpOptions

EPILOG = environment_epilog("explain", "USER_TIMEOUT=30s")


@click.command(epilog=EPILOG)
@option("--json", "json_output", is_flag=True, type=BOOLEAN, help="Print one JSON object.")
@tcp_options(connect=True)
@deadline_options
def explain(json_output: bool, tcp: TcpOptions, deadlines: Deadlines) -> None:
    """When would a client with these options notice a vanished peer, on this host?

    Takes exactly the client's TCP and deadline options, reads this network namespace's
    sysctls, and prints for each scenario (busy, idle, unreachable, connect,
    stalled-reader) the expected time to detection and why, then the traps the options
    fall into, each with its fix. The lab and the client's live view use the same model."""
    from tcpecho import explain as explaining
    from tcpecho.model import KernelSettings
    from tcpecho.streams import write_stdout

    explanation = explaining.explain(KernelSettings.here(), tcp, deadlines)
    if json_output:
        write_stdout(json.dumps(explaining.to_json(explanation), indent=2))
    else:
        write_stdout(explaining.render(explanation))
