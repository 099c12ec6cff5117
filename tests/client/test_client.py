"""The echo client: verified echoes, failures named and timed, retries with backoff."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from structlog.testing import capture_logs

from tcpecho.client.client import ClientConfig, EchoClient, backoff_delay
from tcpecho.model import KernelSettings
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions
from tests.conftest import RunningServer, Spawn
from tests.support import free_port

StartServer = Callable[..., RunningServer]
ClientArgv = Callable[..., list[str]]


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
    # uvloop may fire a deadline a few milliseconds early.
    assert 0.29 <= failed["detection_s"] < 0.6


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
