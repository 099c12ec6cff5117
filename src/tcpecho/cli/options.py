"""Options that several commands share, each declared once and handed over as a typed value.

``tcp_options`` gives a command one ``TcpOptions`` (server, client, bench), its click options
made from ``TcpOptions``' own descriptions of them, and
``deadline_options`` one ``Deadlines`` (client, and any command that predicts what a client
will do): the commands never see the separate flags. ``path_options`` gives the path's idle
timeout, from a preset's name or a duration, as one ``PathContext`` (explain, watch).
``server_endpoint_options`` gives the server a client talks to (client, bench);
``runtime_options`` are the event loop and logs; ``metrics_port_option`` is the server's and
the client's ``/metrics``.
``settings_errors`` turns a setting the domain refuses into click's usage error on the
option, or the environment variable, that gave it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from click.core import ParameterSource

from tcpecho import logs, loops
from tcpecho.cli.params import BOOLEAN, Duration, Endpoint, LazyChoice, option
from tcpecho.tcp.options import OPTIONS as TCP_OPTIONS
from tcpecho.tcp.options import SocketOption, TcpOptions

if TYPE_CHECKING:
    from tcpecho.explain import PathContext

# The other settings' modules are imported when a command runs, not for ``--help``; the
# TCP options' descriptions are what the options are made of.

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def settings_errors() -> Iterator[None]:
    """Refusals of the settings built inside, as usage errors on the options that gave them."""
    from tcpecho.settings import SettingError

    try:
        yield
    except SettingError as error:
        ctx = click.get_current_context()
        param = next((p for p in ctx.command.params if p.name == error.setting), None)
        if param is None:
            raise click.UsageError(str(error), ctx) from None
        raise click.BadParameter(str(error), ctx, param) from None


def environment_epilog(command: str, example: str) -> str:
    """The help's closing line: every option is also an environment variable."""
    prefix = f"TCPECHO_{command.upper()}"
    return (
        f"Every option can also be set in the environment as {prefix}_<OPTION>, "
        f"for example {prefix}_{example}."
    )


def _apply(decorators: Sequence[Callable[[Any], Any]], command: Callable[..., Any]) -> Any:
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


loop_option = option(
    "--loop",
    type=click.Choice(loops.LOOP_NAMES),
    default="auto",
    help="Event loop: uvloop when installed (auto), or plain asyncio.",
)


metrics_port_option = option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve Prometheus metrics at /metrics on this TCP port (0: any free port). Default: off.",
)


def runtime_options(command: F) -> F:
    """--loop, --log-format and --log-level, for the commands that log."""
    return cast(
        F,
        _apply(
            [
                loop_option,
                option(
                    "--log-format",
                    type=click.Choice(logs.LOG_FORMATS),
                    default="auto",
                    help="JSON lines, a console view, or auto: console on a terminal, "
                    "JSON otherwise.",
                ),
                option(
                    "--log-level",
                    type=click.Choice(logs.LOG_LEVELS, case_sensitive=False),
                    default="info",
                    help="Lowest level logged.",
                ),
            ],
            command,
        ),
    )


def check_loop(loop: loops.LoopName) -> None:
    """A usage error when the chosen loop is not installed here."""
    try:
        loops.resolve(loop)
    except LookupError as error:
        raise click.BadParameter(str(error), param_hint="'--loop'") from None


def _declared(tcp_option: SocketOption) -> Callable[[F], F]:
    """The click option of one socket option, from its description."""
    if tcp_option.kind == "switch":
        name = tcp_option.flag[2:]
        return option(
            f"--{name}/--no-{name}", type=BOOLEAN, default=None, help=tcp_option.help_line
        )
    kind: click.ParamType[Any] = Duration() if tcp_option.is_duration else click.INT
    return option(tcp_option.flag, type=kind, default=None, help=tcp_option.help_line)


def tcp_options(*, connect: bool) -> Callable[[F], F]:
    """The TCP socket options, given to the command as ``tcp: TcpOptions``: one click option
    for each that ``TcpOptions`` describes, in its order.

    ``connect`` adds those that only matter when connecting (TCP_SYNCNT)."""
    described = [
        tcp_option
        for tcp_option in TCP_OPTIONS
        if tcp_option.command_line and (connect or not tcp_option.connecting)
    ]

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_tcp_options(*args: Any, **kwargs: Any) -> Any:
            given = {o.setting: kwargs.pop(o.setting) for o in described}
            with settings_errors():
                tcp = TcpOptions.from_user(given)
            return command(*args, tcp=tcp, **kwargs)

        return cast(F, _apply([_declared(o) for o in described], with_tcp_options))

    return decorate


def deadline_options(command: F) -> F:
    """The client's own deadlines, given to the command as ``deadlines: Deadlines``."""

    @functools.wraps(command)
    def with_deadlines(*args: Any, **kwargs: Any) -> Any:
        from tcpecho.settings import Deadlines

        with settings_errors():
            deadlines = Deadlines(
                connect_timeout_s=kwargs.pop("connect_timeout"),
                read_timeout_s=kwargs.pop("read_timeout"),
            )
        return command(*args, deadlines=deadlines, **kwargs)

    return cast(
        F,
        _apply(
            [
                option(
                    "--connect-timeout",
                    type=Duration(),
                    default=None,
                    help="Deadline for each connection attempt (default: the kernel's "
                    "SYN retries).",
                ),
                option(
                    "--read-timeout",
                    type=Duration(),
                    default=None,
                    help="Deadline for each echo: the application-level bound, whatever the "
                    "kernel does.",
                ),
            ],
            with_deadlines,
        ),
    )


def _path_names() -> Sequence[str]:
    from tcpecho.model.paths import PATH_NAMES

    return PATH_NAMES


def path_options(effect: str) -> Callable[[F], F]:
    """--path NAME and --path-idle-timeout D, given to the command as ``path: PathContext``
    (the idle timeout, and the preset that gave it, if any; no outage, no proxy).

    Both name the path's shortest idle timeout, so only one of them may be given; the
    timeout must be more than 0. ``effect`` ends --path's help: what the path adds to the
    command's answer."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_path(*args: Any, **kwargs: Any) -> Any:
            path = _path_context(kwargs.pop("path_name"), kwargs.pop("path_idle_timeout"))
            return command(*args, path=path, **kwargs)

        return cast(
            F,
            _apply(
                [
                    option(
                        "--path",
                        "path_name",
                        type=LazyChoice(_path_names),
                        default=None,
                        help="The middlebox on the path with the shortest idle timeout, by "
                        f"name (its vendor's default); {effect}.",
                    ),
                    option(
                        "--path-idle-timeout",
                        type=Duration(),
                        default=None,
                        help="The shortest idle timeout of any middlebox on the path, "
                        "instead of --path.",
                    ),
                ],
                with_path,
            ),
        )

    return decorate


def _path_context(path_name: str | None, idle_timeout_s: float | None) -> PathContext:
    """The path as --path or --path-idle-timeout describes it (neither: no idle timeout)."""
    from tcpecho.explain import PathContext
    from tcpecho.model.paths import PATHS

    if path_name is not None and idle_timeout_s is not None:
        raise click.UsageError("give --path or --path-idle-timeout, not both")
    if idle_timeout_s is not None and idle_timeout_s <= 0:
        raise click.UsageError("--path-idle-timeout must be more than 0s")
    if path_name is not None:
        preset = PATHS[path_name]
        return PathContext(preset.idle_timeout_s, preset.resets, preset.name)
    return PathContext(idle_timeout_s)


def server_endpoint_options(*, default_host: str) -> Callable[[F], F]:
    """--server HOST[:PORT] and --port, given to the command as ``server: str, port: int``.

    ``--server`` takes what the logs print (``10.96.0.10:8000``, ``[::1]:8000``); a port in
    it that disagrees with an explicit ``--port`` is a usage error."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_endpoint(*args: Any, **kwargs: Any) -> Any:
            host, port_in_server = kwargs.pop("server")
            port: int = kwargs.pop("port")
            if port_in_server is not None:
                ctx = click.get_current_context()
                explicit = ctx.get_parameter_source("port") is not ParameterSource.DEFAULT
                if explicit and port != port_in_server:
                    raise click.BadParameter(
                        f"{port} disagrees with the port in --server ({port_in_server})",
                        ctx,
                        next(p for p in ctx.command.params if p.name == "port"),
                    )
                port = port_in_server
            return command(*args, server=host, port=port, **kwargs)

        return cast(
            F,
            _apply(
                [
                    option(
                        "--server",
                        type=Endpoint(),
                        default=default_host,
                        help="Echo server: a host name or address, with :PORT if you like "
                        "(10.96.0.10:8000, [::1]:8000).",
                    ),
                    option("--port", type=int, default=8000, help="Echo server's TCP port."),
                ],
                with_endpoint,
            ),
        )

    return decorate
