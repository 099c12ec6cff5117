"""The cookbook's recipes as data: for each client stack, its library's defaults and the
recommended settings, the programs that run them, what the client's socket must then carry,
the library's own deadlines, and the verdict each mode must reach under each fault.

The lab predicts from what it reads off the running client's socket; a recipe's ``socket``
is the claim this cookbook makes about the library (that ``grpc.keepalive_timeout_ms`` sets
TCP_USER_TIMEOUT, say), checked against that reading. ``deadlines`` are the library's own
timers, which no socket shows (redis-py's ``socket_timeout``), given to the model as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cookbook.clients import common
from tcpecho.settings import Deadlines, Ping
from tcpecho.tcp.options import TcpOptions

Mode = Literal["busy", "idle"]
# "survived": nothing failed, and the peer answered after the fault's window (idle-expiry).
Verdict = Literal["hang", "detected", "survived"]
# The lab's faults every recipe runs under: the peer force-deleted (its FIN lost), and a
# middlebox that forgets a flow idle for the lab's path idle timeout (15 s), then drops it.
Fault = Literal["force-delete", "idle-expiry"]
FAULTS: tuple[Fault, ...] = ("force-delete", "idle-expiry")
# Which server program a recipe's client talks to: the lab's echo server, or one of these.
Server = Literal["echo", "postgres", "redis", "grpc", "http", "mariadb", "http2"]

KERNEL_DEFAULT_KEEPALIVE = TcpOptions(
    keepalive=True, keepalive_idle_s=7200, keepalive_interval_s=75, keepalive_count=9
)
RECOMMENDED = TcpOptions(
    user_timeout_ms=common.USER_TIMEOUT_MS,
    keepalive=True,
    keepalive_idle_s=common.KEEPALIVE_IDLE_S,
    keepalive_interval_s=common.KEEPALIVE_INTERVAL_S,
    keepalive_count=common.KEEPALIVE_COUNT,
)


@dataclass(frozen=True)
class Recipe:
    stack: str  # a short name: the lab's profile names start with it
    library: str  # what the user has, with the version measured
    settings: Literal["defaults", "recommended", "user-timeout-only"]
    options: str  # the options as the user writes them, on one line (docs/cookbook.md has code)
    client: tuple[str, ...]  # the client's argv before its mode and settings
    server: Server
    socket: TcpOptions  # what the client's socket carries with these settings
    # Per fault (every one of FAULTS), the modes run and the verdict each must reach:
    # {"force-delete": {"busy": "hang", "idle": "hang"}, "idle-expiry": {"busy": ..., ...}}
    verdicts: dict[Fault, dict[Mode, Verdict]]
    deadlines: Deadlines = field(default_factory=Deadlines)

    def modes(self, fault: Fault) -> tuple[Mode, ...]:
        return tuple(self.verdicts[fault])

    def name(self, mode: Mode) -> str:
        return f"{self.stack}-{self.settings}-{mode}"


PYTHON_CLIENT = ("{python}", "-m")
# cookbook/node/package-lock.json's pg; libuv's keepalive (Node >= 12.17): the idle time
# given, then 10 probes 1 s apart.
NODE_PG_VERSION = "8.23.1"
NODE_KEEPALIVE = TcpOptions(
    keepalive=True,
    keepalive_idle_s=common.KEEPALIVE_IDLE_S,
    keepalive_interval_s=1,
    keepalive_count=10,
)

# Go's net.Dialer with KeepAlive 0 (Go 1.19): idle and interval 15 s, the kernel's count.
GO_DEFAULT_KEEPALIVE = TcpOptions(
    keepalive=True, keepalive_idle_s=15, keepalive_interval_s=15, keepalive_count=9
)
GO_MYSQL_VERSION = "1.5.0"  # Debian bookworm's golang-github-go-sql-driver-mysql-dev
GO_X_NET_VERSION = "0.7.0"  # Debian bookworm's golang-golang-x-net-dev

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "python-socket",
        "Python socket (stdlib)",
        "defaults",
        "none",
        (*PYTHON_CLIENT, "cookbook.clients.plain_socket"),
        "echo",
        TcpOptions(keepalive=False),
        {
            "force-delete": {"busy": "hang", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
    ),
    Recipe(
        "python-socket",
        "Python socket (stdlib)",
        "recommended",
        "setsockopt: TCP_USER_TIMEOUT 5000, SO_KEEPALIVE 1, TCP_KEEPIDLE 10, "
        "TCP_KEEPINTVL 1, TCP_KEEPCNT 3",
        (*PYTHON_CLIENT, "cookbook.clients.plain_socket"),
        "echo",
        RECOMMENDED,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
    ),
    Recipe(
        "libpq",
        "libpq via psycopg 3 (psycopg[binary])",
        "defaults",
        "none (libpq's keepalives=1 with the kernel's times: 7200/75/9 s)",
        (*PYTHON_CLIENT, "cookbook.clients.psycopg_client"),
        "postgres",
        # libpq turns keepalive on by default (keepalives=1) with the kernel's times.
        KERNEL_DEFAULT_KEEPALIVE,
        {
            "force-delete": {"busy": "hang", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
    ),
    Recipe(
        "libpq",
        "libpq via psycopg 3 (psycopg[binary])",
        "recommended",
        "tcp_user_timeout=5000 keepalives=1 keepalives_idle=10 keepalives_interval=1 "
        "keepalives_count=3",
        (*PYTHON_CLIENT, "cookbook.clients.psycopg_client"),
        "postgres",
        RECOMMENDED,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
    ),
    Recipe(
        "libpq",
        "libpq via psycopg 3 (psycopg[binary])",
        "user-timeout-only",
        "tcp_user_timeout=5000",
        (*PYTHON_CLIENT, "cookbook.clients.psycopg_client"),
        "postgres",
        # ruby-pg 509: it bounds a request in flight; a query waiting for its answer has
        # nothing unacknowledged, so only keepalive (the kernel's 2 h) could end that wait.
        TcpOptions(
            user_timeout_ms=common.USER_TIMEOUT_MS,
            keepalive=True,
            keepalive_idle_s=7200,
            keepalive_interval_s=75,
            keepalive_count=9,
        ),
        {
            "force-delete": {"busy": "detected", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
    ),
    Recipe(
        "redis-py",
        "redis-py",
        "defaults",
        "none (socket_timeout=5, socket_keepalive=True, keepalive 30/5/3 s)",
        (*PYTHON_CLIENT, "cookbook.clients.redis_client"),
        "redis",
        TcpOptions(keepalive=True, keepalive_idle_s=30, keepalive_interval_s=5, keepalive_count=3),
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "detected"},
        },
        Deadlines(read_timeout_s=5.0),
    ),
    Recipe(
        "redis-py",
        "redis-py",
        "recommended",
        "socket_timeout=None socket_keepalive=True socket_keepalive_options="
        "{TCP_USER_TIMEOUT: 5000, TCP_KEEPIDLE: 10, TCP_KEEPINTVL: 1, TCP_KEEPCNT: 3}",
        (*PYTHON_CLIENT, "cookbook.clients.redis_client"),
        "redis",
        RECOMMENDED,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
    ),
    Recipe(
        "grpc-python",
        "gRPC Python (grpcio)",
        "defaults",
        "none",
        (*PYTHON_CLIENT, "cookbook.clients.grpc_client"),
        "grpc",
        TcpOptions(keepalive=False),
        {
            "force-delete": {"busy": "hang", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
    ),
    Recipe(
        "grpc-python",
        "gRPC Python (grpcio)",
        "recommended",
        "grpc.keepalive_time_ms=10000 grpc.keepalive_timeout_ms=5000 "
        "grpc.keepalive_permit_without_calls=1 grpc.http2.max_pings_without_data=0",
        (*PYTHON_CLIENT, "cookbook.clients.grpc_client"),
        "grpc",
        # gRPC's keepalive is HTTP/2 pings, not SO_KEEPALIVE: only TCP_USER_TIMEOUT is set.
        TcpOptions(user_timeout_ms=common.USER_TIMEOUT_MS, keepalive=False),
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
        # The pings, with gRPC's own 60 s for an answer (grpc.http2.ping_timeout_ms).
        Deadlines(ping=Ping(common.KEEPALIVE_IDLE_S, 60.0, without_calls=True)),
    ),
    Recipe(
        "go",
        "Go net.Dialer (Debian's golang-go)",
        "defaults",
        "none (net.Dialer's KeepAlive 15 s: idle and interval 15 s, the kernel's count 9)",
        ("{go_client}",),
        "echo",
        TcpOptions(keepalive=True, keepalive_idle_s=15, keepalive_interval_s=15, keepalive_count=9),
        {
            "force-delete": {"busy": "hang", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "detected"},
        },
    ),
    Recipe(
        "go",
        "Go net.Dialer (Debian's golang-go)",
        "recommended",
        "KeepAlive: -1, Control: setsockopt TCP_USER_TIMEOUT 5000, SO_KEEPALIVE 1, "
        "TCP_KEEPIDLE 10, TCP_KEEPINTVL 1, TCP_KEEPCNT 3",
        ("{go_client}",),
        "echo",
        RECOMMENDED,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
    ),
    # asyncpg: no keepalive, no TCP_USER_TIMEOUT parameter; an event loop that makes its
    # socket sets them before the connect (a pool's init would, after the handshake).
    Recipe(
        "asyncpg",
        "asyncpg",
        "defaults",
        "none (timeout=60 for the connect, command_timeout=None; asyncpg sets only TCP_NODELAY)",
        (*PYTHON_CLIENT, "cookbook.clients.asyncpg_client"),
        "postgres",
        TcpOptions(keepalive=False),
        {
            "force-delete": {"busy": "hang", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
        Deadlines(connect_timeout_s=60.0),
    ),
    Recipe(
        "asyncpg",
        "asyncpg",
        "recommended",
        "timeout=60 command_timeout=None; on the socket before it connects: setsockopt "
        "TCP_USER_TIMEOUT 5000, SO_KEEPALIVE 1, TCP_KEEPIDLE 10, TCP_KEEPINTVL 1, TCP_KEEPCNT 3",
        (*PYTHON_CLIENT, "cookbook.clients.asyncpg_client"),
        "postgres",
        RECOMMENDED,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
        Deadlines(connect_timeout_s=60.0),
    ),
    # urllib3 (requests, the Kubernetes Python client): socket_options, set before connect.
    Recipe(
        "urllib3",
        "urllib3",
        "defaults",
        "none (socket_options=HTTPConnection.default_socket_options: TCP_NODELAY only; no Timeout)",
        (*PYTHON_CLIENT, "cookbook.clients.urllib3_client"),
        "http",
        TcpOptions(keepalive=False),
        {
            "force-delete": {"busy": "hang", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
    ),
    Recipe(
        "urllib3",
        "urllib3",
        "recommended",
        "socket_options=HTTPConnection.default_socket_options + [(IPPROTO_TCP, TCP_USER_TIMEOUT, "
        "5000), (SOL_SOCKET, SO_KEEPALIVE, 1), (IPPROTO_TCP, TCP_KEEPIDLE, 10), (IPPROTO_TCP, "
        "TCP_KEEPINTVL, 1), (IPPROTO_TCP, TCP_KEEPCNT, 3)]",
        (*PYTHON_CLIENT, "cookbook.clients.urllib3_client"),
        "http",
        RECOMMENDED,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
    ),
    # node-postgres (pg): Node has no API for TCP_USER_TIMEOUT. keepAlive calls
    # socket.setKeepAlive(true, keepAliveInitialDelayMillis): SO_KEEPALIVE, TCP_KEEPIDLE, and
    # libuv's fixed TCP_KEEPINTVL 1 and TCP_KEEPCNT 10 (read back from the socket); without
    # a delay (keepAlive alone) it leaves all three at the kernel's 7200/75/9 s.
    Recipe(
        "node-postgres",
        f"node-postgres (pg {NODE_PG_VERSION}, pg.Pool) on Node.js",
        "defaults",
        "none (keepAlive: false; no query_timeout, statement_timeout or connectionTimeoutMillis)",
        ("node", "{node_client}"),
        "postgres",
        TcpOptions(keepalive=False),
        {
            "force-delete": {"busy": "hang", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
    ),
    Recipe(
        "node-postgres",
        f"node-postgres (pg {NODE_PG_VERSION}, pg.Pool) on Node.js",
        "recommended",
        f"{{ keepAlive: true, keepAliveInitialDelayMillis: {common.KEEPALIVE_IDLE_S * 1000}, "
        f"query_timeout: {common.USER_TIMEOUT_MS} }}",
        ("node", "{node_client}"),
        "postgres",
        NODE_KEEPALIVE,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
        # query_timeout: pg's timer on each query, the bound a request in flight gets in
        # place of TCP_USER_TIMEOUT. The idle case's hour-long query passes its own, longer
        # one (cookbook/node/client.js): keepalive, not the timer, ends that wait.
        Deadlines(read_timeout_s=common.USER_TIMEOUT_MS / 1000),
    ),
    # go-sql-driver/mysql (Debian's golang-github-go-sql-driver-mysql-dev) through
    # database/sql: its own dialer is a net.Dialer with Go's default keepalive (15 s idle and
    # interval, the kernel's count), no TCP_USER_TIMEOUT; readTimeout and writeTimeout unset.
    Recipe(
        "go-mysql",
        f"go-sql-driver/mysql {GO_MYSQL_VERSION} (database/sql, Debian's package)",
        "defaults",
        "none (timeout, readTimeout, writeTimeout unset; the driver's net.Dialer: Go's "
        "KeepAlive 15 s, idle and interval 15 s, the kernel's count 9)",
        ("{go_mysql_client}",),
        "mariadb",
        GO_DEFAULT_KEEPALIVE,
        {
            "force-delete": {"busy": "hang", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "detected"},
        },
    ),
    Recipe(
        "go-mysql",
        f"go-sql-driver/mysql {GO_MYSQL_VERSION} (database/sql, Debian's package)",
        "recommended",
        "DSN timeout=5s; mysql.RegisterDialContext: net.Dialer{KeepAlive: -1, Control: "
        "setsockopt TCP_USER_TIMEOUT 5000, SO_KEEPALIVE 1, TCP_KEEPIDLE 10, TCP_KEEPINTVL 1, "
        "TCP_KEEPCNT 3}",
        ("{go_mysql_client}",),
        "mariadb",
        RECOMMENDED,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
        Deadlines(connect_timeout_s=5.0),
    ),
    # Go's HTTP/2 client (golang.org/x/net/http2, Debian's golang-golang-x-net-dev), h2c: its
    # keepalive is HTTP/2 PINGs, off unless ReadIdleTimeout is set (kubernetes 87615, golang/go
    # 31643); the socket keeps its dialer's Go keepalive (15 s) either way.
    Recipe(
        "go-http2",
        f"Go HTTP/2 Transport (golang.org/x/net/http2 {GO_X_NET_VERSION}, Debian's package)",
        "defaults",
        "none (ReadIdleTimeout 0: no pings; its net.Dialer: Go's KeepAlive 15 s)",
        ("{go_http2_client}",),
        "http2",
        GO_DEFAULT_KEEPALIVE,
        {
            "force-delete": {"busy": "hang", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "detected"},
        },
    ),
    Recipe(
        "go-http2",
        f"Go HTTP/2 Transport (golang.org/x/net/http2 {GO_X_NET_VERSION}, Debian's package)",
        "recommended",
        "http2.Transport{ReadIdleTimeout: 10s, PingTimeout: 5s}",
        ("{go_http2_client}",),
        "http2",
        GO_DEFAULT_KEEPALIVE,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
        # A PING after 10 s without a frame read, also with no request in flight, without
        # limit; its answer given 5 s.
        Deadlines(
            ping=Ping(common.KEEPALIVE_IDLE_S, common.USER_TIMEOUT_MS / 1000, without_calls=True)
        ),
    ),
)


# --- PgJDBC with HikariCP (Java) ---
# Debian bookworm's libpostgresql-jdbc-java and libhikaricp-java, the client compiled by
# cookbook/run.py (``{java_classpath}``: its classes and the jars). Java has no
# TCP_USER_TIMEOUT: PgJDBC's socketTimeout (SO_TIMEOUT on each read, seconds) bounds a request
# in flight. tcpKeepAlive is a boolean with the kernel's times; a socketFactory of the
# user's sets TCP_KEEPIDLE/TCP_KEEPINTERVAL/TCP_KEEPCOUNT (jdk.net.ExtendedSocketOptions).
PGJDBC_VERSION, HIKARICP_VERSION = "42.5.5", "2.7.9"
JAVA_CLIENT = ("java", "-cp", "{java_classpath}", "Client")
PGJDBC_KEEPALIVE = TcpOptions(
    user_timeout_ms=0,
    keepalive=True,
    keepalive_idle_s=common.KEEPALIVE_IDLE_S,
    keepalive_interval_s=common.KEEPALIVE_INTERVAL_S,
    keepalive_count=common.KEEPALIVE_COUNT,
)
# HikariCP checks a connection idle over 500 ms as it lends it (isValid, its network timeout
# validationTimeout: 5 s by default): a request a second makes that check the request in
# flight when the peer vanishes, a read deadline of 5 s whatever PgJDBC sets.
HIKARI_VALIDATION_TIMEOUT_S = 5.0
PGJDBC_CONNECT_TIMEOUT_S = 10.0  # connectTimeout's default; the model reads it for connects only
# What the defaults are, said in PgJDBC's words (tcpecho.stacks renders the same).
PGJDBC_DEFAULTS_TEXT = (
    "jdbc:postgresql://host/db  # tcpKeepAlive=false socketTimeout=0 connectTimeout=10; "
    "HikariCP's validationTimeout 5000 ms bounds its check of each connection it lends"
)

RECIPES = (
    *RECIPES,
    Recipe(
        "pgjdbc",
        f"PgJDBC {PGJDBC_VERSION} with HikariCP {HIKARICP_VERSION} (Debian's) on OpenJDK 17",
        "defaults",
        PGJDBC_DEFAULTS_TEXT,
        JAVA_CLIENT,
        "postgres",
        TcpOptions(user_timeout_ms=0, keepalive=False),
        {
            "force-delete": {"busy": "detected", "idle": "hang"},
            "idle-expiry": {"busy": "survived", "idle": "hang"},
        },
        Deadlines(
            connect_timeout_s=PGJDBC_CONNECT_TIMEOUT_S, read_timeout_s=HIKARI_VALIDATION_TIMEOUT_S
        ),
    ),
    Recipe(
        "pgjdbc",
        f"PgJDBC {PGJDBC_VERSION} with HikariCP {HIKARICP_VERSION} (Debian's) on OpenJDK 17",
        "recommended",
        f"jdbc:postgresql://host/db?tcpKeepAlive=true&socketTimeout="
        f"{common.USER_TIMEOUT_MS // 1000}&socketFactory=KeepaliveSocketFactory"
        f"&socketFactoryArg={common.KEEPALIVE_IDLE_S},{common.KEEPALIVE_INTERVAL_S},"
        f"{common.KEEPALIVE_COUNT}  # KeepaliveSocketFactory: yours, setting "
        "jdk.net.ExtendedSocketOptions' TCP_KEEPIDLE, TCP_KEEPINTERVAL, TCP_KEEPCOUNT "
        "(cookbook/java/Client.java)",
        JAVA_CLIENT,
        "postgres",
        PGJDBC_KEEPALIVE,
        {
            "force-delete": {"busy": "detected", "idle": "detected"},
            "idle-expiry": {"busy": "survived", "idle": "survived"},
        },
        # socketTimeout: each read's deadline, the bound a request in flight gets in place
        # of TCP_USER_TIMEOUT. The idle case's hour-long query sets its own network timeout
        # above its hour (cookbook/java/Client.java): keepalive, not the timer, ends that wait.
        Deadlines(
            connect_timeout_s=PGJDBC_CONNECT_TIMEOUT_S,
            read_timeout_s=common.USER_TIMEOUT_MS / 1000,
        ),
    ),
)
# --- end of PgJDBC with HikariCP ---
