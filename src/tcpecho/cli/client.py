"""``tcpecho client``: parse the options into a ``ClientConfig`` and run it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tcpecho import logs, loops
from tcpecho.cli.options import (
    check_loop,
    deadline_options,
    environment_epilog,
    metrics_port_option,
    runtime_options,
    server_endpoint_options,
    settings_errors,
    tcp_options,
)
from tcpecho.cli.params import ByteSize, Duration, option

if TYPE_CHECKING:
    from tcpecho.settings import Deadlines
    from tcpecho.tcp.options import TcpOptions

EPILOG = environment_epilog("client", "USER_TIMEOUT=30s")


@click.command(epilog=EPILOG)
@server_endpoint_options(default_host="server")
@option("--interval", type=Duration(), default="5s", help="Pause between requests.")
@option("--count", type=int, default=0, help="Echoes to complete; 0 = forever.")
@option("--message", default="ping", help="Text sent in each request, after its number.")
@option(
    "--request-size",
    type=ByteSize(),
    default=None,
    help="Pad each request to exactly this many bytes (up to 1024MiB); its echo is read while "
    "it is written. 16MiB fills the TCP windows of a peer that stopped reading. "
    "Default: the number and --message alone.",
)
@deadline_options
@option(
    "--retries",
    type=int,
    default=0,
    help="Reconnect attempts after a failure; -1 = forever; 0 = exit on the first failure.",
)
@option(
    "--retry-backoff",
    type=Duration(),
    default="1s",
    help="First reconnect delay; doubles per attempt, with jitter.",
)
@option("--retry-backoff-max", type=Duration(), default="30s", help="Longest reconnect delay.")
@option(
    "--tcp-info-interval",
    type=Duration(),
    default="1s",
    help="While a request waits longer than this, log the kernel's counters and when it "
    "will give up (waiting_for_response), every interval; 0s: never.",
)
@metrics_port_option
@tcp_options(connect=True)
@runtime_options
def client(
    server: str,
    port: int,
    interval: float,
    count: int,
    message: str,
    request_size: int | None,
    deadlines: Deadlines,
    retries: int,
    retry_backoff: float,
    retry_backoff_max: float,
    tcp_info_interval: float,
    metrics_port: int | None,
    tcp: TcpOptions,
    loop: loops.LoopName,
    log_format: logs.LogFormat,
    log_level: str,
) -> None:
    """Send a numbered request every --interval and check each echo; log how failures are
    detected and how long it took."""
    check_loop(loop)
    from tcpecho.client.client import ClientConfig, run

    with settings_errors():
        config = ClientConfig(
            server=server,
            port=port,
            interval_s=interval,
            count=count,
            message=message,
            request_size=request_size,
            tcp=tcp,
            deadlines=deadlines,
            retries=retries,
            retry_backoff_s=retry_backoff,
            retry_backoff_max_s=retry_backoff_max,
            tcp_info_interval_s=tcp_info_interval,
            metrics_port=metrics_port,
            loop=loop,
        )
    from tcpecho import events

    logs.configure(log_format, log_level, report_dropped=events.report_lines_dropped)
    raise SystemExit(run(config))
