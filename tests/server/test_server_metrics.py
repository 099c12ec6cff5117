"""The server's /metrics: counters that move with echoes and closes, read when scraped,
with the echo's hot path left as it was."""

from __future__ import annotations

import ast
import asyncio
import inspect
import signal
import socket
import textwrap
from collections.abc import AsyncIterator, Callable

import pytest

from tcpecho.server.protocol import EchoProtocol
from tcpecho.server.server import EchoServer, ServerConfig
from tests.conftest import RunningServer, Spawn
from tests.support import Scrape, echo_once, free_port, port_of, scrape, scrape_on_loop

StartServer = Callable[..., RunningServer]


@pytest.fixture
async def metered() -> AsyncIterator[EchoServer]:
    server = EchoServer(ServerConfig(host="127.0.0.1", port=0, metrics_port=0))
    serving = asyncio.create_task(server.serve())
    await server.started.wait()
    yield server
    server.stop()
    assert await serving == 0


def _counts(scraped: Scrape) -> tuple[float, float, float, float]:
    return (
        scraped.value("tcpecho_server_connections"),
        scraped.value("tcpecho_server_connections_total"),
        scraped.value("tcpecho_server_bytes_echoed_total"),
        scraped.value("tcpecho_server_signals_ignored_total"),
    )


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - a polled condition, not an event to await
            await asyncio.sleep(0.01)


async def test_counters_move_with_echoes_and_closes(metered: EchoServer) -> None:
    echo_port = port_of(metered.addresses[0])
    metrics_port = port_of(metered.metrics_addresses[0])

    async def scraped() -> tuple[float, float, float, float]:
        return _counts(await scrape_on_loop("127.0.0.1", metrics_port))

    assert await scraped() == (0, 0, 0, 0)
    peers = [await asyncio.open_connection("127.0.0.1", echo_port) for _ in range(3)]
    for size, (reader, writer) in zip((1000, 2000, 3000), peers, strict=True):
        writer.write(b"x" * size)
        await reader.readexactly(size)
    # Open connections' bytes are counted when scraped, not as they arrive.
    assert await scraped() == (3, 3, 6000, 0)
    first_writer = peers[0][1]
    first_writer.close()
    await _until(lambda: len(metered.connections) == 2)
    reader, writer = peers[1]
    writer.write(b"y" * 500)
    await reader.readexactly(500)
    # The closed connection's bytes stay in the total; the scrape's own connection is not one.
    assert await scraped() == (2, 3, 6500, 0)
    for _, writer in peers[1:]:
        writer.close()
    await _until(lambda: not metered.connections)
    assert await scraped() == (0, 3, 6500, 0)


def test_the_echo_hot_path_is_left_as_it_was() -> None:
    """Nothing per message for the metrics: data_received writes and counts, and that is all."""
    source = textwrap.dedent(inspect.getsource(EchoProtocol.data_received))
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    assert [ast.unparse(statement) for statement in body] == [
        "self._write(data)",
        "size = len(data)",
        "self.bytes_echoed += size",
        "if size >= SPLICE_FROM:\n    self._start_splicing()",
    ]


def test_a_run_server_counts_ignored_signals_and_serves_until_it_stops(
    start_server: StartServer,
) -> None:
    server = start_server("--catch-sigterm", "--metrics-port", "0")
    (address,) = server.process.wait_for("metrics_started")["addresses"]
    assert address.startswith("127.0.0.1:"), "the metrics listen where --host says"
    port = port_of(address)
    for count in (1, 2):  # one at a time: two pending SIGTERMs would be delivered as one
        server.process.signal(signal.SIGTERM)
        server.process.wait_for("signal_ignored", count=count)
    payload = b"tcpecho\n" * 1000
    assert echo_once(server.port, payload) == payload
    server.process.wait_for("connection_closed")
    scraped = scrape("127.0.0.1", port)
    assert _counts(scraped) == (0, 1, len(payload), 2)
    assert scraped.value("process_open_fds") > 0
    server.process.signal(signal.SIGINT)
    assert server.process.wait(10) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_busy_metrics_port_is_a_runtime_failure(spawn: Spawn, tcpecho: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        argv = [tcpecho, "server", "--host", "127.0.0.1", "--port", str(free_port())]
        process = spawn([*argv, "--metrics-port", str(busy)])
        assert process.wait(10) == 1
    failed = process.wait_for("metrics_failed")
    assert (failed["port"], failed["errno"]) == (busy, "EADDRINUSE")
    assert process.named("server_started") == []
    process.assert_no_traceback()
