"""``tcpecho bench``: parse the options into a ``BenchConfig`` and run the load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import click

from tcpecho import loops
from tcpecho.cli.options import (
    check_loop,
    environment_epilog,
    loop_option,
    server_endpoint_options,
    settings_errors,
    tcp_options,
)
from tcpecho.cli.params import BOOLEAN, ByteSize, Duration, option

if TYPE_CHECKING:
    from tcpecho.tcp.options import TcpOptions

EPILOG = environment_epilog("bench", "CONNECTIONS=100")


@click.command(epilog=EPILOG)
@server_endpoint_options(default_host="127.0.0.1")
@option(
    "--mode",
    type=click.Choice(["pingpong", "bulk"]),
    default="pingpong",
    help="pingpong: send --size bytes, wait for their echo, repeat (requests/s, latency). "
    "bulk: stream --size chunks both ways at once (MB/s).",
)
@option("--connections", type=int, default=10, help="Connections held open.")
@option("--size", type=ByteSize(), default="1KiB", help="Request or chunk size (up to 16MiB).")
@option("--duration", type=Duration(), default="10s", help="Length of the measured window.")
@option(
    "--requests",
    type=int,
    default=None,
    help="Stop after this many measured ping-pong requests (or at --duration, if sooner).",
)
@option("--warmup", type=Duration(), default="1s", help="Load before measuring starts.")
@option(
    "--timeout",
    type=Duration(),
    default="5s",
    help="A connect or an echo taking longer is counted as an error (and the connection is "
    "opened anew).",
)
@option(
    "--processes",
    type=int,
    default=1,
    help="Processes to split the connections between, to use more cores.",
)
@option(
    "--json", "json_output", is_flag=True, type=BOOLEAN, help="Print the report as one JSON object."
)
@option(
    "--progress/--no-progress",
    type=BOOLEAN,
    default=True,
    help="A progress line on stderr every second.",
)
@tcp_options(connect=True)
@loop_option
def bench(
    server: str,
    port: int,
    mode: Literal["pingpong", "bulk"],
    connections: int,
    size: int,
    duration: float,
    requests: int | None,
    warmup: float,
    timeout: float,
    processes: int,
    json_output: bool,
    progress: bool,
    tcp: TcpOptions,
    loop: loops.LoopName,
) -> None:
    """Load an echo server and measure it: requests/s and latency percentiles, or MB/s.

    Every error (refused, reset, closed, wrong echo, timeout) is counted and reported; the
    exit status is 1 when there was any."""
    check_loop(loop)
    from tcpecho.bench.runner import BenchConfig, run

    with settings_errors():
        config = BenchConfig(
            host=server,
            port=port,
            mode=mode,
            connections=connections,
            size=size,
            duration_s=duration,
            requests=requests,
            warmup_s=warmup,
            timeout_s=timeout,
            processes=processes,
            json_output=json_output,
            progress=progress,
            tcp=tcp,
            loop=loop,
        )
    raise SystemExit(run(config))
