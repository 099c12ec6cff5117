"""Client libraries' own words for the TCP options (``STACKS``): each stack's defaults, as the
cookbook measured them on its client's socket, and its settings rendered from ``TcpOptions``
and read back into them.

A libpq user writes ``keepalives_idle=10 tcp_user_timeout=5000``, not tcpecho's flags; a
redis-py user a ``socket_keepalive_options`` dict. ``explain --stack`` reads those, and
``explain --recommend --stack`` answers in them. The cookbook's recipes say the same
(``tests/test_stacks.py`` holds each rendering to the recipe the lab measured), so the two
cannot disagree. gRPC's keepalive is HTTP/2 pings, not the kernel's: its stack reads and
renders a ``Ping`` (in ``Deadlines``) beside the TCP_USER_TIMEOUT gRPC sets from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from tcpecho.durations import parse_duration
from tcpecho.settings import GRPC_SERVER_MIN_PING_INTERVAL_S, Deadlines, Ping
from tcpecho.tcp.options import TcpOptions


class StackSyntaxError(ValueError):
    """A library's settings that this project cannot read; the message says which."""


@dataclass(frozen=True)
class Stack:
    name: str
    library: str
    defaults: TcpOptions  # what the library's socket carries when nothing is set
    render: Callable[[TcpOptions, Deadlines], str]
    parse: Callable[[str, TcpOptions], tuple[TcpOptions, Deadlines]]
    default_deadlines: Deadlines = Deadlines()  # noqa: RUF009 - frozen, so one shared value is safe
    syntax: str = ""  # an example of the library's settings, for errors and help
    # It watches idle connections with its own pings, not TCP keepalive: their shape when
    # they are on, its defaults but the interval (how long a ping's answer is waited for, what
    # its servers allow); None: no pings of its own.
    ping: Ping | None = None


_SOCKET_NAMES = (
    ("TCP_USER_TIMEOUT", "user_timeout_ms"),
    ("SO_KEEPALIVE", "keepalive"),
    ("TCP_KEEPIDLE", "keepalive_idle_s"),
    ("TCP_KEEPINTVL", "keepalive_interval_s"),
    ("TCP_KEEPCNT", "keepalive_count"),
)


def _setsockopt_list(tcp: TcpOptions) -> str:
    """``TCP_USER_TIMEOUT 5000, SO_KEEPALIVE 1, TCP_KEEPIDLE 10, ...``: the calls to make."""
    parts = [f"TCP_USER_TIMEOUT {tcp.user_timeout_ms}"] if tcp.user_timeout_ms else []
    if tcp.keepalive:
        parts.append("SO_KEEPALIVE 1")
        for name, field in _SOCKET_NAMES[2:]:
            value = getattr(tcp, field)
            if value is not None:
                parts.append(f"{name} {value}")
    return ", ".join(parts)


def _parse_setsockopt(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    names = "|".join(name for name, _ in _SOCKET_NAMES)
    found = dict(re.findall(rf"\b({names})[\s:=]+(-?\d+)", text))
    if not found:
        raise StackSyntaxError("no socket option found (for example: TCP_KEEPIDLE 10)")
    return _from_socket_names(found, defaults), Deadlines()


def _from_socket_names(found: dict[str, str], defaults: TcpOptions) -> TcpOptions:
    values: dict[str, object] = {}
    for name, field in _SOCKET_NAMES:
        if name in found:
            number = int(found[name])
            values[field] = bool(number) if field == "keepalive" else number
    if any(field.startswith("keepalive_") for field in values) and "keepalive" not in values:
        values["keepalive"] = True
    return replace(defaults, **values)  # type: ignore[arg-type]


_LIBPQ_KEYS = {
    "tcp_user_timeout": "user_timeout_ms",
    "keepalives": "keepalive",
    "keepalives_idle": "keepalive_idle_s",
    "keepalives_interval": "keepalive_interval_s",
    "keepalives_count": "keepalive_count",
}


def _render_libpq(tcp: TcpOptions, deadlines: Deadlines) -> str:
    parts = []
    if tcp.user_timeout_ms:
        parts.append(f"tcp_user_timeout={tcp.user_timeout_ms}")
    parts.append(f"keepalives={1 if tcp.keepalive is not False else 0}")
    if tcp.keepalive is not False:
        for key in ("keepalives_idle", "keepalives_interval", "keepalives_count"):
            value = getattr(tcp, _LIBPQ_KEYS[key])
            if value is not None:
                parts.append(f"{key}={value}")
    return " ".join(parts)


def _parse_libpq(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    values: dict[str, object] = {}
    for key, raw in re.findall(r"(\w+)\s*=\s*(\S+)", text):
        if key not in _LIBPQ_KEYS:
            raise StackSyntaxError(f"{key} is not a libpq TCP parameter ({', '.join(_LIBPQ_KEYS)})")
        try:
            number = int(raw)
        except ValueError:
            raise StackSyntaxError(f"{key}={raw}: libpq takes a whole number") from None
        field = _LIBPQ_KEYS[key]
        values[field] = bool(number) if field == "keepalive" else number
    if not values:
        raise StackSyntaxError("no libpq parameter found (for example: keepalives_idle=10)")
    return replace(defaults, **values), Deadlines()  # type: ignore[arg-type]


def _render_redis(tcp: TcpOptions, deadlines: Deadlines) -> str:
    timeout = deadlines.read_timeout_s
    socket_timeout = f"socket_timeout={'None' if timeout is None else f'{timeout:g}'}"
    if not tcp.keepalive:
        return f"{socket_timeout} socket_keepalive=False"
    names = [(n, f) for n, f in _SOCKET_NAMES if f != "keepalive"]
    pairs = ", ".join(
        f"{name}: {getattr(tcp, field)}" for name, field in names if getattr(tcp, field) is not None
    )
    return f"{socket_timeout} socket_keepalive=True socket_keepalive_options={{{pairs}}}"


def _parse_redis(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    deadlines = REDIS_DEADLINES
    timeout = re.search(r"socket_timeout\s*=\s*(None|[\d.]+)", text)
    if timeout is not None:
        deadlines = Deadlines(None if timeout[1] == "None" else float(timeout[1]))
    tcp = defaults
    keepalive = re.search(r"socket_keepalive\s*=\s*(True|False)", text)
    if keepalive is not None and keepalive[1] == "False":
        tcp = TcpOptions(keepalive=False)
    options = dict(re.findall(r"\b(TCP_\w+)\s*:\s*(\d+)", text))
    if options:
        unknown = set(options) - {name for name, _ in _SOCKET_NAMES}
        if unknown:
            raise StackSyntaxError(f"{', '.join(sorted(unknown))}: not a TCP option this reads")
        tcp = _from_socket_names(options, replace(tcp, keepalive=True))
    if timeout is None and keepalive is None and not options:
        raise StackSyntaxError(
            "nothing found (for example: socket_keepalive_options={TCP_KEEPIDLE: 10})"
        )
    return tcp, deadlines


def _render_go(tcp: TcpOptions, deadlines: Deadlines) -> str:
    return f"KeepAlive: -1, Control: setsockopt {_setsockopt_list(tcp)}"


def _render_tcpecho(tcp: TcpOptions, deadlines: Deadlines) -> str:
    return " ".join(tcp.as_flags() + deadlines.as_flags())


def _parse_tcpecho(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    raise StackSyntaxError("give tcpecho's own options as flags, not --stack-options")


# gRPC core's channel arguments (grpc/include/grpc/impl/channel_arg_names.h) for its
# keepalive, with a client's defaults (chttp2_transport.cc): no pings; when pings are on,
# TCP_USER_TIMEOUT is keepalive_timeout_ms (socket_utils_common_posix.cc).
_GRPC_TIME = "grpc.keepalive_time_ms"
_GRPC_TIMEOUT = "grpc.keepalive_timeout_ms"
_GRPC_WITHOUT_CALLS = "grpc.keepalive_permit_without_calls"
_GRPC_LIMIT = "grpc.http2.max_pings_without_data"
_GRPC_PING_TIMEOUT = "grpc.http2.ping_timeout_ms"
_GRPC_DEFAULTS = {
    _GRPC_TIMEOUT: 20_000,
    _GRPC_WITHOUT_CALLS: 0,
    _GRPC_LIMIT: 2,
    _GRPC_PING_TIMEOUT: 60_000,  # measured: what ends a ping unanswered (docs/cookbook.md)
}


def _render_grpc(tcp: TcpOptions, deadlines: Deadlines) -> str:
    ping = deadlines.ping
    if ping is None:
        return f"{_GRPC_TIME} unset (no pings, no TCP_USER_TIMEOUT)"
    values = {
        _GRPC_TIME: round(ping.interval_s * 1000),
        _GRPC_TIMEOUT: tcp.user_timeout_ms or _GRPC_DEFAULTS[_GRPC_TIMEOUT],
        _GRPC_WITHOUT_CALLS: int(ping.without_calls),
        _GRPC_LIMIT: ping.limit_without_data or 0,
        _GRPC_PING_TIMEOUT: round(ping.ack_timeout_s * 1000),
    }
    return " ".join(
        f"{key}={value}"
        for key, value in values.items()
        if key in (_GRPC_TIME, _GRPC_TIMEOUT) or value != _GRPC_DEFAULTS[key]
    )


def _parse_grpc(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    found = dict(re.findall(r"""(grpc\.[\w.]+)["']?\s*[=:,]\s*(-?\d+)""", text))
    if not found:
        raise StackSyntaxError(f"no gRPC channel option found (for example: {_GRPC_TIME}=10000)")
    known = (_GRPC_TIME, *_GRPC_DEFAULTS)
    unknown = sorted(set(found) - set(known))
    if unknown:
        raise StackSyntaxError(f"{', '.join(unknown)}: not a keepalive option ({', '.join(known)})")
    values = {**_GRPC_DEFAULTS, **{key: int(value) for key, value in found.items()}}
    if _GRPC_TIME not in found:  # no pings, so gRPC sets no TCP_USER_TIMEOUT either
        return defaults, Deadlines()
    if min(values[_GRPC_TIME], values[_GRPC_TIMEOUT], values[_GRPC_PING_TIMEOUT]) <= 0:
        raise StackSyntaxError("gRPC's keepalive times are milliseconds, more than 0")
    ping = Ping(
        values[_GRPC_TIME] / 1000,
        values[_GRPC_PING_TIMEOUT] / 1000,
        without_calls=values[_GRPC_WITHOUT_CALLS] == 1,
        limit_without_data=values[_GRPC_LIMIT] or None,
        server_min_interval_s=GRPC_SERVER_MIN_PING_INTERVAL_S,
    )
    return replace(defaults, user_timeout_ms=values[_GRPC_TIMEOUT]), Deadlines(ping=ping)


KERNEL_DEFAULT_KEEPALIVE = TcpOptions(
    keepalive=True, keepalive_idle_s=7200, keepalive_interval_s=75, keepalive_count=9
)
REDIS_DEADLINES = Deadlines(read_timeout_s=5.0)

STACKS = {
    stack.name: stack
    for stack in (
        Stack(
            "tcpecho",
            "tcpecho client (flags, or TCPECHO_CLIENT_* variables)",
            TcpOptions(),
            _render_tcpecho,
            _parse_tcpecho,
        ),
        Stack(
            "python-socket",
            "Python socket (stdlib)",
            TcpOptions(keepalive=False),
            lambda tcp, _deadlines: f"setsockopt: {_setsockopt_list(tcp)}",
            _parse_setsockopt,
            syntax="TCP_USER_TIMEOUT 5000, SO_KEEPALIVE 1, TCP_KEEPIDLE 10",
        ),
        Stack(
            "libpq",
            "libpq (psycopg, psycopg2, any libpq client): connection parameters",
            KERNEL_DEFAULT_KEEPALIVE,  # keepalives=1 by default, with the kernel's times
            _render_libpq,
            _parse_libpq,
            syntax="tcp_user_timeout=5000 keepalives_idle=10",
        ),
        Stack(
            "redis-py",
            "redis-py: Redis() keyword arguments",
            TcpOptions(
                keepalive=True, keepalive_idle_s=30, keepalive_interval_s=5, keepalive_count=3
            ),
            _render_redis,
            _parse_redis,
            REDIS_DEADLINES,
            syntax="socket_keepalive_options={TCP_USER_TIMEOUT: 5000, TCP_KEEPIDLE: 10}",
        ),
        Stack(
            "go",
            "Go net.Dialer",
            TcpOptions(
                keepalive=True, keepalive_idle_s=15, keepalive_interval_s=15, keepalive_count=9
            ),
            _render_go,
            _parse_setsockopt,
            syntax="Control: setsockopt TCP_USER_TIMEOUT 5000, TCP_KEEPIDLE 10",
        ),
        Stack(
            "grpc-python",
            "gRPC Python (grpcio): channel options",
            TcpOptions(keepalive=False),  # no pings, no TCP_USER_TIMEOUT, no SO_KEEPALIVE
            _render_grpc,
            _parse_grpc,
            syntax=f"{_GRPC_TIME}=10000 {_GRPC_TIMEOUT}=5000",
            ping=Ping(  # its interval is for --recommend to choose: its answer's, for now
                _GRPC_DEFAULTS[_GRPC_PING_TIMEOUT] / 1000,
                _GRPC_DEFAULTS[_GRPC_PING_TIMEOUT] / 1000,
                server_min_interval_s=GRPC_SERVER_MIN_PING_INTERVAL_S,
            ),
        ),
    )
}


# --- asyncpg and urllib3 (the Python stacks of issue 25) ---
# asyncpg has no keepalive or TCP_USER_TIMEOUT parameter (MagicStack/asyncpg issue 606): its
# users set them with setsockopt on each connection's socket (before it connects, in the
# event loop's create_connection; or after its handshake, in a pool's ``init``). Its own
# words are its deadlines, in seconds: ``timeout`` (the connect, 60 by default) and
# ``command_timeout`` (each query, from its send; None by default).
_ASYNCPG_CONNECT_S = 60.0
# What a libpq user brings along, and what asyncpg does with it: ``server_settings`` (and a
# DSN's unknown query parameters, which go there) set the server's socket, not the client's.
_ASYNCPG_SERVER_SIDE = re.compile(
    r"server_settings|\btcp_user_timeout\b|\btcp_keepalives_\w+|\bkeepalives\w*\s*="
)


def _seconds_or_none(value: float | None) -> str:
    return "None" if value is None else f"{value:g}"


def _render_asyncpg(tcp: TcpOptions, deadlines: Deadlines) -> str:
    """No connect deadline (what ``--recommend`` chooses) leaves asyncpg's own 60 s: no
    ``timeout=``, rather than a ``timeout=None`` that would take that bound away."""
    calls = _setsockopt_list(tcp)
    sock = (
        f"on the socket before it connects: setsockopt {calls}"
        if calls
        else "no socket options (asyncpg sets only TCP_NODELAY)"
    )
    connect = deadlines.connect_timeout_s
    return (
        "" if connect is None else f"timeout={connect:g} "
    ) + f"command_timeout={_seconds_or_none(deadlines.read_timeout_s)}; {sock}"


def _deadline(text: str, key: str, default: float | None) -> float | None:
    found = re.search(rf"\b{key}\s*=\s*(None|[\d.]+)", text)
    if found is None:
        return default
    if found[1] == "None":
        return None
    try:
        seconds = float(found[1])
    except ValueError:
        raise StackSyntaxError(f"{key}={found[1]}: seconds, or None") from None
    if seconds <= 0:
        raise StackSyntaxError(f"{key}={found[1]}: seconds, more than 0, or None")
    return seconds


def _parse_asyncpg(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    if _ASYNCPG_SERVER_SIDE.search(text):
        raise StackSyntaxError(
            "asyncpg has no keepalive parameters: server_settings' tcp_user_timeout and "
            "tcp_keepalives_* set the server's socket, not the client's; set them with "
            "setsockopt on asyncpg's own socket"
        )
    deadlines = Deadlines(
        connect_timeout_s=_deadline(text, "timeout", _ASYNCPG_CONNECT_S),
        read_timeout_s=_deadline(text, "command_timeout", None),
    )
    names = "|".join(name for name, _ in _SOCKET_NAMES)
    found = dict(re.findall(rf"\b({names})[\s:=]+(-?\d+)", text))
    if not found and not re.search(r"\b(command_)?timeout\s*=", text):
        raise StackSyntaxError("no asyncpg setting found")
    return _from_socket_names(found, defaults), deadlines


# urllib3's socket_options: (level, option, value) triples, set before the connect; its
# Timeout(connect=, read=) in seconds, each read bounded on its own (None: no bound).
_URLLIB3_LEVELS = {"SO_KEEPALIVE": "SOL_SOCKET"}  # every other option here is IPPROTO_TCP
_URLLIB3_OPTION = re.compile(
    r"\(\s*(?:socket\.)?(\w+)\s*,\s*(?:socket\.)?(\w+)\s*,\s*(-?\d+|True|False)\s*\)"
)


def _render_urllib3(tcp: TcpOptions, deadlines: Deadlines) -> str:
    triples = []
    for name, field in _SOCKET_NAMES:
        value = getattr(tcp, field)
        if field != "user_timeout_ms" and not tcp.keepalive:
            continue
        if value:
            level = _URLLIB3_LEVELS.get(name, "IPPROTO_TCP")
            triples.append(f"({level}, {name}, {int(value)})")
    options = "socket_options=HTTPConnection.default_socket_options"
    if triples:
        options += f" + [{', '.join(triples)}]"
    if deadlines.connect_timeout_s is None and deadlines.read_timeout_s is None:
        return options
    connect, read = deadlines.connect_timeout_s, deadlines.read_timeout_s
    return (
        f"{options} timeout=Timeout(connect={_seconds_or_none(connect)}, "
        f"read={_seconds_or_none(read)})"
    )


def _urllib3_deadlines(text: str) -> Deadlines:
    timeout = re.search(r"\btimeout\s*=\s*(Timeout\([^)]*\)|None|[\d.]+)", text)
    if timeout is None:
        return Deadlines()
    given = timeout[1]
    if not given.startswith("Timeout("):
        both = _deadline(f"t={given}", "t", None)  # a number: the connect's and each read's
        return Deadlines(connect_timeout_s=both, read_timeout_s=both)
    total = _deadline(given, "total", None)
    connect, read = _deadline(given, "connect", None), _deadline(given, "read", None)
    if total is not None:  # total caps both
        connect = total if connect is None else min(connect, total)
        read = total if read is None else min(read, total)
    return Deadlines(connect_timeout_s=connect, read_timeout_s=read)


def _parse_urllib3(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    found: dict[str, str] = {}
    known = {name for name, _ in _SOCKET_NAMES}
    for level, name, value in _URLLIB3_OPTION.findall(text):
        if name not in known:
            continue  # TCP_NODELAY and the like: nothing the model reads
        wanted = _URLLIB3_LEVELS.get(name, "IPPROTO_TCP")
        if level != wanted:
            # The kernel takes the number at the level given: SO_KEEPALIVE (9) at
            # IPPROTO_TCP is TCP_DEFER_ACCEPT, and keepalive stays off.
            raise StackSyntaxError(f"{name} is a {wanted} option, not {level}")
        found[name] = {"True": "1", "False": "0"}.get(value, value)
    deadlines = _urllib3_deadlines(text)
    if not found and not re.search(r"\b(socket_options|timeout)\s*=", text):
        raise StackSyntaxError("no urllib3 socket option or Timeout found")
    return _from_socket_names(found, defaults), deadlines


for _stack in (
    Stack(
        "asyncpg",
        "asyncpg: connect()/create_pool() arguments, and setsockopt on its socket",
        TcpOptions(keepalive=False),  # only TCP_NODELAY
        _render_asyncpg,
        _parse_asyncpg,
        Deadlines(connect_timeout_s=_ASYNCPG_CONNECT_S),
        syntax="command_timeout=None; setsockopt TCP_USER_TIMEOUT 5000, TCP_KEEPIDLE 10",
    ),
    Stack(
        "urllib3",
        "urllib3 (requests, the Kubernetes Python client): pool keyword arguments",
        TcpOptions(keepalive=False),  # default_socket_options: TCP_NODELAY only
        _render_urllib3,
        _parse_urllib3,
        syntax="socket_options=[(IPPROTO_TCP, TCP_USER_TIMEOUT, 5000)] "
        "timeout=Timeout(connect=5, read=None)",
    ),
):
    STACKS[_stack.name] = _stack
# --- end of asyncpg and urllib3 ---


def _user_timeout_as_deadline(
    tcp: TcpOptions, deadlines: Deadlines, notes: list[str], why: str
) -> float | None:
    """For a library that cannot set TCP_USER_TIMEOUT: its read deadline, which takes the
    user timeout's place where none is given, and the note that says so (``why``: the
    library's reason and what bounds a request instead)."""
    if not tcp.user_timeout_ms:
        return deadlines.read_timeout_s
    notes.append(f"TCP_USER_TIMEOUT {tcp.user_timeout_ms} is out of reach: {why}")
    return deadlines.read_timeout_s or tcp.user_timeout_ms / 1000


# node-postgres (pg): a JavaScript config object, times in milliseconds. keepAlive calls
# Node's socket.setKeepAlive(true, keepAliveInitialDelayMillis) once connected; libuv then
# sets TCP_KEEPIDLE to the delay in whole seconds and TCP_KEEPINTVL 1, TCP_KEEPCNT 10, which
# nothing changes (measured on the client's socket, docs/cookbook.md). A delay under 1 s
# (keepAlive alone: 0) makes TCP_KEEPIDLE fail, leaving the kernel's 7200/75/9 s. Node has no
# API for TCP_USER_TIMEOUT: pg's query_timeout, a timer on each query, is the only bound on a
# request in flight short of tcp_retries2.
NODE_KEEPALIVE_INTERVAL_S, NODE_KEEPALIVE_COUNT = 1, 10
_PG_TIMES = {  # the config keys this reads, each in milliseconds
    "keepAliveInitialDelayMillis",
    "query_timeout",
    "connectionTimeoutMillis",
}
# Accepted and bounding nothing here: the server's own timers (gone with the server) and the
# pool's (pg.Pool closes a client idle idleTimeoutMillis, 10 s by default: not a detection).
_PG_IGNORED = {"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"}
_PG_IGNORED |= {"idleTimeoutMillis", "max", "min", "maxLifetimeSeconds", "maxUses"}


def _node_keepalive_delay_s(tcp: TcpOptions) -> int:
    """The delay whose libuv probing (10 x 1 s after it) ends an idle wait no later than
    ``tcp``'s keepalive would, and sends its first probe no later (a path's idle timeout)."""
    idle = tcp.keepalive_idle_s or 0
    interval = tcp.keepalive_interval_s or NODE_KEEPALIVE_INTERVAL_S
    count = tcp.keepalive_count or NODE_KEEPALIVE_COUNT
    probes = count
    if tcp.user_timeout_ms:  # probing stops at the first probe past the user timeout
        probes = max(1, math.ceil((tcp.user_timeout_ms / 1000 - idle) / interval))
    ends_by = idle + probes * interval
    return max(1, min(idle, ends_by - NODE_KEEPALIVE_INTERVAL_S * NODE_KEEPALIVE_COUNT))


def _render_node_postgres(tcp: TcpOptions, deadlines: Deadlines) -> str:
    values = [f"keepAlive: {'true' if tcp.keepalive else 'false'}"]
    notes: list[str] = []
    if tcp.keepalive and tcp.keepalive_idle_s:
        delay_s = _node_keepalive_delay_s(tcp)
        values.append(f"keepAliveInitialDelayMillis: {delay_s * 1000}")
        if delay_s != tcp.keepalive_idle_s:
            notes.append(
                f"libuv probes {NODE_KEEPALIVE_COUNT} times {NODE_KEEPALIVE_INTERVAL_S} s "
                f"apart: a {delay_s} s delay ends an idle wait as {tcp.keepalive_idle_s} s "
                "would with the probes asked for"
            )
    query_timeout_s = _user_timeout_as_deadline(
        tcp,
        deadlines,
        notes,
        "Node has no API for it; query_timeout bounds each query in flight instead, a slow one too",
    )
    if query_timeout_s is not None:
        values.append(f"query_timeout: {round(query_timeout_s * 1000)}")
    if deadlines.connect_timeout_s is not None:
        values.append(f"connectionTimeoutMillis: {round(deadlines.connect_timeout_s * 1000)}")
    rendered = "{ " + ", ".join(values) + " }"
    return f"{rendered} // {'; '.join(notes)}" if notes else rendered


def _parse_node_postgres(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    text = re.sub(r"//[^\n]*", "", text)  # a rendering's notes: JavaScript comments
    found = dict(re.findall(r"""["']?(\w+)["']?\s*[:=]\s*([\w.]+)""", text))
    if not found:
        raise StackSyntaxError("no pg config key found (for example: keepAlive: true)")
    unknown = sorted(set(found) - _PG_TIMES - _PG_IGNORED - {"keepAlive"})
    if unknown:
        raise StackSyntaxError(f"{', '.join(unknown)}: not a pg config key this reads")
    if found.get("keepAlive", "false") not in ("true", "false"):
        raise StackSyntaxError(f"keepAlive: {found['keepAlive']}: pg takes true or false")
    times = {}
    for key in _PG_TIMES & set(found):
        if not found[key].isdigit():
            raise StackSyntaxError(f"{key}: {found[key]}: pg takes whole milliseconds")
        times[key] = int(found[key])
    tcp = defaults
    if found.get("keepAlive") == "true":
        delay_s = times.get("keepAliveInitialDelayMillis", 0) // 1000
        tcp = KERNEL_DEFAULT_KEEPALIVE  # a delay under 1 s sets nothing but SO_KEEPALIVE
        if delay_s:
            tcp = TcpOptions(
                keepalive=True,
                keepalive_idle_s=delay_s,
                keepalive_interval_s=NODE_KEEPALIVE_INTERVAL_S,
                keepalive_count=NODE_KEEPALIVE_COUNT,
            )
    deadlines = Deadlines(
        connect_timeout_s=times["connectionTimeoutMillis"] / 1000
        if times.get("connectionTimeoutMillis")
        else None,
        read_timeout_s=times["query_timeout"] / 1000 if times.get("query_timeout") else None,
    )
    return tcp, deadlines


STACKS["node-postgres"] = Stack(
    "node-postgres",
    "node-postgres (pg): Client or Pool config",
    TcpOptions(keepalive=False),  # keepAlive: false, and no query_timeout
    _render_node_postgres,
    _parse_node_postgres,
    syntax="{ keepAlive: true, keepAliveInitialDelayMillis: 10000, query_timeout: 5000 }",
)
# --- go-sql-driver/mysql and Go's HTTP/2 Transport (the Go stacks of issue 25) ---
# Both take Go durations ("5s", "1m30s", or 5 * time.Second). Their sockets come from a
# net.Dialer: Go 1.19's (Debian bookworm) KeepAlive, 0 meaning 15 s and -1 none, sets
# TCP_KEEPIDLE and TCP_KEEPINTVL both, after a Control function has set its own options;
# the count stays the kernel's. go-sql-driver/mysql turns SO_KEEPALIVE on itself on every
# TCP connection, whatever dialer made it (connector.go: SetKeepAlive(true)).
GO_DEFAULT_KEEPALIVE_S = 15
GO_DEFAULT_KEEPALIVE = TcpOptions(
    keepalive=True,
    keepalive_idle_s=GO_DEFAULT_KEEPALIVE_S,
    keepalive_interval_s=GO_DEFAULT_KEEPALIVE_S,
    keepalive_count=9,
)
_GO_TIME_UNITS = {
    "Nanosecond": 1e-9,
    "Microsecond": 1e-6,
    "Millisecond": 1e-3,
    "Second": 1.0,
    "Minute": 60.0,
    "Hour": 3600.0,
}
_GO_PRODUCT = re.compile(r"(\d+(?:\.\d+)?)\s*\*\s*time\.(\w+)")


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's time.Duration prints it: 500ms, 10s, 1m30s, 1h0m0s."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    text = f"{rest:g}s"
    if hours or minutes:
        text = f"{minutes:g}m{text}"
    if hours:
        text = f"{hours:g}h{text}"
    return text


def parse_go_duration(key: str, text: str) -> float:
    """A Go duration (``5s``, ``1m30s``, ``5 * time.Second``) in seconds; a bare number is
    refused as Go refuses it (time.ParseDuration: missing unit), except 0 and a negative
    one (a struct field's ``KeepAlive: -1``: nanoseconds, "none" to Go)."""
    product = _GO_PRODUCT.fullmatch(text.strip())
    if product is not None:
        if product[2] not in _GO_TIME_UNITS:
            raise StackSyntaxError(f"{key}: time.{product[2]} is not a time unit")
        return float(product[1]) * _GO_TIME_UNITS[product[2]]
    stripped = text.strip()
    if re.fullmatch(r"-?0", stripped):
        return 0.0
    if re.fullmatch(r"-\d+", stripped):
        return int(stripped) * 1e-9
    try:  # the project's one Go duration parser (durationpy), negatives as Go takes them
        seconds = parse_duration(stripped.removeprefix("-"))
    except ValueError:
        raise StackSyntaxError(
            f"{key}={text}: a Go duration with its unit (5s, 500ms, 1m30s)"
        ) from None
    return -seconds if stripped.startswith("-") else seconds


def _go_field(text: str, key: str) -> float | None:
    """``key``'s Go duration in ``text`` (``key=5s``, ``key: 5 * time.Second``), or None."""
    found = re.search(rf"\b{key}\s*[:=]\s*(\d+(?:\.\d+)?\s*\*\s*time\.\w+|[-\w.µ]+)", text)
    return None if found is None else parse_go_duration(key, found[1])


def _go_dialer(text: str, base: TcpOptions, keepalive_forced: bool = False) -> TcpOptions:
    """The socket a net.Dialer in ``text`` gives: its Control's setsockopt calls over
    ``base``, then its KeepAlive (0 or absent: 15 s; negative: left alone) over the idle
    time and the interval. ``keepalive_forced``: the library turns SO_KEEPALIVE on after
    the dial, whatever Control set."""
    names = "|".join(name for name, _ in _SOCKET_NAMES)
    found = dict(re.findall(rf"\b({names})[\s:=]+(-?\d+)", text))
    if keepalive_forced:
        found.pop("SO_KEEPALIVE", None)
    tcp = _from_socket_names(found, base)
    keepalive = _go_field(text, "KeepAlive")
    period = keepalive if keepalive else GO_DEFAULT_KEEPALIVE_S
    if period > 0:
        whole = math.ceil(period)  # Go rounds the period up to whole seconds
        tcp = replace(tcp, keepalive=True, keepalive_idle_s=whole, keepalive_interval_s=whole)
    return tcp


def _go_dialer_rendered(tcp: TcpOptions) -> str:
    return f"net.Dialer{{KeepAlive: -1, Control: setsockopt {_setsockopt_list(tcp)}}}"


# go-sql-driver/mysql: the DSN's timeout (each dial), readTimeout (each read of an answer:
# a long query too) and writeTimeout (each write: a full send buffer only); a dialer of one's
# own with mysql.RegisterDialContext for the socket options.
_MYSQL_DSN_KEYS = ("timeout", "readTimeout", "writeTimeout")


def _render_go_mysql(tcp: TcpOptions, deadlines: Deadlines) -> str:
    dsn = []
    if deadlines.connect_timeout_s is not None:
        dsn.append(f"timeout={go_duration(deadlines.connect_timeout_s)}")
    if deadlines.read_timeout_s is not None:
        dsn.append(f"readTimeout={go_duration(deadlines.read_timeout_s)}")
    dialer = f"mysql.RegisterDialContext: {_go_dialer_rendered(tcp)}"
    return f"DSN {'&'.join(dsn)}; {dialer}" if dsn else dialer


def _parse_go_mysql(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    given = {key: _go_field(text, key) for key in _MYSQL_DSN_KEYS}
    own_dialer = re.search(r"RegisterDialContext|Control|KeepAlive|\b(TCP|SO)_[A-Z]+\b", text)
    if own_dialer is None and all(value is None for value in given.values()):
        raise StackSyntaxError("no go-sql-driver/mysql setting found (for example: timeout=5s)")
    tcp = defaults
    if own_dialer is not None:
        # The driver's SetKeepAlive(true) after any dial: SO_KEEPALIVE on, at least the
        # kernel's times.
        tcp = _go_dialer(text, KERNEL_DEFAULT_KEEPALIVE, keepalive_forced=True)
    deadlines = Deadlines(
        connect_timeout_s=given["timeout"] or None, read_timeout_s=given["readTimeout"] or None
    )
    return tcp, deadlines


# golang.org/x/net/http2's Transport: ReadIdleTimeout (a PING after that long without a frame
# read; 0, the default: no pings) and PingTimeout (the PING's answer; 0 means 15 s). The pings
# go whether or not a request is in flight, without limit.
GO_HTTP2_PING_TIMEOUT_S = 15.0


def _render_go_http2(tcp: TcpOptions, deadlines: Deadlines) -> str:
    ping = deadlines.ping
    fields = "ReadIdleTimeout: 0 (no pings)"
    if ping is not None:
        fields = (
            f"ReadIdleTimeout: {go_duration(ping.interval_s)}, "
            f"PingTimeout: {go_duration(ping.ack_timeout_s)}"
        )
    rendered = f"http2.Transport{{{fields}}}"
    if tcp != GO_DEFAULT_KEEPALIVE:  # what a plain net.Dialer (tls.Dial's) leaves
        rendered += f"; DialTLSContext with {_go_dialer_rendered(tcp)}"
    return rendered


def _parse_go_http2(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    interval = _go_field(text, "ReadIdleTimeout")
    ack = _go_field(text, "PingTimeout")
    own_dialer = re.search(r"Control|KeepAlive|\b(TCP|SO)_[A-Z]+\b", text)
    if interval is None and ack is None and own_dialer is None:
        raise StackSyntaxError("no http2.Transport field found (for example: ReadIdleTimeout: 10s)")
    if (interval or 0) < 0 or (ack or 0) < 0:
        raise StackSyntaxError("ReadIdleTimeout and PingTimeout are durations, 0 or more")
    tcp = defaults if own_dialer is None else _go_dialer(text, TcpOptions(keepalive=False))
    if not interval:  # no health check: PingTimeout alone does nothing
        return tcp, Deadlines()
    ping = Ping(interval, ack or GO_HTTP2_PING_TIMEOUT_S, without_calls=True)
    return tcp, Deadlines(ping=ping)


for _stack in (
    Stack(
        "go-mysql",
        "go-sql-driver/mysql: DSN parameters, and a net.Dialer (mysql.RegisterDialContext)",
        GO_DEFAULT_KEEPALIVE,  # the driver's net.Dialer: Go's 15 s; no TCP_USER_TIMEOUT
        _render_go_mysql,
        _parse_go_mysql,
        syntax="timeout=5s readTimeout=30s; net.Dialer{KeepAlive: -1, Control: setsockopt "
        "TCP_USER_TIMEOUT 5000, TCP_KEEPIDLE 10}",
    ),
    Stack(
        "go-http2",
        "Go HTTP/2 (golang.org/x/net/http2): Transport fields",
        GO_DEFAULT_KEEPALIVE,  # its dialer's (tls.Dial's net.Dialer): Go's 15 s keepalive
        _render_go_http2,
        _parse_go_http2,
        syntax="ReadIdleTimeout: 30s, PingTimeout: 15s",
        ping=Ping(GO_HTTP2_PING_TIMEOUT_S, GO_HTTP2_PING_TIMEOUT_S),
    ),
):
    STACKS[_stack.name] = _stack
# --- end of go-sql-driver/mysql and Go's HTTP/2 Transport ---
# --- PgJDBC (Java) ---
# PgJDBC's connection parameters, a JDBC URL's query (jdbc:postgresql://host/db?a=1&b=2) or
# its Properties, times in whole seconds: tcpKeepAlive is a boolean (SO_KEEPALIVE with the
# kernel's 7200/75/9 s), socketTimeout SO_TIMEOUT on each read (0: none), connectTimeout the
# connect (10 s by default), loginTimeout the connect and the login (none unless set; a pool
# may set DriverManager's). Java has no TCP_USER_TIMEOUT; the keepalive times need a
# socketFactory of the user's that sets jdk.net.ExtendedSocketOptions (cookbook/java/
# Client.java's KeepaliveSocketFactory takes socketFactoryArg=IDLE,INTERVAL,COUNT). PgJDBC
# calls setKeepAlive(tcpKeepAlive) on the connected socket: a factory without
# tcpKeepAlive=true leaves keepalive off (measured, tests/cookbook/test_recipes.py).
# Through HikariCP (what the cookbook measured): the pool checks a connection idle over
# 500 ms as it lends it, reading with validationTimeout (5 s) as its deadline; a request a
# second makes that check the request in flight, so with no socketTimeout the read deadline
# is the pool's 5 s.
PGJDBC_FACTORY = "KeepaliveSocketFactory"
PGJDBC_DEADLINES = Deadlines(connect_timeout_s=10.0, read_timeout_s=5.0)
_PGJDBC_DEFAULTS = TcpOptions(user_timeout_ms=0, keepalive=False)
_PGJDBC_URL = "jdbc:postgresql://host/db"
PGJDBC_DEFAULTS_TEXT = (
    f"{_PGJDBC_URL}  # tcpKeepAlive=false socketTimeout=0 connectTimeout=10; HikariCP's "
    "validationTimeout 5000 ms bounds its check of each connection it lends"
)
_PGJDBC_SECONDS = ("socketTimeout", "connectTimeout", "loginTimeout")
_PGJDBC_KEYS = frozenset({"tcpKeepAlive", "socketFactory", "socketFactoryArg", *_PGJDBC_SECONDS})
# libpq's words, which PgJDBC ignores without a word: refused, saying so.
_PGJDBC_FOREIGN = frozenset({*_LIBPQ_KEYS, "connect_timeout"})


def _pgjdbc_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _pgjdbc_keepalive_times(tcp: TcpOptions) -> tuple[int | None, int | None, int | None]:
    """The factory's times: with no TCP_USER_TIMEOUT to end the probing at its first probe
    past it, no more probes than would have gone before that, so an idle wait ends as soon."""
    idle, interval, count = tcp.keepalive_idle_s, tcp.keepalive_interval_s, tcp.keepalive_count
    if tcp.user_timeout_ms and idle is not None and interval and count is not None:
        before = math.ceil((tcp.user_timeout_ms / 1000 - idle) / interval)
        count = max(1, min(count, before))
    return idle, interval, count


def _render_pgjdbc(tcp: TcpOptions, deadlines: Deadlines) -> str:
    if (tcp, deadlines) == (_PGJDBC_DEFAULTS, PGJDBC_DEADLINES):
        return PGJDBC_DEFAULTS_TEXT
    values = [f"tcpKeepAlive={'true' if tcp.keepalive else 'false'}"]
    notes: list[str] = []
    read_s = _user_timeout_as_deadline(
        tcp,
        deadlines,
        notes,
        "Java has no socket option for it; socketTimeout bounds each read instead, a slow "
        "query's too",
    )
    if read_s is not None:
        values.append(f"socketTimeout={_pgjdbc_seconds(read_s)}")
    connect_s = deadlines.connect_timeout_s
    if connect_s is not None and connect_s != PGJDBC_DEADLINES.connect_timeout_s:
        values.append(f"connectTimeout={_pgjdbc_seconds(connect_s)}")
    times = _pgjdbc_keepalive_times(tcp)
    if tcp.keepalive and None not in times and times != (7200, 75, 9):
        values.append(f"socketFactory={PGJDBC_FACTORY}")
        values.append(f"socketFactoryArg={','.join(map(str, times))}")
        notes.append(
            f"{PGJDBC_FACTORY}: yours, setting jdk.net.ExtendedSocketOptions' TCP_KEEPIDLE, "
            "TCP_KEEPINTERVAL, TCP_KEEPCOUNT (cookbook/java/Client.java)"
        )
    rendered = f"{_PGJDBC_URL}?" + "&".join(values)
    return f"{rendered}  # {'; '.join(notes)}" if notes else rendered


def _pgjdbc_parameters(query: str) -> dict[str, str]:
    found: dict[str, str] = {}
    near = {known.lower(): known for known in _PGJDBC_KEYS}
    for pair in re.split(r"[&;\s]+", query.strip()):
        key, equals, value = pair.partition("=")
        if not pair:
            continue
        if not equals:
            raise StackSyntaxError(f"{pair}: a PgJDBC parameter is key=value")
        if key in _PGJDBC_FOREIGN:
            raise StackSyntaxError(f"{key} is libpq's; PgJDBC has no such parameter")
        if key.lower() in near and near[key.lower()] != key:
            raise StackSyntaxError(
                f"{key}: PgJDBC's name is {near[key.lower()]} (it ignores any other)"
            )
        if key in _PGJDBC_KEYS:
            found[key] = value
    return found


def _pgjdbc_deadlines(found: dict[str, str]) -> Deadlines:
    seconds: dict[str, int] = {}
    for key in _PGJDBC_SECONDS:
        if key in found:
            if not found[key].isdigit():
                raise StackSyntaxError(f"{key}={found[key]}: PgJDBC takes whole seconds")
            seconds[key] = int(found[key])
    default_connect = int(PGJDBC_DEADLINES.connect_timeout_s or 0)
    bounds = [seconds.get("connectTimeout", default_connect), seconds.get("loginTimeout", 0)]
    bounds = [value for value in bounds if value > 0]
    read = seconds.get("socketTimeout", 0)
    return Deadlines(
        connect_timeout_s=float(min(bounds)) if bounds else None,
        # No socketTimeout: HikariCP's check of the connection it lends, 5 s.
        read_timeout_s=float(read) if read else PGJDBC_DEADLINES.read_timeout_s,
    )


def _pgjdbc_keepalive(found: dict[str, str]) -> TcpOptions:
    keepalive = found.get("tcpKeepAlive", "false")
    if keepalive not in ("true", "false"):
        raise StackSyntaxError(f"tcpKeepAlive={keepalive}: PgJDBC takes true or false")
    if keepalive == "false":  # whatever a socketFactory set: PgJDBC turns it off
        return _PGJDBC_DEFAULTS
    if "socketFactory" not in found:
        return replace(KERNEL_DEFAULT_KEEPALIVE, user_timeout_ms=0)
    times = re.fullmatch(r"(\d+),(\d+),(\d+)", found.get("socketFactoryArg", ""))
    if times is None:
        raise StackSyntaxError(
            f"socketFactoryArg: {PGJDBC_FACTORY} (cookbook/java/Client.java) takes "
            "IDLE,INTERVAL,COUNT in seconds, for example 10,1,3"
        )
    idle, interval, count = map(int, times.groups())
    return TcpOptions(
        user_timeout_ms=0,
        keepalive=True,
        keepalive_idle_s=idle,
        keepalive_interval_s=interval,
        keepalive_count=count,
    )


def _parse_pgjdbc(text: str, defaults: TcpOptions) -> tuple[TcpOptions, Deadlines]:
    text = re.sub(r"#[^\n]*", "", text).strip()  # a rendering's notes
    if text.startswith("jdbc:") and "?" not in text:  # a URL without parameters
        return defaults, PGJDBC_DEADLINES
    found = _pgjdbc_parameters(text.partition("?")[2] if "?" in text else text)
    if not found:
        raise StackSyntaxError("no PgJDBC TCP parameter found (for example: socketTimeout=5)")
    return _pgjdbc_keepalive(found), _pgjdbc_deadlines(found)


STACKS["pgjdbc"] = Stack(
    "pgjdbc",
    "PgJDBC through HikariCP: a JDBC URL's parameters, in seconds",
    _PGJDBC_DEFAULTS,  # tcpKeepAlive=false, socketTimeout=0
    _render_pgjdbc,
    _parse_pgjdbc,
    PGJDBC_DEADLINES,
    syntax="jdbc:postgresql://host/db?tcpKeepAlive=true&socketTimeout=5",
)
# --- end of PgJDBC ---
STACK_NAMES = tuple(STACKS)
# The stacks whose settings carry deadlines of the library's own (a read timeout, pings): the
# others' parse gives options only, and their default deadlines stand.
_STACKS_WITH_DEADLINES = frozenset(
    {
        "redis-py",
        "grpc-python",
        "asyncpg",
        "urllib3",
        "node-postgres",
        "go-mysql",
        "go-http2",
        "pgjdbc",
    }
)


def read(stack: Stack, text: str | None) -> tuple[TcpOptions, Deadlines]:
    """The options and deadlines a library's user gets: its defaults, with ``text`` (the
    library's own settings) over them."""
    if text is None or not text.strip():
        return stack.defaults, stack.default_deadlines
    tcp, deadlines = stack.parse(text, stack.defaults)
    if stack.name not in _STACKS_WITH_DEADLINES:
        deadlines = stack.default_deadlines
    return tcp, deadlines
