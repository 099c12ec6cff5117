"""The echo client: verified echoes, failures named and timed, retries with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import platform
import random
import signal
import socket
import string
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tcpecho.client.client import (
    MAX_REQUEST_SIZE,
    ClientConfig,
    EchoClient,
    backoff_delay,
    encode_request,
    smallest_request_size,
)
from tcpecho.model import KernelSettings
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions
from tests.ci_checks import skip_unpromised
from tests.conftest import RunningServer, Spawn
from tests.support import free_port

StartServer = Callable[..., RunningServer]
ClientArgv = Callable[..., list[str]]

MiB = 1024**2


async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _config(port: int, **overrides: object) -> ClientConfig:
    settings: dict[str, object] = {"server": "127.0.0.1", "port": port, "interval_s": 0.0}
    settings.update(overrides)
    return ClientConfig(**settings)  # type: ignore[arg-type]


# -- in-process, on both loops -------------------------------------------------------------


async def test_a_counted_run_verifies_each_echo_and_exits_0(echo_server_port: int) -> None:
    options = TcpOptions(user_timeout_ms=5000, keepalive_idle_s=10, keepalive_count=3)
    with capture_logs() as events:
        status = await EchoClient(_config(echo_server_port, count=3, tcp=options)).run()
    assert status == 0
    names = [event["event"] for event in events]
    assert names.count("request_sent") == names.count("response_received") == 3
    connected = next(event for event in events if event["event"] == "connected")
    assert connected["options"]["user_timeout_ms"] == 5000
    assert connected["options"]["keepalive"] is True
    assert connected["options"]["keepalive_idle_s"] == 10
    assert connected["peer"] == f"127.0.0.1:{echo_server_port}"
    # What the model expects under the options the socket really carries: the user timeout
    # bounds a lost request; keepalive (idle 10 s, the namespace's interval) an idle peer,
    # ended by the user timeout at the first probe past it, here the first probe itself.
    busy, idle = connected["expected_busy"], connected["expected_idle"]
    assert busy["limited_by"] == "user_timeout"
    assert 5.39 <= busy["low_s"] <= 5.45
    assert idle["limited_by"] == "keepalive_user_timeout"
    assert idle["low_s"] == 10 + KernelSettings.here().tcp_keepalive_intvl_s
    assert [e["seq"] for e in events if e["event"] == "response_received"] == [1, 2, 3]
    assert not any(e["event"] == "waiting_for_response" for e in events)  # none waited 1 s
    summary = events[-1]
    assert summary["event"] == "summary"
    assert (summary["sent"], summary["received"], summary["failures"]) == (3, 3, 0)
    assert (summary["unanswered_seq"], summary["unanswered_for_s"]) == (None, None)


async def test_a_wrong_echo_is_an_error_without_retry() -> None:
    async def corrupt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(data.upper())
        await writer.drain()
        await reader.read()

    server, port = await _serve(corrupt)
    async with server:
        with capture_logs() as events:
            status = await EchoClient(_config(port, count=2, retries=5, message="ping")).run()
    assert status == 1
    failed = [e for e in events if e["event"] == "connection_failed"]
    assert len(failed) == 1
    assert failed[0]["errno"] == "MISMATCH"
    assert not [e for e in events if e["event"] == "reconnecting"]


async def test_read_timeout_bounds_an_echo_that_never_comes() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the kernel acknowledges, the application never answers

    server, port = await _serve(silent)
    async with server:
        with capture_logs() as events:
            status = await EchoClient(
                _config(port, count=1, deadlines=Deadlines(read_timeout_s=0.3))
            ).run()
    assert status == 1
    failed = next(e for e in events if e["event"] == "connection_failed")
    assert (failed["errno"], failed["phase"], failed["seq"]) == ("READ_TIMEOUT", "request", 1)
    # libuv's timers count from a clock cached at the start of each loop iteration, so
    # uvloop may fire a deadline a few milliseconds early (10 ms allowed). Late, a loaded
    # machine may make it by any amount: the upper bound only tells 0.3 s from a unit slip
    # (3 s), the READ_TIMEOUT errno that the read timeout, nothing else, ended the wait.
    assert 0.29 <= failed["detection_s"] < 3.0


async def test_a_connection_that_dies_while_idle_is_noticed_at_once() -> None:
    async def one_echo_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    server, port = await _serve(one_echo_then_close)
    async with server:
        with capture_logs() as events:
            status = await EchoClient(_config(port, interval_s=30.0)).run()
    assert status == 1
    failed = next(e for e in events if e["event"] == "connection_failed")
    assert (failed["errno"], failed["phase"], failed["detection_s"]) == ("EOF", "idle", None)
    # Noticed during the 30 s pause, about 0.2 s after the last echo (the server's sleep,
    # which uvloop's millisecond timers may end a little early).
    assert 0.18 <= failed["since_last_response_s"] < 1.0


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_lower_half() -> None:
    rng = random.Random(7)
    for attempt, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (20, 30.0)]:
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(nominal / 2 <= delay <= nominal for delay in delays)
        assert max(delays) - min(delays) > nominal / 4  # jittered, not constant


# -- sized requests (--request-size) ---------------------------------------------------------


@pytest.fixture
def never_reading_peer() -> Iterator[int]:
    """A loopback port whose connections are accepted and held, never read from: a stalled
    reader, whose kernel acknowledges what fits into its receive buffer, then advertises a
    zero window and answers every probe of it."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:  # closed at teardown
                return

    accepting = threading.Thread(target=accept, daemon=True)
    accepting.start()
    yield listener.getsockname()[1]
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept, which close alone does not
    listener.close()
    accepting.join(5)
    for conn in held:
        conn.close()


@pytest.mark.parametrize("size", [26, 27, 100, 16 * MiB])
def test_a_sized_request_is_its_number_and_message_padded_to_exactly_its_size(size: int) -> None:
    request = encode_request(7, "ping", size)
    assert len(request) == size
    assert request.startswith(b"7 ping")
    assert request.endswith(b"\n")
    assert request.count(b"\n") == 1
    padding = request[len(b"7 ping") : -1]
    assert padding.startswith(b" ")  # the message ends where the padding begins
    assert set(padding.decode()) <= set(" " + string.ascii_letters + string.digits)


def test_the_smallest_size_holds_every_request_number() -> None:
    smallest = smallest_request_size("ping")
    assert smallest == 26
    largest = encode_request(10**20 - 1, "ping", smallest)  # 20 digits: 2**64 - 1 has 20
    assert largest == f"{10**20 - 1} ping\n".encode()
    with pytest.raises(ValueError, match="needs 27 bytes"):
        encode_request(10**20, "ping", smallest)


async def _echo_with_a_flipped_byte(
    at: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Echo everything, reading while writing, with the byte at stream offset ``at`` changed."""
    offset = 0
    with contextlib.suppress(ConnectionError):  # the client hangs up on the mismatch
        while chunk := await reader.read(65536):
            if offset <= at < offset + len(chunk):
                i = at - offset
                chunk = chunk[:i] + bytes([chunk[i] ^ 0x20]) + chunk[i + 1 :]
            offset += len(chunk)
            writer.write(chunk)
            await writer.drain()


async def test_a_large_request_echoed_with_one_byte_changed_is_a_mismatch_that_says_where() -> None:
    at = 5 * MiB + 3

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _echo_with_a_flipped_byte(at, reader, writer)

    server, port = await _serve(handler)
    async with server:
        with capture_logs() as events:
            status = await EchoClient(_config(port, count=1, request_size=8 * MiB)).run()
    assert status == 1
    sent = next(e for e in events if e["event"] == "request_sent")
    assert sent["bytes"] == 8 * MiB
    failed = [e for e in events if e["event"] == "connection_failed"]
    assert len(failed) == 1
    assert failed[0]["errno"] == "MISMATCH"
    assert f"first differs at byte {at}:" in failed[0]["error"]
    assert len(failed[0]["error"]) < 300  # where they part, not 16 MiB of both


def _exchange_tasks() -> list[asyncio.Task[object]]:
    """Tasks still running a read or a drain of the client's exchange."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__name__", "") in {"readexactly", "drain"}
    ]


async def test_a_peer_that_closes_in_the_middle_of_a_request_fails_it_once() -> None:
    """The peer reads 1 MiB of an 8 MiB request and closes with the rest unread (a reset):
    the one failure is reported once, whichever side of the exchange met it, and neither
    the read nor the write is left behind."""

    async def read_some_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readexactly(MiB)
        writer.close()

    server, port = await _serve(read_some_then_close)
    async with server:
        with capture_logs() as events:
            status = await EchoClient(_config(port, count=1, request_size=8 * MiB)).run()
    assert status == 1
    failed = [e for e in events if e["event"] == "connection_failed"]
    assert len(failed) == 1, failed
    assert failed[0]["errno"] in {"ECONNRESET", "EPIPE", "EOF"}
    assert (failed[0]["phase"], failed[0]["seq"]) == ("request", 1)
    assert _exchange_tasks() == []


async def test_the_read_timeout_bounds_a_large_exchange_and_leaves_nothing_pending(
    never_reading_peer: int,
) -> None:
    config = _config(
        never_reading_peer,
        count=1,
        request_size=16 * MiB,
        deadlines=Deadlines(read_timeout_s=0.5),
    )
    with capture_logs() as events:
        status = await EchoClient(config).run()
    assert status == 1
    failed = [e for e in events if e["event"] == "connection_failed"]
    assert [(e["errno"], e["seq"]) for e in failed] == [("READ_TIMEOUT", 1)]
    assert 0.49 <= failed[0]["detection_s"] < 1.5  # see the read-timeout test on early timers
    assert _exchange_tasks() == []


# -- the installed program -------------------------------------------------------------------


def test_counted_run_against_the_server_exits_0(
    start_server: StartServer, spawn: Spawn, client_argv: ClientArgv
) -> None:
    server = start_server()
    client = spawn(client_argv(server.port, "--count", 3, "--interval", "50ms"))
    assert client.wait(10) == 0
    assert len(client.named("response_received")) == 3
    assert client.named("summary")[0]["exit_code"] == 0
    client.assert_no_traceback()


@pytest.mark.parametrize(
    "flags",
    [
        (),
        ("--user-timeout", "10s"),
        ("--keepalive-idle", "20s", "--keepalive-interval", "5s", "--keepalive-count", "3"),
        ("--read-timeout", "30s", "--user-timeout", "1m"),
    ],
    ids=["defaults", "user-timeout", "keepalive", "read-timeout"],
)
def test_the_connected_event_expects_what_explain_says(
    start_server: StartServer,
    spawn: Spawn,
    client_argv: ClientArgv,
    tcpecho: str,
    flags: tuple[str, ...],
) -> None:
    """One prediction wherever it is shown: the client, which knows its connection's RTO,
    and ``explain``, which knows no connection, give the same ranges for the same settings
    in the same namespace (the lab's are held to them in tests/lab)."""
    server = start_server()
    client = spawn(client_argv(server.port, "--count", 1, *flags))
    connected = client.wait_for("connected")
    assert client.wait(10) == 0
    shown = subprocess.run(
        [tcpecho, "explain", "--json", *flags], capture_output=True, text=True, check=True
    )
    scenarios = {s["name"]: s for s in json.loads(shown.stdout)["scenarios"]}
    for event_key, scenario in (("expected_busy", "busy"), ("expected_idle", "idle")):
        explained = scenarios[scenario]
        after = explained["detected_after_s"]
        assert connected[event_key] == {
            "low_s": None if after is None else after["low"],
            "high_s": None if after is None else after["high"],
            "limited_by": explained["mechanism"],
        }, (event_key, explained)


def test_killing_the_server_gives_eof_or_reset_at_once(
    start_server: StartServer, spawn: Spawn, client_argv: ClientArgv
) -> None:
    server = start_server()
    client = spawn(client_argv(server.port, "--interval", "200ms"))
    client.wait_for("response_received", count=2)
    server.process.signal(signal.SIGKILL)
    failed = client.wait_for("connection_failed", timeout=5)
    assert failed["errno"] in {"EOF", "ECONNRESET"}
    assert failed["since_last_response_s"] < 1.0
    assert client.wait(5) == 1


def test_refused_connections_are_retried_with_backoff_then_exit_1(
    spawn: Spawn, client_argv: ClientArgv
) -> None:
    port = free_port()  # nothing listens there
    argv = client_argv(
        port, "--retries", 3, "--retry-backoff", "100ms", "--retry-backoff-max", "300ms"
    )
    client = spawn(argv)
    assert client.wait(10) == 1
    failures = client.named("connection_failed")
    assert [f["errno"] for f in failures] == ["ECONNREFUSED"] * 4
    delays = [r["delay_s"] for r in client.named("reconnecting")]
    assert [r["attempt"] for r in client.named("reconnecting")] == [1, 2, 3]
    for delay, nominal in zip(delays, [0.1, 0.2, 0.3], strict=True):
        assert nominal / 2 <= delay <= nominal
    # The delays were really waited: attempts are spaced at least by them.
    times = [f["_received_at"] for f in failures]
    for gap, delay in zip((b - a for a, b in itertools.pairwise(times)), delays, strict=True):
        assert gap >= delay * 0.9
    client.assert_no_traceback()


def test_an_unresolvable_host_is_a_runtime_failure(spawn: Spawn, client_argv: ClientArgv) -> None:
    client = spawn(client_argv(8000, server="no-such-host.invalid"))
    assert client.wait(30) == 1
    failed = client.wait_for("connection_failed")
    assert failed["phase"] == "resolve"
    assert failed["errno"].startswith("EAI_")
    client.assert_no_traceback()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


def test_connect_timeout_bounds_an_unanswered_connect(
    full_backlog: int, spawn: Spawn, client_argv: ClientArgv
) -> None:
    client = spawn(client_argv(full_backlog, "--connect-timeout", "500ms"))
    assert client.wait(10) == 1
    failed = client.wait_for("connection_failed")
    assert (failed["errno"], failed["phase"]) == ("CONNECT_TIMEOUT", "connect")
    assert 0.49 <= failed["detection_s"] < 1.0  # see the read-timeout test on early timers


def test_retries_forever_survive_a_server_restart(
    start_server: StartServer, spawn: Spawn, client_argv: ClientArgv
) -> None:
    server = start_server()
    argv = client_argv(
        server.port,
        "--count",
        4,
        "--interval",
        "100ms",
        "--retries",
        -1,
        "--retry-backoff",
        "100ms",
    )
    client = spawn(argv)
    client.wait_for("response_received", count=2)
    server.process.signal(signal.SIGKILL)
    client.wait_for("reconnecting")
    start_server(port=server.port)
    assert client.wait(15) == 0
    summary = client.named("summary")[0]
    assert summary["received"] == 4
    assert summary["failures"] >= 1
    seqs = [e["seq"] for e in client.named("response_received")]
    assert seqs == sorted(set(seqs))  # numbering goes on across connections


def test_sigterm_stops_the_client_with_a_summary(
    start_server: StartServer, spawn: Spawn, client_argv: ClientArgv
) -> None:
    server = start_server()
    client = spawn(client_argv(server.port, "--interval", "10s"))
    client.wait_for("response_received")
    client.signal(signal.SIGTERM)
    assert client.wait(5) == 0
    summary = client.wait_for("summary")
    assert (summary["stopped_by"], summary["received"]) == ("SIGTERM", 1)


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(
            ["socat", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "PIPE"], id="socat"
        ),
        pytest.param(["ncat", "-l", "-k", "127.0.0.1", "{port}", "--exec", "/bin/cat"], id="ncat"),
    ],
)
def test_works_against_other_rfc862_servers(
    peer: list[str], spawn: Spawn, client_argv: ClientArgv
) -> None:
    port = free_port()
    argv = [part.format(port=port) for part in peer]
    echo = subprocess.Popen(argv)
    try:
        client = spawn(
            client_argv(
                port,
                "--count",
                3,
                "--interval",
                "20ms",
                "--retries",
                20,
                "--retry-backoff",
                "50ms",
                "--retry-backoff-max",
                "100ms",
            )
        )
        assert client.wait(20) == 0, client.named("connection_failed")
    finally:
        echo.kill()
        echo.wait()


def _beyond_every_buffer() -> int:
    """A request no buffer between client and server can hold: both directions' send and
    receive buffers at their limits (net.ipv4.tcp_wmem, tcp_rmem), and 1 MiB for what the
    programs hold. Without reading while writing, it deadlocks."""
    limits = [
        int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        for name in ("tcp_rmem", "tcp_wmem")
    ]
    return 2 * sum(limits) + MiB


@pytest.mark.parametrize("size", ["16MiB", "beyond-every-buffer"])
def test_a_large_request_is_echoed_by_the_server_and_verified(
    start_server: StartServer, spawn: Spawn, client_argv: ClientArgv, size: str
) -> None:
    """The server echoes a large request while it is still arriving: the client reads while
    it writes, or both would wait forever once the buffers between them are full."""
    size_bytes = 16 * MiB if size == "16MiB" else _beyond_every_buffer()
    if size_bytes > MAX_REQUEST_SIZE // 4:
        # The host's buffer sysctls, not the product, decide this size: not a promised check.
        skip_unpromised(f"the buffers here need {size_bytes} bytes, too many for a quick test")
    server = start_server()
    argv = client_argv(
        server.port,
        "--count",
        2,
        "--interval",
        "0s",
        "--request-size",
        size if size == "16MiB" else size_bytes,
        "--read-timeout",
        "30s",
    )
    client = spawn(argv)
    assert client.wait(60) == 0, client.named("connection_failed")
    assert [e["bytes"] for e in client.named("request_sent")] == [size_bytes] * 2
    assert [e["seq"] for e in client.named("response_received")] == [1, 2]
    summary = client.named("summary")[0]
    assert (summary["sent"], summary["received"], summary["failures"]) == (2, 2, 0)
    client.assert_no_traceback()


def _kernel_release() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int(minor.split("-")[0])


def test_the_user_timeout_cuts_a_stalled_reader_whose_windows_a_large_request_filled(
    never_reading_peer: int, spawn: Spawn, client_argv: ClientArgv
) -> None:
    """The peer's kernel acknowledges and advertises a zero window; the client's kernel probes
    it and every probe is answered, so nothing retransmits. The user timeout, counted from the
    first probe (an RTO after the window closed), ends it: ETIMEDOUT, 3.26 s here."""
    if _kernel_release() < (5, 11):
        skip_unpromised("TCP_USER_TIMEOUT bounds zero-window probing from Linux 5.11 only")
    argv = client_argv(
        never_reading_peer, "--count", 1, "--user-timeout", "3s", "--request-size", "16MiB"
    )
    client = spawn(argv)
    assert client.wait(15) == 1
    failed = client.named("connection_failed")
    assert len(failed) == 1, failed
    assert (failed[0]["errno"], failed[0]["phase"], failed[0]["seq"]) == (
        "ETIMEDOUT",
        "request",
        1,
    )
    assert 3.0 <= failed[0]["detection_s"] <= 3.0 + 2.0
    assert client.named("request_sent")[0]["bytes"] == 16 * MiB
    assert client.named("waiting_for_response")  # the live view while the window was shut
    client.assert_no_traceback()


def test_without_a_user_timeout_only_the_read_timeout_ends_a_stalled_reader(
    never_reading_peer: int, spawn: Spawn, client_argv: ClientArgv
) -> None:
    argv = client_argv(
        never_reading_peer, "--count", 1, "--read-timeout", "2s", "--request-size", "16MiB"
    )
    client = spawn(argv)
    assert client.wait(15) == 1
    failed = client.named("connection_failed")
    assert [(f["errno"], f["phase"], f["seq"]) for f in failed] == [("READ_TIMEOUT", "request", 1)]
    assert 1.99 <= failed[0]["detection_s"] < 3.0  # see the read-timeout test on early timers
    client.assert_no_traceback()
