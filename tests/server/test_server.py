"""The echo server: exact echoes, backpressure, signals and shutdown, in-process and run."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from tcpecho.server.protocol import SPLICE_READ, WRITE_BUFFER_HIGH
from tcpecho.server.server import EchoServer, ServerConfig
from tcpecho.tcp.options import TcpOptions, read_effective
from tests.ci_checks import skip_unpromised
from tests.conftest import RunningServer, Spawn, requires_root
from tests.support import LoggedProcess, echo_once, free_port

StartServer = Callable[..., RunningServer]

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB holding every byte value


def _port(server: EchoServer) -> int:
    return int(server.addresses[0].rsplit(":", 1)[1])


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    server = EchoServer(
        ServerConfig(host="127.0.0.1", port=0, tcp=TcpOptions(user_timeout_ms=4000))
    )
    serving = asyncio.create_task(server.serve())
    await server.started.wait()
    yield server
    server.stop()
    assert await serving == 0


# -- in-process, on both loops -------------------------------------------------------------


async def test_echoes_every_byte_exactly_and_closes_after_the_peer(echo_server: EchoServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(echo_server))
    writer.write(PAYLOAD)
    writer.write_eof()
    assert await reader.readexactly(len(PAYLOAD)) == PAYLOAD
    assert await reader.read() == b""  # the server closes once it has echoed everything
    writer.close()


async def test_serves_many_connections_at_once(echo_server: EchoServer) -> None:
    async def conversation(number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(echo_server))
        for turn in range(20):
            message = f"{number}:{turn}\n".encode()
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(conversation(n) for n in range(50)))


async def test_accepted_connections_carry_the_configured_options(echo_server: EchoServer) -> None:
    with capture_logs() as events:
        _, writer = await asyncio.open_connection("127.0.0.1", _port(echo_server))
        while not any(e["event"] == "connection_accepted" for e in events):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # capture_logs offers a list, not an event to wait on
        writer.close()
    accepted = next(e for e in events if e["event"] == "connection_accepted")
    assert accepted["options"]["user_timeout_ms"] == 4000
    assert accepted["options"]["nodelay"] is True


@pytest.mark.parametrize("host", ["127.0.0.1", "::"])
async def test_logged_options_read_once_per_listener_are_the_accepted_sockets_own(
    host: str,
) -> None:
    """The options in connection_accepted are read from the listener, once: they must be
    exactly what getsockopt returns on the socket the connection really has."""
    if host == "::" and not socket.has_dualstack_ipv6():
        skip_unpromised("no dual-stack IPv6 here")
    tcp = TcpOptions(
        user_timeout_ms=7000,
        keepalive=True,
        keepalive_idle_s=11,
        keepalive_interval_s=3,
        keepalive_count=4,
        recverr=True,
    )
    server = EchoServer(ServerConfig(host=host, port=0, tcp=tcp))
    serving = asyncio.create_task(server.serve())
    await server.started.wait()
    try:
        with capture_logs() as events:
            _, writer = await asyncio.open_connection("127.0.0.1", _port(server))
            while not server.connections:  # noqa: ASYNC110 - nothing to wait on but the dict
                await asyncio.sleep(0.01)
            (connection,) = server.connections
            accepted_socket = connection.transport.get_extra_info("socket")
            assert (
                read_effective(accepted_socket).as_dict()
                == next(e for e in events if e["event"] == "connection_accepted")["options"]
            )
            assert read_effective(accepted_socket).keepalive_idle_s == 11
            writer.close()
    finally:
        server.stop()
        assert await serving == 0


async def test_a_peer_that_does_not_read_pauses_reading_instead_of_buffering(
    echo_server: EchoServer,
) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", _port(echo_server)))
    chunk = b"x" * 65536
    sent = 0
    # Send without ever reading: once the server pauses, the kernel buffers fill and
    # sending stops. Bounded in bytes (256 MiB) and in time (the timeout below).
    try:
        async with asyncio.timeout(2):
            while sent < 256 * 1024 * 1024:
                await loop.sock_sendall(sock, chunk)
                sent += len(chunk)
    except TimeoutError:
        pass  # sending blocked: what the test expects
    else:
        pytest.fail("the server took 256 MiB from a peer that never read")
    connection = next(iter(echo_server.connections))
    assert not connection.is_reading()
    # What the server holds for this peer is bounded by the high-water mark plus one read
    # (in the transport's buffer, or in the pipe once the connection is spliced).
    assert connection.unsent() <= WRITE_BUFFER_HIGH + 256 * 1024
    assert sent < 64 * 1024 * 1024  # the kernel buffers, not the server, took the rest
    sock.close()


async def _bulk_echo(port: int, payload: bytes, chunk: int) -> bytes:
    """Send ``payload`` in ``chunk``-byte writes while reading the echo, then half-close;
    the echo, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        for start in range(0, len(payload), chunk):
            writer.write(payload[start : start + chunk])
            await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    received = await reader.read(-1)  # to the server's FIN
    await sending
    writer.close()
    return received


async def test_bulk_senders_are_spliced_and_echoed_exactly(echo_server: EchoServer) -> None:
    """64 KiB writes move the connection to splice(2): every byte comes back in order, the
    server closes after the half-close, and connection_closed counts every byte."""
    payload = PAYLOAD * 16  # 16 MiB, every byte value, in an order a lost chunk would show
    with capture_logs() as events:
        echoing = asyncio.create_task(_bulk_echo(_port(echo_server), payload, 64 * 1024))
        while not echo_server.connections:  # noqa: ASYNC110 - nothing to wait on but the dict
            await asyncio.sleep(0.001)
        (connection,) = echo_server.connections
        echo = await echoing
        while not any(e["event"] == "connection_closed" for e in events):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert echo == payload
    assert connection.spliced, "a 64 KiB sender is spliced"
    closed = next(e for e in events if e["event"] == "connection_closed")
    assert closed["bytes_echoed"] == len(payload)
    assert closed["error"] is None


async def test_small_messages_stay_on_the_transport(echo_server: EchoServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(echo_server))
    for _ in range(50):
        writer.write(b"x" * 1024)
        assert await reader.readexactly(1024) == b"x" * 1024
    assert [c.spliced for c in echo_server.connections] == [False]
    writer.close()


async def test_a_spliced_peer_that_stops_reading_pauses_the_splice(
    echo_server: EchoServer,
) -> None:
    """Backpressure through the pipe: once spliced, a peer that never reads makes the
    server stop reading, with at most one pipe held for it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", _port(echo_server)))
    sent = 0
    try:
        async with asyncio.timeout(2):
            while sent < 256 * 1024 * 1024:
                await loop.sock_sendall(sock, PAYLOAD[:262144])
                sent += 262144
    except TimeoutError:
        pass
    else:
        pytest.fail("the server took 256 MiB from a peer that never read")
    (connection,) = echo_server.connections
    assert connection.spliced
    assert not connection.is_reading()
    assert 0 < connection.unsent() <= SPLICE_READ
    echoed = connection.bytes_echoed
    await asyncio.sleep(0.2)
    assert connection.bytes_echoed == echoed, "nothing more is read while the pipe is full"
    # Reading again lets the splice go on: the echo resumes, whole and in order.
    sock.setblocking(True)
    sock.settimeout(5)
    got = await loop.run_in_executor(None, sock.recv, 65536)
    assert got
    assert PAYLOAD[: len(got)] == got
    sock.close()


async def test_a_spliced_connection_reset_is_reported_by_its_errno(
    echo_server: EchoServer,
) -> None:
    loop = asyncio.get_running_loop()
    with capture_logs() as events:
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", _port(echo_server)))
        await loop.sock_sendall(sock, PAYLOAD[:262144])
        while not any(c.spliced for c in echo_server.connections):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # nothing to wait on but the connection
        await loop.sock_sendall(sock, PAYLOAD[:65536])
        # Unread data at close makes the kernel send a reset instead of a FIN.
        sock.close()
        while not any(e["event"] == "connection_closed" for e in events):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    closed = next(e for e in events if e["event"] == "connection_closed")
    assert closed["error"] in ("ECONNRESET", "EPIPE")


async def test_shutdown_finishes_the_echo_under_way() -> None:
    server = EchoServer(ServerConfig(host="127.0.0.1", port=0, shutdown_timeout_s=10))
    serving = asyncio.create_task(server.serve())
    await server.started.wait()
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
    big = PAYLOAD * 8

    async def send() -> None:
        for start in range(0, len(big), 65536):
            writer.write(big[start : start + 65536])
            await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    received = await reader.readexactly(len(PAYLOAD))  # the echo is under way
    server.stop()
    received += await reader.readexactly(len(big) - len(received))
    assert received == big
    assert await reader.read() == b""
    await sending
    assert await serving == 0
    writer.close()


# -- the installed program -------------------------------------------------------------------


def _stream_through(port: int, payload: bytes, on_progress: Callable[[int], None]) -> bytes:
    """Send ``payload`` from a thread, read the echo here, call ``on_progress`` as it comes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        sock.settimeout(10)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            on_progress(len(received))
        sender.join()
        return bytes(received)


def test_sigterm_stops_gracefully_after_answering_the_echo_in_flight(
    start_server: StartServer,
) -> None:
    server = start_server()
    payload = PAYLOAD * 8
    signalled = threading.Event()

    def progress(received: int) -> None:
        if received >= 512 * 1024 and not signalled.is_set():
            server.process.signal(signal.SIGTERM)
            signalled.set()

    echoed = _stream_through(server.port, payload, progress)
    assert signalled.is_set()
    assert echoed == payload
    assert server.process.wait(10) == 0
    server.process.wait_for("shutdown_started", where=lambda e: e["signal"] == "SIGTERM")
    stopped = server.process.wait_for("server_stopped")
    assert stopped["aborted_connections"] == 0
    server.process.assert_no_traceback()


def test_sigterm_with_an_idle_client_closes_it_and_exits_0(
    start_server: StartServer, spawn: Spawn, client_argv: Callable[..., list[str]]
) -> None:
    server = start_server()
    client = spawn(client_argv(server.port, "--interval", "10s"))
    client.wait_for("response_received")
    server.process.signal(signal.SIGTERM)
    assert server.process.wait(5) == 0
    failed = client.wait_for("connection_failed")
    assert (failed["errno"], failed["phase"]) == ("EOF", "idle")


def test_catch_sigterm_logs_and_keeps_serving_until_sigint(start_server: StartServer) -> None:
    server = start_server("--catch-sigterm")
    for count in (1, 2):
        server.process.signal(signal.SIGTERM)
        server.process.wait_for("signal_ignored", count=count)
    assert server.process.proc.poll() is None
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"still here")
        assert sock.recv(100) == b"still here"
    server.process.signal(signal.SIGINT)
    assert server.process.wait(5) == 0


def _fill_until_the_server_stops_reading(sock: socket.socket) -> int:
    """Send without reading until sending has been blocked for 0.5 s: by then the server's
    write buffer is full and it has paused reading. Bounded: 256 MiB or 5 s."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    stalled_since: float | None = None
    while sent < 256 * 1024 * 1024 and time.monotonic() < deadline:
        try:
            sent += sock.send(b"z" * 65536)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.5:
                break
            time.sleep(0.01)
    return sent


def test_shutdown_timeout_cuts_a_peer_that_never_reads(start_server: StartServer) -> None:
    server = start_server("--shutdown-timeout", "1s")
    with socket.socket() as sock:
        # A small receive buffer: with the kernel's own (up to 32 MiB on Linux >= 6.13)
        # the server could park every echo in it and have nothing left to send.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", server.port))
        _fill_until_the_server_stops_reading(sock)
        signalled_at = time.monotonic()
        server.process.signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        took = time.monotonic() - signalled_at
    assert 1.0 <= took < 4.0
    assert server.process.wait_for("server_stopped")["aborted_connections"] == 1


def test_a_second_signal_cuts_the_connections_and_says_how_many(
    start_server: StartServer,
) -> None:
    server = start_server("--shutdown-timeout", "30s")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", server.port))
        _fill_until_the_server_stops_reading(sock)  # busy: the drain would wait 30 s
        server.process.signal(signal.SIGTERM)
        server.process.wait_for("shutdown_started")
        server.process.signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
    forced = server.process.wait_for("shutdown_forced")
    stopped = server.process.wait_for("server_stopped")
    assert forced["connections"] == stopped["aborted_connections"] == 1


def test_a_peer_that_never_reads_does_not_grow_server_memory(start_server: StartServer) -> None:
    server = start_server()

    def rss_kib() -> int:
        with open(f"/proc/{server.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1])

    before = rss_kib()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # Without backpressure the server would read all 256 MiB into memory.
        sent = _fill_until_the_server_stops_reading(sock)
        grown = rss_kib() - before
    assert sent < 64 * 1024 * 1024, f"the server kept reading: {sent} bytes taken"
    assert grown < 16 * 1024, f"server RSS grew by {grown} KiB"


def test_dual_stack_listener_takes_ipv4_and_ipv6(start_server: StartServer) -> None:
    if not socket.has_ipv6:
        pytest.fail("IPv6 is part of the product's promise ('::' works); this host lacks it")
    server = start_server(host="::")
    assert server.process.named("server_started")[0]["addresses"] == [f"[::]:{server.port}"]
    for address in ("127.0.0.1", "::1"):
        with socket.create_connection((address, server.port), timeout=5) as sock:
            sock.sendall(b"hello")
            assert sock.recv(5) == b"hello"


def test_a_taken_port_is_a_runtime_failure(
    start_server: StartServer, spawn: Spawn, tcpecho: str
) -> None:
    server = start_server()
    second = spawn([tcpecho, "server", "--host", "127.0.0.1", "--port", str(server.port)])
    assert second.wait(10) == 1
    assert second.wait_for("server_failed")["errno"] == "EADDRINUSE"
    second.assert_no_traceback()


def test_socat_as_a_client_gets_its_bytes_back(start_server: StartServer) -> None:
    server = start_server()
    result = subprocess.run(
        ["socat", "-t", "2", "-", f"TCP:127.0.0.1:{server.port}"],
        input=b"line one\nline two\n",
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert result.stdout == b"line one\nline two\n"


# -- PID 1 of a PID namespace (as in a container) --------------------------------------------


def _pid1_child(unshare: subprocess.Popen[str], timeout: float = 5) -> int:
    """The host PID of the process that is PID 1 inside unshare's new namespace."""
    deadline = time.monotonic() + timeout
    children_file = f"/proc/{unshare.pid}/task/{unshare.pid}/children"
    while time.monotonic() < deadline:
        with open(children_file) as handle:
            children = handle.read().split()
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def _start_as_pid1(spawn: Spawn, tcpecho: str, *args: str) -> tuple[int, int, LoggedProcess]:
    port = free_port()
    argv = ["unshare", "--pid", "--fork", "--mount-proc", tcpecho, "server"]
    process = spawn([*argv, "--host", "127.0.0.1", "--port", str(port), *args])
    process.wait_for("server_started")
    child = _pid1_child(process.proc)
    with open(f"/proc/{child}/status") as status:
        nspid = next(line for line in status if line.startswith("NSpid:")).split()
    assert nspid[-1] == "1", f"not PID 1 in its namespace: {nspid}"
    return port, child, process


@requires_root
def test_as_pid1_sigterm_still_stops_gracefully(spawn: Spawn, tcpecho: str) -> None:
    port, child, process = _start_as_pid1(spawn, tcpecho)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        os.kill(child, signal.SIGTERM)
        sock.settimeout(5)
        assert sock.recv(4) == b""  # closed by the graceful shutdown
    assert process.wait(10) == 0
    process.wait_for("server_stopped")


@requires_root
def test_as_pid1_catch_sigterm_ignores_sigterm_and_stops_on_sigint(
    spawn: Spawn, tcpecho: str
) -> None:
    port, child, process = _start_as_pid1(spawn, tcpecho, "--catch-sigterm")
    os.kill(child, signal.SIGTERM)
    process.wait_for("signal_ignored")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    os.kill(child, signal.SIGINT)
    assert process.wait(10) == 0


# -- --workers: processes sharing the port ----------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")  # a zombie has exited
    except FileNotFoundError:
        return True


def test_workers_share_the_port_and_stop_together(start_server: StartServer) -> None:
    server = start_server("--workers", "2")
    server.process.wait_for("server_started", count=2)
    started = server.process.named("server_started")
    assert sorted(event["worker"] for event in started) == [0, 1]
    assert len({event["pid"] for event in started}) == 2
    assert server.process.pid not in {event["pid"] for event in started}
    for number in range(24):
        payload = f"request {number} ".encode() * 100
        assert echo_once(server.port, payload) == payload
    server.process.wait_for("connection_closed", count=24)
    # SO_REUSEPORT spreads connections by a hash of their addresses: 24 connections all
    # landing on one of two workers would happen about once in 8 million runs.
    serving = {event["worker"] for event in server.process.named("connection_accepted")}
    assert serving == {0, 1}
    server.process.signal(signal.SIGTERM)
    assert server.process.wait(10) == 0
    assert len(server.process.named("server_stopped")) == 2
    exits = server.process.named("worker_exited")
    assert sorted((event["worker"], event["exit_code"]) for event in exits) == [(0, 0), (1, 0)]
    server.process.assert_no_traceback()


def test_workers_log_whole_lines_even_unbuffered(spawn: Spawn, tcpecho: str) -> None:
    """Workers share stdout: each log line must reach it in one write, or lines interleave.

    PYTHONUNBUFFERED=1 (common in container images) makes print() write the line and its
    newline separately; eight workers starting at once then mix their lines up.
    """
    port = free_port()
    argv = [tcpecho, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "8"]
    process = spawn(argv, env={"PYTHONUNBUFFERED": "1"})
    process.wait_for("workers_started")
    deadline = time.monotonic() + 10
    while len(process.named("server_started")) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert process.other_lines == []  # every line was one whole JSON object
    assert sorted(event["worker"] for event in process.named("server_started")) == list(range(8))


def test_workers_with_catch_sigterm_ignore_it_and_stop_on_sigint(
    start_server: StartServer,
) -> None:
    server = start_server("--workers", "2", "--catch-sigterm")
    server.process.wait_for("server_started", count=2)
    server.process.signal(signal.SIGTERM)
    ignored = server.process.wait_for("signal_ignored", count=2)
    assert ignored["signal"] == "SIGTERM"
    payload = b"still serving after SIGTERM"
    assert echo_once(server.port, payload) == payload
    server.process.signal(signal.SIGINT)
    assert server.process.wait(10) == 0
    assert len(server.process.named("server_stopped")) == 2


@pytest.mark.parametrize("catching", [[], ["--catch-sigterm"]], ids=["plain", "catch-sigterm"])
def test_a_worker_that_dies_stops_the_others_and_fails_the_server(
    start_server: StartServer, catching: list[str]
) -> None:
    server = start_server("--workers", "2", *catching)
    server.process.wait_for("server_started", count=2)
    victim, survivor = (event["pid"] for event in server.process.named("server_started"))
    os.kill(victim, signal.SIGKILL)
    assert server.process.wait(10) == 1
    exits = {event["pid"]: event["exit_code"] for event in server.process.named("worker_exited")}
    assert exits == {victim: -signal.SIGKILL, survivor: 0}


def test_workers_do_not_outlive_a_killed_parent(start_server: StartServer) -> None:
    # --catch-sigterm is the hard case: the workers must stop although they ignore SIGTERM.
    server = start_server("--workers", "2", "--catch-sigterm")
    server.process.wait_for("server_started", count=2)
    pids = [event["pid"] for event in server.process.named("server_started")]
    server.process.proc.kill()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids)


def test_the_open_file_limit_is_raised_to_the_hard_limit(spawn: Spawn, tcpecho: str) -> None:
    port = free_port()
    process = spawn(
        ["prlimit", "--nofile=256:4096", tcpecho, "server", "--host", "127.0.0.1",
         "--port", str(port)]
    )  # fmt: skip
    assert process.wait_for("server_started")["max_open_files"] == 4096


def test_workers_must_be_at_least_one(tcpecho: str) -> None:
    result = subprocess.run(
        [tcpecho, "server", "--workers", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr
    assert "Traceback" not in result.stderr
