"""The recipes as data, and the settings of the clients that run them, read back from real
sockets on loopback: what the page says a library's options do is what its socket shows.
(The lab run, ``scripts/nox -s cookbook``, checks the same for every stack in its pods.)"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import redis
import urllib3

from cookbook import results, run
from cookbook.clients import (
    asyncpg_client,
    plain_socket,
    psycopg_client,
    redis_client,
    urllib3_client,
)
from cookbook.recipes import (
    FAULTS,
    KERNEL_DEFAULT_KEEPALIVE,
    NODE_PG_VERSION,
    RECIPES,
    RECOMMENDED,
    Recipe,
)
from tcpecho.lab import servers
from tcpecho.stacks import STACKS
from tcpecho.stacks import read as read_stack
from tcpecho.tcp import diag
from tcpecho.tcp.options import read_effective
from tests.conftest import root_missing


def _recipe(stack: str, settings: str) -> Recipe:
    return next(r for r in RECIPES if r.stack == stack and r.settings == settings)


def test_every_stack_has_its_defaults_and_the_recommended_settings() -> None:
    stacks = {recipe.stack for recipe in RECIPES}
    assert len(stacks) >= 5
    for stack in stacks:
        assert {"defaults", "recommended"} <= {r.settings for r in RECIPES if r.stack == stack}
    names = [(recipe.stack, recipe.settings) for recipe in RECIPES]
    assert len(names) == len(set(names))  # so each profile name, recipe.name(mode), is unique
    for recipe in RECIPES:
        assert set(recipe.verdicts) == set(FAULTS), recipe.name("busy")  # every fault
        for fault in FAULTS:
            assert recipe.modes(fault) == ("busy", "idle"), (fault, recipe.name("busy"))
        if recipe.settings == "recommended":
            # Bounded when the peer vanishes; keeps its flow through the path's idle timeout.
            assert set(recipe.verdicts["force-delete"].values()) == {"detected"}
            assert set(recipe.verdicts["idle-expiry"].values()) == {"survived"}
        # A request a second keeps any flow: a busy connection outlives the idle timeout.
        assert recipe.verdicts["idle-expiry"]["busy"] == "survived"
        # survived is idle-expiry's: under force-delete there is nothing to survive to.
        assert "survived" not in recipe.verdicts["force-delete"].values()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that accepts and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


def _options(sock: socket.socket) -> dict[str, object]:
    return dict(read_effective(sock).as_dict())


def _redis_socket(host: str, port: int, **settings: Any) -> socket.socket:
    """redis-py's own socket setup (its handshake would need a redis server: not called)."""
    connection = redis.Connection(host=host, port=port, **settings)  # type: ignore[no-untyped-call]
    sock: socket.socket = connection._connect()  # type: ignore[no-untyped-call]
    return sock


def test_the_plain_socket_recipe_sets_what_the_page_says(listener: socket.socket) -> None:
    with socket.create_connection(listener.getsockname()) as sock:
        plain_socket.configure(sock)
        assert results.socket_problems(RECOMMENDED, _options(sock)) == []


def test_redis_py_sets_tcp_user_timeout_through_socket_keepalive_options(
    listener: socket.socket,
) -> None:
    host, port = listener.getsockname()
    with _redis_socket(host, port, **redis_client.recommended()) as sock:
        assert results.socket_problems(RECOMMENDED, _options(sock)) == []
    with _redis_socket(host, port) as defaults:
        declared = _recipe("redis-py", "defaults").socket
        assert results.socket_problems(declared, _options(defaults)) == []


def test_libpq_sets_its_keepalive_and_user_timeout_before_it_connects(
    listener: socket.socket,
) -> None:
    host, port = listener.getsockname()
    conninfo = psycopg.conninfo.make_conninfo(
        host=host, port=port, user="postgres", **psycopg_client.recommended()
    )
    pgconn = psycopg.pq.PGconn.connect_start(conninfo.encode())
    try:
        assert pgconn.status != psycopg.pq.ConnStatus.BAD, pgconn.error_message
        with socket.socket(fileno=os.dup(pgconn.socket)) as sock:
            assert results.socket_problems(RECOMMENDED, _options(sock)) == []
    finally:
        pgconn.finish()


@pytest.mark.skipif(shutil.which("go") is None, reason="go missing: apt-get install golang-go")
def test_the_go_client_builds_and_refuses_bad_arguments(tmp_path: Path) -> None:
    binary = run.build_go_client(tmp_path)
    refused = subprocess.run([binary, "sideways"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert "usage: client busy|idle defaults|recommended" in refused.stderr


# --- asyncpg and urllib3 ---


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {within_s:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def http_port() -> Iterator[int]:
    """The cookbook's HTTP/1.1 keep-alive server on loopback, as the lab starts it."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tcpecho.lab.http_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [run.ROOT, *sys.path]))},
    )
    try:
        _wait_for_port(port, server)
        yield port
    finally:
        _stop(server)


def test_urllib3_keeps_one_connection_with_the_socket_options_it_was_given(
    http_port: int,
) -> None:
    for settings in ("defaults", "recommended"):
        pool = urllib3_client.pool("127.0.0.1", http_port, settings)
        try:
            first = pool.urlopen("GET", "/", release_conn=False, preload_content=False)
            connection = first.connection  # read before the answer: reading it all releases it
            assert isinstance(connection, urllib3.connection.HTTPConnection)
            sock = connection.sock
            assert sock is not None
            assert first.read() == b"ok\n"
            first.release_conn()
            # HTTP/1.1 keep-alive: the next request goes on the same socket.
            second = pool.urlopen("GET", "/", release_conn=False, preload_content=False)
            reused = second.connection
            assert isinstance(reused, urllib3.connection.HTTPConnection)
            assert reused.sock is sock
            declared = _recipe("urllib3", settings).socket
            assert results.socket_problems(declared, _options(sock)) == []
            second.read()
            second.release_conn()
            assert pool.request("GET", "/nowhere").status == 404
        finally:
            pool.close()


@pytest.fixture
def postgres_port() -> Iterator[int]:
    """A real PostgreSQL on loopback, the lab's preset as the cookbook runs it (root: it runs
    it as the postgres user, in a directory of the preset's own)."""
    reason = root_missing() or servers.missing("postgres")
    if reason:
        pytest.skip(reason)
    port = _free_port()
    with servers.prepared("postgres") as command:
        command = command.replace("{host}", "127.0.0.1").replace("{port}", str(port))
        server = subprocess.Popen(["sh", "-c", command], stdout=subprocess.DEVNULL)
        try:
            _wait_for_port(port, server)
            yield port
        finally:
            _stop(server)


async def _asyncpg_socket_and(port: int, query: str, dsn: str | None = None) -> tuple[Any, Any]:
    """The options on a pooled asyncpg connection's socket, and the answer to ``query``."""
    async with (
        asyncpg_client.create_pool("127.0.0.1", port)
        if dsn is None
        else (asyncpg.create_pool(dsn, min_size=1, max_size=1)) as pool,
        pool.acquire() as connection,
    ):
        sock = connection._con._transport.get_extra_info("socket")
        return _options(sock), await connection.fetchval(query)


def test_asyncpg_carries_the_options_from_its_connect_on_and_not_from_server_settings(
    postgres_port: int,
) -> None:
    query = "SHOW tcp_user_timeout"
    with asyncio.Runner(loop_factory=asyncpg_client.ConfiguredLoop) as runner:
        options, answer = runner.run(_asyncpg_socket_and(postgres_port, query))
    assert results.socket_problems(RECOMMENDED, options) == []
    assert answer == "0"  # the server's own socket is left alone
    with asyncio.Runner() as runner:
        options, _ = runner.run(_asyncpg_socket_and(postgres_port, query))
        declared = _recipe("asyncpg", "defaults").socket
        assert results.socket_problems(declared, options) == []
        # The trap: libpq's words in an asyncpg DSN go to server_settings, the server's socket.
        dsn = f"postgresql://postgres@127.0.0.1:{postgres_port}/postgres?tcp_user_timeout=5000"
        options, answer = runner.run(_asyncpg_socket_and(postgres_port, query, dsn))
    assert answer == "5000"  # milliseconds, as SHOW gives it
    assert options["user_timeout_ms"] == 0


# node-postgres: the client installed as the cookbook installs it, its socket read back as the
# lab reads a program's (pidfd_getfd: root).
NODE_MISSING = shutil.which("node") is None or shutil.which("npm") is None


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed from the npm registry, as the cookbook installs it; a machine that cannot
    reach the registry skips, saying npm's error (any other failure fails)."""
    try:
        return run.install_node_client(tmp_path_factory.mktemp("node"))
    except run.NodeInstallError as error:
        if not any(code in str(error) for code in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED")):
            raise
        pytest.skip(f"the npm registry is out of reach: {error}")


def _program_options(pid: int, port: int, within_s: float = 10.0) -> dict[str, object]:
    """The options of ``pid``'s connection to ``port`` once it shows keepalive or the time
    is up (pg sets keepalive right after the connect)."""
    deadline = time.monotonic() + within_s
    seen: dict[str, object] = {}
    while time.monotonic() < deadline:
        owners = diag.owners(pids=[pid])
        for connection in diag.connections():
            owner = owners.get(connection.inode)
            if owner is not None and connection.peer_port == port:
                effective = diag.socket_options(owner)
                seen = {} if effective is None else dict(effective.as_dict())
        if seen.get("keepalive"):
            break
        time.sleep(0.1)
    return seen


def _node(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TCPECHO_LAB_HOST": "127.0.0.1", "TCPECHO_LAB_PORT": str(port)}
    return subprocess.Popen(["node", *argv], env=env, stderr=subprocess.PIPE)


@pytest.mark.skipif(NODE_MISSING, reason="node or npm missing: apt-get install nodejs npm")
def test_the_node_client_installs_from_its_lockfile_and_refuses_bad_arguments(
    node_client: Path,
) -> None:
    installed = json.loads((node_client.parent / "node_modules/pg/package.json").read_text())
    assert installed["version"] == NODE_PG_VERSION
    refused = subprocess.run(
        ["node", node_client, "busy", "sideways"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2
    assert "usage: client.js busy|idle defaults|recommended" in refused.stderr


@pytest.mark.skipif(NODE_MISSING, reason="node or npm missing: apt-get install nodejs npm")
@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's socket needs root")
@pytest.mark.parametrize("settings", ["defaults", "recommended"])
def test_the_node_clients_socket_carries_what_its_recipe_says(
    node_client: Path, listener: socket.socket, settings: str
) -> None:
    port = listener.getsockname()[1]
    client = _node([str(node_client), "busy", settings], port)
    try:
        seen = _program_options(client.pid, port, within_s=2.0 if settings == "defaults" else 10)
        assert seen, "the client's connection was not found"
        assert results.socket_problems(_recipe("node-postgres", settings).socket, seen) == []
    finally:
        client.kill()
        client.wait()


@pytest.mark.skipif(NODE_MISSING, reason="node or npm missing: apt-get install nodejs npm")
@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's socket needs root")
def test_node_keepalive_without_a_delay_keeps_the_kernels_times(
    node_client: Path, listener: socket.socket
) -> None:
    """The trap docs/cookbook.md names: keepAlive alone (delay 0) sets SO_KEEPALIVE only."""
    port = listener.getsockname()[1]
    pg = str(node_client.parent / "node_modules" / "pg")
    script = (
        f"const {{ Client }} = require({json.dumps(pg)}); new Client({{ host: '127.0.0.1', "
        f"port: {port}, user: 'postgres', keepAlive: true }}).connect().catch(() => {{}})"
    )
    client = _node(["-e", script], port)
    try:
        seen = _program_options(client.pid, port)
        assert results.socket_problems(KERNEL_DEFAULT_KEEPALIVE, seen) == []
    finally:
        client.kill()
        client.wait()


# --- go-sql-driver/mysql and Go's HTTP/2 Transport: built offline on Debian's Go modules ---
GO_MISSING = (
    "go missing: apt-get install golang-go"
    if shutil.which("go") is None
    else ", ".join(
        f"{path} missing: apt-get install {package}"
        for path, package in run.GO_MODULES.items()
        if not path.exists()
    )
    or None
)
GO_STACKS = ("go-mysql", "go-http2")


@pytest.fixture(scope="module")
def go_clients(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both clients, built as the cookbook builds them (GOPATH mode, no module proxy)."""
    if GO_MISSING:
        pytest.skip(GO_MISSING)
    workdir = tmp_path_factory.mktemp("go")
    return {
        "go-mysql": run.build_go_mysql_client(workdir),
        "go-http2": run.build_go_http2_client(workdir),
    }


def _go_client(binary: Path, mode: str, settings: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TCPECHO_LAB_HOST": "127.0.0.1", "TCPECHO_LAB_PORT": str(port)}
    return subprocess.Popen([binary, mode, settings], env=env, stderr=subprocess.PIPE)


def _ended(client: subprocess.Popen[bytes], within_s: float) -> tuple[int | None, str]:
    """The client's exit status and what it said, or None if it still runs after ``within_s``."""
    try:
        client.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        return None, ""
    assert client.stderr is not None
    return client.returncode, client.stderr.read().decode()


def test_the_go_library_clients_build_offline_into_the_workdir_and_refuse_bad_arguments(
    go_clients: dict[str, Path],
) -> None:
    sources = sorted((run.ROOT / "cookbook" / "go").rglob("*"))
    for binary in go_clients.values():
        assert binary.parent != run.ROOT
        refused = subprocess.run([binary, "busy", "sideways"], capture_output=True, text=True)
        assert refused.returncode == 2
        assert "usage: client busy|idle defaults|recommended" in refused.stderr
    # Nothing was written beside the sources (no go.mod, no vendor/, no binary).
    assert sorted((run.ROOT / "cookbook" / "go").rglob("*")) == sources


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's socket needs root")
@pytest.mark.parametrize("settings", ["defaults", "recommended"])
@pytest.mark.parametrize("stack", GO_STACKS)
def test_the_go_library_clients_sockets_carry_what_their_recipes_say(
    go_clients: dict[str, Path], listener: socket.socket, stack: str, settings: str
) -> None:
    """Against a port that never answers: the options are on the socket from its dial on
    (the recipe's Control before the connect, Go's keepalive and the driver's right after)."""
    port = listener.getsockname()[1]
    client = _go_client(go_clients[stack], "busy", settings, port)
    try:
        seen = _program_options(client.pid, port)
        assert seen, "the client's connection was not found"
        assert results.socket_problems(_recipe(stack, settings).socket, seen) == []
    finally:
        client.kill()
        client.wait()


@pytest.fixture
def mariadb_port() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The lab's MariaDB preset on loopback (root: it runs as the mysql user)."""
    reason = root_missing() or servers.missing("mariadb")
    if reason:
        pytest.skip(reason)
    port = _free_port()
    with servers.prepared("mariadb") as command:
        command = command.replace("{host}", "127.0.0.1").replace("{port}", str(port))
        server = subprocess.Popen(
            ["sh", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_for_port(port, server)
            yield port, server
        finally:
            _stop(server)


@pytest.fixture
def http2_port() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The lab's HTTP/2 server (the http2 preset's program) on loopback."""
    reason = servers.missing("http2")
    if reason:
        pytest.skip(f"the http2 preset {reason} (noxfile's COOKBOOK_LIBRARIES)")
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tcpecho.lab.http2_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [run.ROOT, *sys.path]))},
    )
    try:
        _wait_for_port(port, server)
        yield port, server
    finally:
        _stop(server)


def _serves_then_fails_with_its_server(
    binary: Path, port: int, server: subprocess.Popen[bytes]
) -> None:
    """Busy and idle, each client keeps asking its real server; the server gone (its kernel
    closes the connections), the busy one says so and exits 1."""
    busy = _go_client(binary, "busy", "recommended", port)
    idle = _go_client(binary, "idle", "recommended", port)
    try:
        assert _ended(busy, 3.0) == (None, ""), "the busy client failed against a live server"
        assert _ended(idle, 0.5) == (None, ""), "the idle client's long wait ended"
        _stop(server)
        status, said = _ended(busy, 10.0)
        assert status == 1, said
        assert "connection failed" in said
    finally:
        for client in (busy, idle):
            client.kill()
            client.wait()


def test_the_go_mysql_client_queries_mariadb(
    go_clients: dict[str, Path], mariadb_port: tuple[int, subprocess.Popen[bytes]]
) -> None:
    _serves_then_fails_with_its_server(go_clients["go-mysql"], *mariadb_port)


def test_the_go_http2_client_speaks_h2c_to_the_http2_preset(
    go_clients: dict[str, Path], http2_port: tuple[int, subprocess.Popen[bytes]]
) -> None:
    _serves_then_fails_with_its_server(go_clients["go-http2"], *http2_port)


# PgJDBC with HikariCP: the client compiled as the cookbook compiles it, against Debian's
# jars; its socket read back as the lab reads a program's (pidfd_getfd: root).
JAVA_MISSING = next(
    (
        f"{what} missing: apt-get install {package}"
        for what, package in [
            *((tool, run.TOOLS[tool]) for tool in ("java", "javac") if shutil.which(tool) is None),
            *((str(jar), run.JAR_PACKAGES[jar.name]) for jar in run.JAVA_JARS if not jar.exists()),
        ]
    ),
    None,
)


@pytest.fixture(scope="module")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    if JAVA_MISSING:
        pytest.skip(JAVA_MISSING)
    return str(run.build_java_client(tmp_path_factory.mktemp("java")))


def _java(classpath: str, argv: list[str], port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TCPECHO_LAB_HOST": "127.0.0.1", "TCPECHO_LAB_PORT": str(port)}
    return subprocess.Popen(
        ["java", "-cp", classpath, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_the_java_client_builds_and_refuses_bad_arguments(java_classpath: str) -> None:
    refused = subprocess.run(
        ["java", "-cp", java_classpath, "Client", "busy", "sideways"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "usage: Client busy|idle defaults|recommended" in refused.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's socket needs root")
@pytest.mark.parametrize("settings", ["defaults", "recommended"])
def test_the_java_clients_socket_carries_what_its_recipe_says(
    java_classpath: str, listener: socket.socket, settings: str
) -> None:
    """Against a port that never answers: PgJDBC's socket is connected, its options set
    (the factory's before the connect, tcpKeepAlive's right after), the login waiting."""
    port = listener.getsockname()[1]
    client = _java(java_classpath, ["Client", "busy", settings], port)
    try:
        seen = _program_options(client.pid, port, within_s=5.0 if settings == "defaults" else 20)
        assert seen, "the client's connection was not found"
        assert results.socket_problems(_recipe("pgjdbc", settings).socket, seen) == []
    finally:
        client.kill()
        client.wait()


# The trap docs/cookbook.md names: a socketFactory's keepalive without tcpKeepAlive=true. PgJDBC
# calls setKeepAlive(tcpKeepAlive) once connected, so SO_KEEPALIVE is off again, the factory's
# times left on a socket that sends no probes.
_TRAP = """
import java.sql.DriverManager;
public class Trap {
    public static void main(String[] args) throws Exception {
        try (var connection = DriverManager.getConnection(args[0], "postgres", "")) {
            System.out.println("connected");
            Thread.sleep(60_000);
        }
    }
}
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's socket needs root")
def test_pgjdbc_turns_the_factorys_keepalive_off_without_tcp_keepalive(
    java_classpath: str, postgres_port: int, tmp_path: Path
) -> None:
    source = tmp_path / "Trap.java"
    source.write_text(_TRAP)
    url = (
        f"jdbc:postgresql://127.0.0.1:{postgres_port}/postgres?socketFactory="
        "Client$KeepaliveSocketFactory&socketFactoryArg=10,1,3"
    )
    # The source launcher compiles Trap in memory; PgJDBC finds the factory by name on the
    # classpath, among the compiled client's classes.
    client = _java(java_classpath, [str(source), url], postgres_port)
    try:
        assert client.stdout is not None
        assert client.stderr is not None
        line = client.stdout.readline()
        if line != b"connected\n":  # it ended: its error says why
            pytest.fail(f"the Java program did not connect: {client.stderr.read().decode()}")
        seen = _program_options(client.pid, postgres_port, within_s=1.0)
        assert (seen["keepalive"], seen["keepalive_idle_s"]) == (False, 10)
        # What the pgjdbc stack reads from the same words.
        parsed, _ = read_stack(STACKS["pgjdbc"], url.partition("?")[2])
        assert results.socket_problems(parsed, seen) == []
    finally:
        client.kill()
        client.wait()
