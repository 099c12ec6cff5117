"""The ``tcpecho`` command line: each command parses its options into a typed config and runs it.

One module per command (``server``, ``client``, ``explain``, ``watch``, ``lab``, ``bench``).
Options that several commands share are declared once (``options``) and handed to the
command as typed values (``TcpOptions``, ``Deadlines``); the parameter types only parse
(``params``), and the settings check themselves. Every option is also an environment variable,
``TCPECHO_<COMMAND>_<OPTION>``, which is how the Kubernetes manifests set them. Bad values
end in click's usage error and exit status 2; runtime failures (refused, unreachable,
timed out) are logged and end in exit status 1. The server, client, lab and bench
machinery is imported only when its command runs, so ``--help`` stays fast.

The public names (``__all__``), for the scripts beside the package (cluster/, cookbook/,
benchmarks/) and any other click program; the modules behind them are the CLI's own:

- ``main``: the ``tcpecho`` command group; ``ENVVAR_PREFIX``: its environment variables'
  prefix (``TCPECHO_<COMMAND>_<OPTION>``).
- ``Duration``: the click parameter type of every duration option: a Go duration (``500ms``,
  ``30s``, ``1m30s``) as float seconds; it only parses, the settings check the value.
- ``settings_errors``: a context manager that turns a ``SettingError`` raised inside it into
  click's usage error on the option (or environment variable) that gave the value.
- ``client_settings_from_environment``: the ``TcpOptions`` and ``Deadlines`` that ``tcpecho
  client`` takes from ``TCPECHO_CLIENT_*`` variables, read by the client's own declarations.
"""

from __future__ import annotations

from typing import Any

import click

from tcpecho import streams
from tcpecho.cli.bench import bench
from tcpecho.cli.client import client
from tcpecho.cli.explain import explain
from tcpecho.cli.lab import client_settings_from_environment, lab
from tcpecho.cli.options import settings_errors
from tcpecho.cli.params import Duration
from tcpecho.cli.server import server
from tcpecho.cli.watch import watch

__all__ = [
    "ENVVAR_PREFIX",
    "Duration",
    "client_settings_from_environment",
    "main",
    "settings_errors",
]

ENVVAR_PREFIX = "TCPECHO"


class _Tcpecho(click.Group):
    """The command group, run with standard streams that cannot take a socket's place or
    turn a finished command's exit status into 120 (see ``streams``)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        streams.secure_standard_streams()
        try:
            return super().main(*args, **kwargs)
        finally:
            streams.discard_unflushed_stdout()


def _print_version(ctx: click.Context, asked: bool) -> None:
    """--version, looked up only when asked for (the lookup is slow to import)."""
    if not asked or ctx.resilient_parsing:
        return
    from tcpecho import __version__

    click.echo(f"tcpecho, version {__version__}")
    ctx.exit()


@click.group(
    cls=_Tcpecho,
    context_settings={
        "auto_envvar_prefix": ENVVAR_PREFIX,
        "help_option_names": ["-h", "--help"],
        "show_default": True,
        "max_content_width": 100,
    },
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, param, value: _print_version(ctx, value),
    help="Show the version and exit.",
)
def main() -> None:
    """A TCP echo server and client for seeing, and fixing, the 15-minute hang after a peer
    vanishes (a force-deleted Kubernetes pod behind a ClusterIP service)."""


for _command in (server, client, explain, watch, lab, bench):
    main.add_command(_command)
