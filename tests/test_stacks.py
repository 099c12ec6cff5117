"""The client libraries' own words (``tcpecho.stacks``): the same as the cookbook's measured
recipes, read back into the options they render, and taken by ``explain --stack``."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest

from cookbook.recipes import RECIPES, Recipe
from tcpecho.model import Activity, Failure, KernelSettings, predict
from tcpecho.settings import Deadlines, Ping
from tcpecho.stacks import (
    GO_DEFAULT_KEEPALIVE,
    KERNEL_DEFAULT_KEEPALIVE,
    STACKS,
    StackSyntaxError,
    go_duration,
    parse_go_duration,
    read,
)
from tcpecho.tcp.options import TcpOptions
from tests.support import tcpecho_executable

MEASURED = [recipe for recipe in RECIPES if recipe.stack in STACKS]


@pytest.mark.parametrize("recipe", MEASURED, ids=lambda r: f"{r.stack}-{r.settings}")
def test_each_stack_says_what_the_cookbook_measured(recipe: Recipe) -> None:
    """The recommended settings render as the recipe the lab ran; the defaults are the
    options its client's socket carried, with the library's own deadlines."""
    stack = STACKS[recipe.stack]
    if recipe.settings == "recommended":
        assert stack.render(recipe.socket, recipe.deadlines) == recipe.options
    if recipe.settings == "defaults":
        assert (stack.defaults, stack.default_deadlines) == (recipe.socket, recipe.deadlines)


def test_every_measured_stack_has_both_recipes() -> None:
    covered = {(recipe.stack, recipe.settings) for recipe in MEASURED}
    for name in STACKS:
        if name != "tcpecho":
            assert {(name, "defaults"), (name, "recommended")} <= covered, name


TUNED = TcpOptions(
    user_timeout_ms=27_000,
    keepalive=True,
    keepalive_idle_s=16,
    keepalive_interval_s=2,
    keepalive_count=5,
)


# node-postgres and pgjdbc cannot say TUNED (no TCP_USER_TIMEOUT; libuv's fixed probes):
# their own tests.
KEEPALIVE_STACKS = [
    n
    for n, stack in STACKS.items()
    if n not in ("tcpecho", "node-postgres", "pgjdbc") and not stack.ping
]
# gRPC's pings, which can wait for a call and stop after a few; Go's HTTP/2 pings always go,
# with or without requests, without limit: its own tests below.
PINGING_STACKS = [n for n, stack in STACKS.items() if stack.ping and n != "go-http2"]


@pytest.mark.parametrize("name", KEEPALIVE_STACKS)
def test_a_rendering_reads_back_as_the_same_options(name: str) -> None:
    stack = STACKS[name]
    tcp, deadlines = read(stack, stack.render(TUNED, Deadlines()))
    assert tcp == TUNED
    # Stacks whose words carry their deadlines (redis-py's socket_timeout, urllib3's
    # Timeout): the rendering says "none" and reads back as none. asyncpg's keeps its 60 s
    # connect timeout, which a rendering without one leaves alone.
    with_deadlines = ("redis-py", "urllib3")
    assert deadlines == (Deadlines() if name in with_deadlines else stack.default_deadlines)


@pytest.mark.parametrize("name", PINGING_STACKS)
@pytest.mark.parametrize(
    "ping",
    [
        Ping(16, 60.0, without_calls=True),
        Ping(30, 20.0),  # pings only while a call waits, at most two without data
        Ping(0.5, 60.0, without_calls=True, limit_without_data=5),
    ],
)
def test_pings_render_and_read_back_as_the_same(name: str, ping: Ping) -> None:
    stack = STACKS[name]
    tcp = TcpOptions(user_timeout_ms=27_000, keepalive=False)
    assert stack.ping is not None
    ping = replace(
        ping,
        limit_without_data=ping.limit_without_data or (None if ping.without_calls else 2),
        server_min_interval_s=stack.ping.server_min_interval_s,  # the library's, not a setting
    )
    assert read(stack, stack.render(tcp, Deadlines(ping=ping))) == (tcp, Deadlines(ping=ping))


def test_grpc_without_pings_sets_nothing_and_its_syntax_errors_say_why() -> None:
    grpc = STACKS["grpc-python"]
    assert read(grpc, None) == (TcpOptions(keepalive=False), Deadlines())
    # Without keepalive_time_ms, gRPC neither pings nor sets TCP_USER_TIMEOUT.
    assert read(grpc, "grpc.keepalive_timeout_ms=5000") == (
        TcpOptions(keepalive=False),
        Deadlines(),
    )
    # The Python list of tuples a user pastes reads as well; keepalive_timeout_ms's 20 s default.
    tcp, deadlines = read(grpc, '[("grpc.keepalive_time_ms", 30000)]')
    assert tcp.user_timeout_ms == 20_000
    assert deadlines.ping == Ping(
        30.0, 60.0, without_calls=False, limit_without_data=2, server_min_interval_s=300.0
    )
    with pytest.raises(StackSyntaxError, match=r"max_receive_message_length: not a keepalive"):
        read(grpc, "grpc.keepalive_time_ms=1000 grpc.max_receive_message_length=10")
    with pytest.raises(StackSyntaxError, match="no gRPC channel option"):
        read(grpc, "keepalive=1")
    with pytest.raises(StackSyntaxError, match="more than 0"):
        read(grpc, "grpc.keepalive_time_ms=0")


def test_settings_over_a_librarys_defaults() -> None:
    tcp, _ = read(STACKS["libpq"], "keepalives_idle=10 tcp_user_timeout=5000")
    # libpq keeps keepalive on, and the kernel's interval and count, unless told otherwise.
    assert (tcp.keepalive, tcp.keepalive_idle_s, tcp.keepalive_count) == (True, 10, 9)
    assert tcp.user_timeout_ms == 5000
    assert read(STACKS["libpq"], None) == (STACKS["libpq"].defaults, Deadlines())
    with pytest.raises(StackSyntaxError, match="keepalive_idle is not a libpq TCP parameter"):
        read(STACKS["libpq"], "keepalive_idle=10")


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tcpecho_executable(), "explain", *args], capture_output=True, text=True, timeout=60
    )


def test_explain_takes_a_librarys_settings_in_its_own_syntax() -> None:
    shown = _explain(
        "--stack", "libpq", "--stack-options", "keepalives_idle=10 tcp_user_timeout=5000", "--json"
    )
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["stack"]["name"] == "libpq"
    assert "--user-timeout" in document["settings"]["flags"]
    busy = next(s for s in document["scenarios"] if s["name"] == "busy")
    assert busy["mechanism"] == "user_timeout"
    defaults = _explain("--stack", "libpq")
    assert defaults.returncode == 0
    assert defaults.stdout.startswith("stack: libpq")
    assert "keepalives=1 keepalives_idle=7200" in defaults.stdout


def test_recommend_answers_in_the_librarys_words() -> None:
    shown = _explain(
        "--recommend",
        "--detect-within",
        "30s",
        "--path",
        "aws-nlb",
        "--stack",
        "redis-py",
        "--json",
    )
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    settings = document["stack"]["settings"]
    tcp, _ = read(STACKS["redis-py"], settings)
    flags = document["settings"]["flags"]
    assert tcp.as_flags() == tuple(flags)


@pytest.mark.parametrize(
    "args",
    [
        ("--stack", "libpq", "--stack-options", "keepalive_idle=10"),
        ("--stack-options", "keepalives_idle=10"),
        ("--stack", "libpq", "--user-timeout", "5s"),
        ("--stack", "nowhere"),
        (
            "--recommend",
            "--detect-within",
            "30s",
            "--stack",
            "libpq",
            "--stack-options",
            "keepalives=1",
        ),
    ],
)
def test_bad_stack_input_is_a_usage_error(args: tuple[str, ...]) -> None:
    result = _explain(*args)
    assert result.returncode == 2, args
    assert "Traceback" not in result.stderr


def test_explain_takes_grpcs_channel_options() -> None:
    options = (
        "grpc.keepalive_time_ms=10000 grpc.keepalive_timeout_ms=5000 "
        "grpc.keepalive_permit_without_calls=1 grpc.http2.max_pings_without_data=0"
    )
    shown = _explain("--stack", "grpc-python", "--stack-options", options, "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    scenarios = {s["name"]: s for s in document["scenarios"]}
    assert scenarios["busy"]["mechanism"] == "user_timeout"
    assert scenarios["idle"]["mechanism"] == "user_timeout"  # the user timeout on the ping
    assert scenarios["stalled-reader"]["mechanism"] == "ping_timeout"
    codes = {warning["code"] for warning in document["warnings"]}
    assert "ping-faster-than-server-allows" in codes
    assert "user-timeout-without-keepalive" not in codes  # the pings watch idle calls
    defaults = _explain("--stack", "grpc-python", "--json")
    scenarios = {s["name"]: s for s in json.loads(defaults.stdout)["scenarios"]}
    assert scenarios["busy"]["mechanism"] == "tcp_retries2"
    assert scenarios["idle"]["mechanism"] == "nothing"


# --- asyncpg and urllib3 ---


@pytest.mark.parametrize("name", ["asyncpg", "urllib3"])
@pytest.mark.parametrize(
    "deadlines",
    [Deadlines(connect_timeout_s=10.0, read_timeout_s=30.0), Deadlines(connect_timeout_s=2.5)],
)
def test_python_stacks_carry_their_deadlines_in_seconds(name: str, deadlines: Deadlines) -> None:
    stack = STACKS[name]
    assert read(stack, stack.render(TUNED, deadlines)) == (TUNED, deadlines)


def test_asyncpg_takes_its_deadlines_over_its_60_s_connect_and_names_the_server_side_trap() -> None:
    asyncpg = STACKS["asyncpg"]
    assert read(asyncpg, "command_timeout=30") == (
        TcpOptions(keepalive=False),
        Deadlines(connect_timeout_s=60.0, read_timeout_s=30.0),
    )
    # libpq's words, or the server's settings, would set the server's socket, not asyncpg's.
    for libpq_words in (
        "server_settings={'tcp_user_timeout': '5000'}",
        "postgresql://db/app?tcp_keepalives_idle=10",
        "keepalives_idle=10",
    ):
        with pytest.raises(StackSyntaxError, match="server's socket, not the client's"):
            read(asyncpg, libpq_words)
    with pytest.raises(StackSyntaxError, match="more than 0"):
        read(asyncpg, "timeout=0")
    with pytest.raises(StackSyntaxError, match="no asyncpg setting"):
        read(asyncpg, "ssl=True")


def test_urllib3_reads_socket_options_at_their_levels_and_its_timeout_forms() -> None:
    urllib3 = STACKS["urllib3"]
    tcp, _ = read(urllib3, "socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)]")
    assert (tcp.keepalive, tcp.keepalive_idle_s, tcp.user_timeout_ms) == (True, None, None)
    # SO_KEEPALIVE's number at IPPROTO_TCP is TCP_DEFER_ACCEPT: keepalive would stay off.
    with pytest.raises(StackSyntaxError, match="SO_KEEPALIVE is a SOL_SOCKET option"):
        read(urllib3, "socket_options=[(IPPROTO_TCP, SO_KEEPALIVE, 1)]")
    with pytest.raises(StackSyntaxError, match="TCP_KEEPIDLE is a IPPROTO_TCP option"):
        read(urllib3, "socket_options=[(SOL_SOCKET, TCP_KEEPIDLE, 10)]")
    assert read(urllib3, "timeout=3")[1] == Deadlines(connect_timeout_s=3.0, read_timeout_s=3.0)
    # total caps both; read=None is no bound on a read.
    assert read(urllib3, "timeout=Timeout(total=4, read=10)")[1] == Deadlines(4.0, 4.0)
    assert read(urllib3, "timeout=Timeout(connect=5, read=None)")[1] == Deadlines(5.0)
    with pytest.raises(StackSyntaxError, match="no urllib3 socket option"):
        read(urllib3, "retries=3")


@pytest.mark.parametrize("name", ["asyncpg", "urllib3"])
def test_recommend_answers_in_asyncpgs_and_urllib3s_words(name: str) -> None:
    shown = _explain("--recommend", "--detect-within", "30s", "--stack", name, "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    settings = document["stack"]["settings"]
    assert (
        "before it connects: setsockopt" if name == "asyncpg" else "socket_options="
    ) in settings
    tcp, _ = read(STACKS[name], settings)
    assert tcp.as_flags() == tuple(document["settings"]["flags"])
    assert tcp.user_timeout_ms
    assert tcp.keepalive


# node-postgres: pg's config object. What Node's keepalive sets is libuv's (cookbook/recipes.py,
# read back from the client's socket in tests/cookbook/test_recipes.py).
NODE = STACKS["node-postgres"]
NODE_TUNED = TcpOptions(
    keepalive=True, keepalive_idle_s=16, keepalive_interval_s=1, keepalive_count=10
)


def test_node_postgres_reads_back_what_node_can_set() -> None:
    deadlines = Deadlines(connect_timeout_s=3.0, read_timeout_s=7.5)
    rendered = NODE.render(NODE_TUNED, deadlines)
    assert rendered == (
        "{ keepAlive: true, keepAliveInitialDelayMillis: 16000, query_timeout: 7500, "
        "connectionTimeoutMillis: 3000 }"
    )
    assert read(NODE, rendered) == (NODE_TUNED, deadlines)
    assert NODE.render(NODE.defaults, Deadlines()) == "{ keepAlive: false }"
    # As a user writes it: quoted keys, a pool's and the server's own timers (read, bounding
    # nothing a dead peer leaves), whole milliseconds.
    pasted = "{'keepAlive': true, statement_timeout: 30000, idleTimeoutMillis: 10000, max: 20}"
    assert read(NODE, pasted) == (KERNEL_DEFAULT_KEEPALIVE, Deadlines())


def test_node_postgres_keepalive_without_a_delay_is_the_kernels() -> None:
    """A delay under 1 s sets TCP_KEEPIDLE to 0, which the kernel refuses, and libuv then
    sets neither interval nor count: keepAlive alone keeps the kernel's 7200/75/9 s."""
    assert read(NODE, "{ keepAlive: true }")[0] == KERNEL_DEFAULT_KEEPALIVE
    assert read(NODE, "keepAlive: true, keepAliveInitialDelayMillis: 999")[0] == (
        KERNEL_DEFAULT_KEEPALIVE
    )
    assert read(NODE, "keepAliveInitialDelayMillis: 10000")[0] == TcpOptions(keepalive=False)


def test_node_postgres_says_what_it_cannot_set() -> None:
    """TCP_USER_TIMEOUT becomes query_timeout, said so; other probes become a delay whose
    libuv probing ends an idle wait no later."""
    rendered = NODE.render(TUNED, Deadlines())
    assert "TCP_USER_TIMEOUT 27000 is out of reach" in rendered
    tcp, deadlines = read(NODE, rendered)
    assert deadlines == Deadlines(read_timeout_s=27.0)
    # TUNED's probing stops at the first probe past 27 s: 16 + 6 x 2 = 28 s; libuv's 16 + 10.
    assert tcp == NODE_TUNED
    few_probes = TcpOptions(keepalive=True, keepalive_idle_s=20, keepalive_interval_s=1)
    rendered = NODE.render(replace(few_probes, keepalive_count=3), Deadlines())
    assert "keepAliveInitialDelayMillis: 13000" in rendered
    assert "a 13 s delay ends an idle wait as 20 s would" in rendered


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{ keepAlive: yes }", "pg takes true or false"),
        ("{ keepAlive: true, query_timeout: 5s }", "pg takes whole milliseconds"),
        ("{ keepalive: true }", "keepalive: not a pg config key"),
        ("keepAlive", "no pg config key found"),
    ],
)
def test_node_postgres_syntax_errors_say_why(text: str, message: str) -> None:
    with pytest.raises(StackSyntaxError, match=message):
        read(NODE, text)


def test_recommend_for_node_postgres_is_in_pgs_words_and_keeps_its_promise() -> None:
    shown = _explain("--recommend", "--detect-within", "30s", "--stack", "node-postgres", "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    settings = document["stack"]["settings"]
    assert settings.startswith("{ keepAlive: true, keepAliveInitialDelayMillis: ")
    assert "TCP_USER_TIMEOUT" in settings
    assert "out of reach" in settings
    tcp, deadlines = read(NODE, settings)
    flags = document["settings"]["flags"]
    user_timeout = flags[flags.index("--user-timeout") + 1]
    assert deadlines.read_timeout_s == float(user_timeout.removesuffix("s"))
    # What Node really does with it still notices an idle dead peer within the 30 s.
    idle = predict(KernelSettings.here(), tcp, Failure.SILENT, Activity.IDLE)
    assert idle.high_s <= 30


# --- go-sql-driver/mysql and Go's HTTP/2 Transport: Go durations, Go's net.Dialer ---
GO_MYSQL = STACKS["go-mysql"]
GO_HTTP2 = STACKS["go-http2"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (5.0, "5s"), (90.0, "1m30s"), (3600.0, "1h0m0s"), (2.5, "2.5s")],
)
def test_go_durations_print_as_go_prints_them_and_read_back(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_go_duration("timeout", text) == seconds


@pytest.mark.parametrize("text", ["5", "5 seconds", "5S", "s", "1.5.5s"])
def test_a_go_duration_without_its_unit_is_refused_as_go_refuses_it(text: str) -> None:
    with pytest.raises(StackSyntaxError, match="a Go duration with its unit"):
        parse_go_duration("timeout", text)


def test_go_mysql_reads_its_dsn_and_its_dialer() -> None:
    tcp, deadlines = read(
        GO_MYSQL, "user@tcp(db:3306)/app?timeout=5s&readTimeout=1m&writeTimeout=5s"
    )
    # No dialer of one's own: the driver's, with Go's 15 s keepalive.
    assert tcp == GO_DEFAULT_KEEPALIVE
    assert deadlines == Deadlines(connect_timeout_s=5.0, read_timeout_s=60.0)
    # The trap: a KeepAlive >= 0 is applied after Control, over its idle time and interval.
    tcp, _ = read(
        GO_MYSQL,
        "net.Dialer{KeepAlive: 30 * time.Second, Control: setsockopt TCP_USER_TIMEOUT 5000, "
        "TCP_KEEPIDLE 10, TCP_KEEPINTVL 1, TCP_KEEPCNT 3}",
    )
    assert (tcp.keepalive_idle_s, tcp.keepalive_interval_s, tcp.keepalive_count) == (30, 30, 3)
    assert read(GO_MYSQL, "Control: setsockopt TCP_KEEPIDLE 10")[0].keepalive_idle_s == 15
    # KeepAlive -1 and no keepalive option: the driver still turns SO_KEEPALIVE on, with the
    # kernel's times.
    tcp, _ = read(GO_MYSQL, "KeepAlive: -1, Control: setsockopt TCP_USER_TIMEOUT 5000")
    assert tcp == replace(KERNEL_DEFAULT_KEEPALIVE, user_timeout_ms=5000)
    tcp, _ = read(GO_MYSQL, "KeepAlive: -1, Control: setsockopt SO_KEEPALIVE 0")
    assert tcp.keepalive
    with pytest.raises(StackSyntaxError, match="timeout=5: a Go duration with its unit"):
        read(GO_MYSQL, "timeout=5")
    with pytest.raises(StackSyntaxError, match="no go-sql-driver/mysql setting"):
        read(GO_MYSQL, "maxAllowedPacket=0")


@pytest.mark.parametrize(
    "tcp", [GO_DEFAULT_KEEPALIVE, TcpOptions(user_timeout_ms=27_000, keepalive=False), TUNED]
)
@pytest.mark.parametrize(
    "ping", [Ping(30, 15.0, without_calls=True), Ping(0.5, 2.5, without_calls=True)]
)
def test_go_http2_pings_render_and_read_back_as_the_same(tcp: TcpOptions, ping: Ping) -> None:
    rendered = GO_HTTP2.render(tcp, Deadlines(ping=ping))
    assert rendered.startswith("http2.Transport{ReadIdleTimeout: ")
    assert ("DialTLSContext" in rendered) == (tcp != GO_DEFAULT_KEEPALIVE)
    assert read(GO_HTTP2, rendered) == (tcp, Deadlines(ping=ping))


def test_go_http2_pings_only_with_a_read_idle_timeout() -> None:
    assert read(GO_HTTP2, None) == (GO_DEFAULT_KEEPALIVE, Deadlines())
    # PingTimeout alone does nothing: no health check runs without ReadIdleTimeout.
    assert read(GO_HTTP2, "PingTimeout: 5s") == (GO_DEFAULT_KEEPALIVE, Deadlines())
    assert read(GO_HTTP2, "ReadIdleTimeout: 0") == (GO_DEFAULT_KEEPALIVE, Deadlines())
    # The kubelet's: PingTimeout left at 0, which means 15 s.
    _, deadlines = read(GO_HTTP2, "t.ReadIdleTimeout = 30 * time.Second")
    assert deadlines.ping == Ping(30.0, 15.0, without_calls=True)
    assert GO_HTTP2.render(GO_DEFAULT_KEEPALIVE, Deadlines()) == (
        "http2.Transport{ReadIdleTimeout: 0 (no pings)}"
    )
    with pytest.raises(StackSyntaxError, match="ReadIdleTimeout=30: a Go duration"):
        read(GO_HTTP2, "ReadIdleTimeout=30")
    with pytest.raises(StackSyntaxError, match=r"no http2\.Transport field"):
        read(GO_HTTP2, "IdleConnTimeout: 90s")


@pytest.mark.parametrize("name", ["go-mysql", "go-http2"])
def test_recommend_answers_in_the_go_librarys_words(name: str) -> None:
    shown = _explain("--recommend", "--detect-within", "30s", "--stack", name, "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    settings = document["stack"]["settings"]
    tcp, deadlines = read(STACKS[name], settings)
    assert tcp.as_flags() == tuple(document["settings"]["flags"])
    if name == "go-mysql":
        assert settings.startswith("mysql.RegisterDialContext: net.Dialer{KeepAlive: -1, ")
        assert tcp.user_timeout_ms
        assert tcp.keepalive
        return
    assert settings.startswith("http2.Transport{ReadIdleTimeout: ")
    ping = deadlines.ping
    assert ping is not None
    # A dead idle peer noticed within the 30 s: the ping, then its answer's 15 s default.
    assert ping.ack_timeout_s == 15.0
    idle = predict(KernelSettings.here(), tcp, Failure.SILENT, Activity.IDLE, deadlines)
    assert idle.high_s <= 30


@pytest.mark.parametrize(
    ("name", "options"), [("go-mysql", "timeout=5"), ("go-http2", "PingTimeout: -5s")]
)
def test_bad_go_settings_are_a_usage_error(name: str, options: str) -> None:
    result = _explain("--stack", name, "--stack-options", options)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr


# pgjdbc: a JDBC URL's parameters, in seconds, through HikariCP (cookbook/recipes.py; the Java
# client's socket read back in tests/cookbook/test_recipes.py).
PGJDBC = STACKS["pgjdbc"]
PGJDBC_TUNED = replace(TUNED, user_timeout_ms=0)


def test_pgjdbc_reads_back_what_java_can_set() -> None:
    deadlines = Deadlines(connect_timeout_s=3.0, read_timeout_s=7.0)
    rendered = PGJDBC.render(PGJDBC_TUNED, deadlines)
    assert rendered.startswith(
        "jdbc:postgresql://host/db?tcpKeepAlive=true&socketTimeout=7&connectTimeout=3"
        "&socketFactory=KeepaliveSocketFactory&socketFactoryArg=16,2,5  # "
    )
    assert read(PGJDBC, rendered) == (PGJDBC_TUNED, deadlines)
    # The defaults, said as such, and a URL without parameters reads back as them.
    defaults = PGJDBC.render(PGJDBC.defaults, PGJDBC.default_deadlines)
    assert defaults == _recipe_options("pgjdbc", "defaults")
    assert read(PGJDBC, defaults) == (PGJDBC.defaults, PGJDBC.default_deadlines)
    assert read(PGJDBC, "jdbc:postgresql://db.example:5432/app") == read(PGJDBC, None)
    # As a user pastes it: other parameters (sslmode, ApplicationName) pass; loginTimeout
    # shorter than connectTimeout bounds the connect; no socketTimeout leaves HikariCP's 5 s.
    pasted = "jdbc:postgresql://db/app?sslmode=require&tcpKeepAlive=true&loginTimeout=4"
    tcp, read_back = read(PGJDBC, pasted)
    assert tcp == replace(KERNEL_DEFAULT_KEEPALIVE, user_timeout_ms=0)
    assert read_back == Deadlines(connect_timeout_s=4.0, read_timeout_s=5.0)


def _recipe_options(stack: str, settings: str) -> str:
    return next(r.options for r in RECIPES if (r.stack, r.settings) == (stack, settings))


def test_pgjdbc_says_what_java_cannot_set() -> None:
    """TCP_USER_TIMEOUT becomes socketTimeout, said so; keepalive times need a factory."""
    rendered = PGJDBC.render(TUNED, Deadlines())
    assert "TCP_USER_TIMEOUT 27000 is out of reach" in rendered
    assert "socketTimeout=27&" in rendered
    assert read(PGJDBC, rendered) == (PGJDBC_TUNED, Deadlines(10.0, 27.0))
    # Probing that the user timeout would have ended early: no more probes than before it.
    many = TcpOptions(
        user_timeout_ms=25_000,
        keepalive=True,
        keepalive_idle_s=20,
        keepalive_interval_s=1,
        keepalive_count=9,
    )
    assert "socketFactoryArg=20,1,5  #" in PGJDBC.render(many, Deadlines())
    # The kernel's times need no factory: tcpKeepAlive=true is all.
    kernel = PGJDBC.render(KERNEL_DEFAULT_KEEPALIVE, Deadlines(read_timeout_s=30.0))
    assert kernel == "jdbc:postgresql://host/db?tcpKeepAlive=true&socketTimeout=30"


def test_pgjdbc_turns_a_factorys_keepalive_off_without_tcp_keepalive() -> None:
    """PgJDBC calls setKeepAlive(tcpKeepAlive) on the connected socket (measured in
    tests/cookbook/test_recipes.py): the factory's times stay, SO_KEEPALIVE does not."""
    text = "socketFactory=KeepaliveSocketFactory&socketFactoryArg=10,1,3&socketTimeout=5"
    assert read(PGJDBC, text)[0] == PGJDBC.defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcpKeepAlive=yes", "PgJDBC takes true or false"),
        ("socketTimeout=5s", "PgJDBC takes whole seconds"),
        ("socketTimeout=0.5", "PgJDBC takes whole seconds"),
        ("tcpKeepalive=true", "PgJDBC's name is tcpKeepAlive"),
        ("keepalives_idle=10", "keepalives_idle is libpq's"),
        ("tcpKeepAlive=true&socketFactory=F&socketFactoryArg=10", "IDLE,INTERVAL,COUNT"),
        ("sslmode=require", "no PgJDBC TCP parameter found"),
        ("socketTimeout", "a PgJDBC parameter is key=value"),
    ],
)
def test_pgjdbc_syntax_errors_say_why(text: str, message: str) -> None:
    with pytest.raises(StackSyntaxError, match=message):
        read(PGJDBC, text)


def test_recommend_for_pgjdbc_is_in_its_words_and_keeps_its_promise() -> None:
    shown = _explain("--recommend", "--detect-within", "30s", "--stack", "pgjdbc", "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    settings = document["stack"]["settings"]
    assert settings.startswith("jdbc:postgresql://host/db?tcpKeepAlive=true&socketTimeout=")
    assert "TCP_USER_TIMEOUT" in settings
    assert "out of reach" in settings
    assert "socketFactory=KeepaliveSocketFactory&socketFactoryArg=" in settings
    tcp, deadlines = read(PGJDBC, settings)
    flags = document["settings"]["flags"]
    user_timeout = flags[flags.index("--user-timeout") + 1]
    assert deadlines.read_timeout_s == float(user_timeout.removesuffix("s"))
    assert tcp.user_timeout_ms == 0
    busy = predict(KernelSettings.here(), tcp, Failure.SILENT, Activity.ACTIVE, deadlines)
    idle = predict(KernelSettings.here(), tcp, Failure.SILENT, Activity.IDLE, deadlines)
    assert max(busy.high_s, idle.high_s) <= 30
