"""The ``tcpecho`` command line: each command parses its options into a typed config and runs it.

Options are declared once and shared: ``runtime_options`` (loop and logs) on every command,
``tcp_options`` (the socket options of ``TcpOptions``) on both server and client. Every
option is also an environment variable, ``TCPECHO_<COMMAND>_<OPTION>``, which is how the
Kubernetes manifests set them. Bad values end in click's usage error and exit status 2;
runtime failures (refused, unreachable, timed out) are logged and end in exit status 1.
The server and client modules are imported only when their command runs, so ``--help``
stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tcpecho import logs, loops, sockopts, streams
from tcpecho.durations import Duration
from tcpecho.sizes import ByteSize

F = TypeVar("F", bound=Callable[..., Any])

ENVVAR_PREFIX = "TCPECHO"

# The lab's choices, spelled out here so that --help does not import the lab.
FAULT_NAMES = ("force-delete", "node-loss", "unreachable", "kill", "graceful")
PROFILE_NAMES = (
    "default",
    "user-timeout",
    "keepalive",
    "keepalive+user-timeout",
    "read-timeout",
    "recverr",
)

_ENVVAR_EPILOG = (
    "Every option can also be set in the environment as TCPECHO_{command}_<OPTION>, "
    "for example {example}."
)


loop_option = click.option(
    "--loop",
    type=click.Choice(loops.LOOP_NAMES),
    default="auto",
    help="Event loop: uvloop when installed (auto), or plain asyncio.",
)


def runtime_options(command: F) -> F:
    """--loop, --log-format and --log-level, shared by the commands that log."""
    decorators = [
        loop_option,
        click.option(
            "--log-format",
            type=click.Choice(logs.LOG_FORMATS),
            default="auto",
            help="JSON lines, a console view, or auto: console on a terminal, JSON otherwise.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(logs.LOG_LEVELS, case_sensitive=False),
            default="info",
            help="Lowest level logged.",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def tcp_options(*, connect: bool) -> Callable[[F], F]:
    """The TCP socket options; ``connect`` adds those that only matter when connecting."""

    whole_seconds = Duration(minimum=1, maximum=sockopts.KEEPALIVE_TIME_MAX_S, granularity="s")
    decorators = [
        click.option(
            "--user-timeout",
            type=Duration(maximum=sockopts.USER_TIMEOUT_MAX_MS / 1000, granularity="ms"),
            default=None,
            help="TCP_USER_TIMEOUT: give up when sent data stays unacknowledged this long "
            "(0s: kernel default). Bounds the ~15 min retransmission hang.",
        ),
        click.option(
            "--keepalive/--no-keepalive",
            default=None,
            help="SO_KEEPALIVE: probe an idle connection. Detects a dead peer only while "
            "no data is unacknowledged. Default: the socket's default (off).",
        ),
        click.option(
            "--keepalive-idle",
            type=whole_seconds,
            default=None,
            help="TCP_KEEPIDLE: idle time before the first probe (whole seconds).",
        ),
        click.option(
            "--keepalive-interval",
            type=whole_seconds,
            default=None,
            help="TCP_KEEPINTVL: time between probes (whole seconds).",
        ),
        click.option(
            "--keepalive-count",
            type=click.IntRange(1, sockopts.KEEPALIVE_COUNT_MAX),
            default=None,
            help="TCP_KEEPCNT: unanswered probes before giving up.",
        ),
    ]
    if connect:
        decorators.append(
            click.option(
                "--syn-retries",
                type=click.IntRange(1, sockopts.SYN_RETRIES_MAX),
                default=None,
                help="TCP_SYNCNT: SYN retransmissions before connect gives up.",
            )
        )
    decorators.append(
        click.option(
            "--recverr/--no-recverr",
            default=False,
            help="IP_RECVERR: an ICMP unreachable ends the connection at once "
            "instead of after the retransmissions.",
        )
    )

    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def build_tcp_options(
    *,
    user_timeout: float | None,
    keepalive: bool | None,
    keepalive_idle: float | None,
    keepalive_interval: float | None,
    keepalive_count: int | None,
    recverr: bool,
    syn_retries: int | None = None,
) -> sockopts.TcpOptions:
    try:
        options = sockopts.TcpOptions(
            user_timeout_ms=None if user_timeout is None else round(user_timeout * 1000),
            keepalive=keepalive,
            keepalive_idle_s=None if keepalive_idle is None else int(keepalive_idle),
            keepalive_interval_s=None if keepalive_interval is None else int(keepalive_interval),
            keepalive_count=keepalive_count,
            syn_retries=syn_retries,
            recverr=recverr,
        )
    except sockopts.OptionError as error:
        raise click.UsageError(str(error)) from None
    missing = options.unsupported()
    if missing:
        raise click.UsageError(
            f"this platform cannot set {', '.join(missing)}; leave out the option(s) that need it"
        )
    return options


def _print_version(ctx: click.Context, asked: bool) -> None:
    """--version, looked up only when asked for (the lookup is slow to import)."""
    if not asked or ctx.resilient_parsing:
        return
    from tcpecho import __version__

    click.echo(f"tcpecho, version {__version__}")
    ctx.exit()


def _check_loop(loop: loops.LoopName) -> None:
    try:
        loops.resolve(loop)
    except LookupError as error:
        raise click.BadParameter(str(error), param_hint="'--loop'") from None


class _Tcpecho(click.Group):
    """The command group, run with standard streams that cannot take a socket's place or
    turn a finished command's exit status into 120 (see ``streams``)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        streams.secure_standard_streams()
        try:
            return super().main(*args, **kwargs)
        finally:
            streams.discard_unflushed_stdout()


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


@main.command(
    epilog=_ENVVAR_EPILOG.format(command="SERVER", example="TCPECHO_SERVER_CATCH_SIGTERM=true")
)
@click.option("--host", default="0.0.0.0", help="Address to listen on; '::' takes IPv6 and IPv4.")  # noqa: S104
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="TCP port.")
@click.option(
    "--catch-sigterm",
    is_flag=True,
    default=False,
    help="Ignore SIGTERM (logging each one), as the original reproduction's server does; "
    "SIGINT still stops the server.",
)
@click.option(
    "--shutdown-timeout",
    type=Duration(),
    default="10s",
    help="On SIGTERM/SIGINT: time for echoes under way to finish before connections are cut.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    help="Server processes sharing the port (SO_REUSEPORT), for machines with cores to "
    "spare; no gain on 2 cores.",
)
@tcp_options(connect=False)
@runtime_options
def server(
    host: str,
    port: int,
    catch_sigterm: bool,
    shutdown_timeout: float,
    workers: int,
    loop: loops.LoopName,
    log_format: logs.LogFormat,
    log_level: str,
    **tcp: Any,
) -> None:
    """Echo every byte back (RFC 862), with backpressure and graceful shutdown."""
    _check_loop(loop)
    from tcpecho.server import ServerConfig, run

    config = ServerConfig(
        host=host,
        port=port,
        tcp=build_tcp_options(**tcp),
        catch_sigterm=catch_sigterm,
        shutdown_timeout_s=shutdown_timeout,
        loop=loop,
        workers=workers,
    )
    logs.configure(log_format, log_level)
    raise SystemExit(run(config))


@main.command(
    epilog=_ENVVAR_EPILOG.format(command="CLIENT", example="TCPECHO_CLIENT_USER_TIMEOUT=30s")
)
@click.option("--server", default="server", help="Server host name or address.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="Server TCP port.")
@click.option("--interval", type=Duration(), default="5s", help="Pause between requests.")
@click.option(
    "--count", type=click.IntRange(min=0), default=0, help="Echoes to complete; 0 = forever."
)
@click.option("--message", default="ping", help="Text sent in each request, after its number.")
@click.option(
    "--connect-timeout",
    type=Duration(minimum=0.001),
    default=None,
    help="Deadline for each connection attempt (default: the kernel's SYN retries).",
)
@click.option(
    "--read-timeout",
    type=Duration(minimum=0.001),
    default=None,
    help="Deadline for each echo: the application-level bound, whatever the kernel does.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=-1),
    default=0,
    help="Reconnect attempts after a failure; -1 = forever; 0 = exit on the first failure.",
)
@click.option(
    "--retry-backoff",
    type=Duration(minimum=0.001),
    default="1s",
    help="First reconnect delay; doubles per attempt, with jitter.",
)
@click.option(
    "--retry-backoff-max", type=Duration(minimum=0.001), default="30s", help="Longest delay."
)
@tcp_options(connect=True)
@runtime_options
def client(
    server: str,
    port: int,
    interval: float,
    count: int,
    message: str,
    connect_timeout: float | None,
    read_timeout: float | None,
    retries: int,
    retry_backoff: float,
    retry_backoff_max: float,
    loop: loops.LoopName,
    log_format: logs.LogFormat,
    log_level: str,
    **tcp: Any,
) -> None:
    """Send a numbered request every --interval and check each echo; log how failures are
    detected and how long it took."""
    _check_loop(loop)
    if retry_backoff_max < retry_backoff:
        raise click.BadParameter(
            "must not be shorter than --retry-backoff", param_hint="'--retry-backoff-max'"
        )
    from tcpecho.client import ClientConfig, run

    config = ClientConfig(
        server=server,
        port=port,
        interval_s=interval,
        count=count,
        message=message,
        tcp=build_tcp_options(**tcp),
        connect_timeout_s=connect_timeout,
        read_timeout_s=read_timeout,
        retries=retries,
        retry_backoff_s=retry_backoff,
        retry_backoff_max_s=retry_backoff_max,
        loop=loop,
    )
    logs.configure(log_format, log_level)
    raise SystemExit(run(config))


@main.command(epilog=_ENVVAR_EPILOG.format(command="LAB", example="TCPECHO_LAB_QUICK=true"))
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(FAULT_NAMES),
    help="Fault to inject (repeat for several; default: all).",
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    type=click.Choice(PROFILE_NAMES),
    help="Client profile (repeat for several; default: all, or none with --client-args).",
)
@click.option(
    "--client-args",
    default=None,
    help='A custom profile: client flags such as "--user-timeout 10s --keepalive".',
)
@click.option(
    "--quick",
    is_flag=True,
    default=False,
    help="Shorten only the baseline's ~15.5 min kernel budget (tcp_rto_max_ms, or "
    "tcp_retries2 on kernels before 6.15) so the whole matrix takes under a minute.",
)
@click.option(
    "--tcp-retries2",
    type=click.IntRange(1, 100),
    default=None,
    help="Set net.ipv4.tcp_retries2 in every client namespace.",
)
@click.option(
    "--rto-max",
    type=Duration(minimum=1, maximum=120, granularity="ms"),
    default=None,
    help="Set net.ipv4.tcp_rto_max_ms in every client namespace (Linux >= 6.15).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write every case, prediction and log event to this file.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Draw detection times as a PNG bar chart (needs tcpecho[plot]).",
)
@click.option(
    "--cleanup",
    is_flag=True,
    default=False,
    help="Only remove what killed lab runs left behind (namespaces, their rules and processes).",
)
def lab(
    faults: tuple[str, ...],
    profiles: tuple[str, ...],
    client_args: str | None,
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
    from tcpecho.lab import main as lab_main

    lab_main.check_requirements(plot=plot_path is not None, rto_max=rto_max is not None)
    if cleanup:
        raise SystemExit(lab_main.cleanup())
    from tcpecho.lab.faults import Fault
    from tcpecho.lab.profiles import PROFILES, custom_profile
    from tcpecho.lab.runner import KernelBudget

    chosen = [PROFILES[name] for name in (profiles or (() if client_args else PROFILE_NAMES))]
    if client_args is not None:
        chosen.append(custom_profile(client_args))
    config = lab_main.LabConfig(
        faults=tuple(Fault(name) for name in (faults or FAULT_NAMES)),
        profiles=tuple(chosen),
        budget=KernelBudget(
            quick=quick,
            tcp_retries2=tcp_retries2,
            rto_max_ms=None if rto_max is None else round(rto_max * 1000),
        ),
        json_path=json_path,
        plot_path=plot_path,
    )
    raise SystemExit(lab_main.run(config))


@main.command(
    epilog=_ENVVAR_EPILOG.format(command="BENCH", example="TCPECHO_BENCH_CONNECTIONS=100")
)
@click.option("--server", default="127.0.0.1", help="Echo server host name or address.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="Server TCP port.")
@click.option(
    "--mode",
    type=click.Choice(["pingpong", "bulk"]),
    default="pingpong",
    help="pingpong: send --size bytes, wait for their echo, repeat (requests/s, latency). "
    "bulk: stream --size chunks both ways at once (MB/s).",
)
@click.option(
    "--connections", type=click.IntRange(1, 100_000), default=10, help="Connections held open."
)
@click.option(
    "--size", type=ByteSize(maximum=16 * 1024 * 1024), default="1KiB", help="Request or chunk size."
)
@click.option(
    "--duration", type=Duration(minimum=0.001), default="10s", help="Length of the measured window."
)
@click.option(
    "--requests",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many measured ping-pong requests (or at --duration, if sooner).",
)
@click.option("--warmup", type=Duration(), default="1s", help="Load before measuring starts.")
@click.option(
    "--timeout",
    type=Duration(minimum=0.001),
    default="5s",
    help="A connect or an echo taking longer is counted as an error (and the connection is "
    "opened anew).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    help="Processes to split the connections between, to use more cores.",
)
@click.option("--json", "json_output", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--progress/--no-progress", default=True, help="A progress line on stderr every second."
)
@tcp_options(connect=True)
@loop_option
def bench(
    server: str,
    port: int,
    mode: str,
    connections: int,
    size: int,
    duration: float,
    requests: int | None,
    warmup: float,
    timeout: float,
    processes: int,
    json_output: bool,
    progress: bool,
    loop: loops.LoopName,
    **tcp: Any,
) -> None:
    """Load an echo server and measure it: requests/s and latency percentiles, or MB/s.

    Every error (refused, reset, closed, wrong echo, timeout) is counted and reported; the
    exit status is 1 when there was any."""
    _check_loop(loop)
    if processes > connections:
        raise click.BadParameter(
            f"{processes} processes need at least as many --connections ({connections})",
            param_hint="'--processes'",
        )
    if requests is not None and mode != "pingpong":
        raise click.BadParameter("counts ping-pong requests only", param_hint="'--requests'")
    from tcpecho.bench.runner import BenchConfig, run

    config = BenchConfig(
        host=server,
        port=port,
        mode="pingpong" if mode == "pingpong" else "bulk",
        connections=connections,
        size=size,
        duration_s=duration,
        requests=requests,
        warmup_s=warmup,
        timeout_s=timeout,
        processes=processes,
        json_output=json_output,
        progress=progress,
        tcp=build_tcp_options(**tcp),
        loop=loop,
    )
    raise SystemExit(run(config))
