"""``tcpecho server``: parse the options into a ``ServerConfig`` and run one process or many."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tcpecho import logs, loops
from tcpecho.cli.options import (
    check_loop,
    environment_epilog,
    metrics_port_option,
    runtime_options,
    settings_errors,
    tcp_options,
)
from tcpecho.cli.params import BOOLEAN, Duration, option

if TYPE_CHECKING:
    from tcpecho.tcp.options import TcpOptions

EPILOG = environment_epilog("server", "CATCH_SIGTERM=true")


@click.command(epilog=EPILOG)
@option("--host", default="0.0.0.0", help="Address to listen on; '::' takes IPv6 and IPv4.")  # noqa: S104
@option("--port", type=int, default=8000, help="TCP port (0: any free port).")
@option(
    "--catch-sigterm",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Ignore SIGTERM (logging each one), as the original reproduction's server does; "
    "SIGINT still stops the server.",
)
@option(
    "--shutdown-timeout",
    type=Duration(),
    default="10s",
    help="On SIGTERM/SIGINT: time for echoes under way to finish before connections are cut.",
)
@option(
    "--workers",
    type=int,
    default=1,
    help="Server processes sharing the port (SO_REUSEPORT), for machines with cores to "
    "spare; no gain on 2 cores.",
)
@option(
    "--backlog",
    type=int,
    default=4096,
    help="Listening backlog: connections completed before they are accepted; Linux caps it "
    "at net.core.somaxconn.",
)
@option(
    "--max-connections",
    type=int,
    default=None,
    help="Open connections at most; one more is closed at once and logged. Default: no limit.",
)
@option(
    "--idle-timeout",
    type=Duration(),
    default=None,
    help="Close a connection that has echoed nothing for this long. Default: off.",
)
@metrics_port_option
@tcp_options(connect=False)
@runtime_options
def server(
    host: str,
    port: int,
    catch_sigterm: bool,
    shutdown_timeout: float,
    workers: int,
    backlog: int,
    max_connections: int | None,
    idle_timeout: float | None,
    metrics_port: int | None,
    tcp: TcpOptions,
    loop: loops.LoopName,
    log_format: logs.LogFormat,
    log_level: str,
) -> None:
    """Echo every byte back (RFC 862), with backpressure and graceful shutdown."""
    check_loop(loop)
    from tcpecho.server import server as one_process

    with settings_errors():
        config = one_process.ServerConfig(
            host=host,
            port=port,
            tcp=tcp,
            catch_sigterm=catch_sigterm,
            shutdown_timeout_s=shutdown_timeout,
            loop=loop,
            workers=workers,
            backlog=backlog,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout,
            metrics_port=metrics_port,
        )
    from tcpecho import events

    logs.configure(log_format, log_level, report_dropped=events.report_lines_dropped)
    if config.workers == 1:
        raise SystemExit(one_process.run(config))
    from tcpecho.server import supervisor

    raise SystemExit(supervisor.run(config))
