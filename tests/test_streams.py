"""Output that goes away: a server or client whose stdout is closed, full or a pipe that
closes keeps doing its job, stops cleanly, exits with its documented status, and says so in
at most one line on stderr, with no traceback. And text tcpecho did not choose is shown
with its control characters escaped, as ``ps`` shows them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import IO

import pytest

from tcpecho.streams import escape_controls
from tests.support import echo_once, free_port

LOOPS = ["uvloop", "asyncio"]
LOG_FORMATS = ["auto", "console", "json"]
# How stdout goes away: closed before the program starts, a pipe whose reader leaves after
# the first line, or a device that refuses every write.
OUTPUTS = ["closed", "closed-mid-run", "full"]
# A shell closes the descriptors, then execs the program: its pid is the program's.
CLOSE_STDOUT = ["sh", "-c", 'exec "$@" >&-', "sh"]
CLOSE_ALL = ["sh", "-c", 'exec "$@" <&- >&- 2>&-', "sh"]


def _start(argv: list[str], output: str) -> subprocess.Popen[bytes]:
    """``argv`` with its stdout gone the way ``output`` names; stderr is kept for checks."""
    stdout: int | IO[bytes]
    if output == "closed":
        argv, stdout = [*CLOSE_STDOUT, *argv], subprocess.DEVNULL
    elif output == "closed-mid-run":
        stdout = subprocess.PIPE
    else:
        stdout = open("/dev/full", "wb")  # noqa: SIM115 - closed right after the start
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE
        )
    finally:
        if not isinstance(stdout, int):
            stdout.close()
    if output == "closed-mid-run":
        assert process.stdout is not None
        assert process.stdout.readline(), "the first log line never came"
        process.stdout.close()  # every later line meets a broken pipe
    return process


def _wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, f"the server exited {process.returncode}"
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)


def _check_stderr(process: subprocess.Popen[bytes], output: str) -> None:
    assert process.stderr is not None
    lines = process.stderr.read().decode().splitlines()
    process.stderr.close()
    assert "Traceback" not in "\n".join(lines), lines
    assert len(lines) <= 1, lines
    dropped = "output that cannot be written is dropped"
    expected = {
        "closed": "tcpecho: stdout is closed: log lines are discarded",
        "closed-mid-run": f"tcpecho: stdout: Broken pipe: {dropped}",
        "full": f"tcpecho: stdout: No space left on device: {dropped}",
    }
    assert lines == [expected[output]]


@pytest.fixture(scope="module")
def peer(tcpecho: str) -> Iterator[int]:
    """A tcpecho server for the clients, its logs out of the way."""
    port = free_port()
    server = subprocess.Popen(
        [tcpecho, "server", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_until_listening(port, server)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


@pytest.mark.parametrize("log_format", LOG_FORMATS)
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_a_server_without_its_stdout_serves_and_stops_with_0(
    tcpecho: str, output: str, loop: str, log_format: str
) -> None:
    port = free_port()
    argv = [tcpecho, "server", "--host", "127.0.0.1", "--port", str(port)]
    server = _start([*argv, "--loop", loop, "--log-format", log_format], output)
    try:
        _wait_until_listening(port, server)
        for turn in range(3):  # each connection logs two lines that cannot be written
            payload = f"still echoing {turn}".encode()
            assert echo_once(port, payload) == payload
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    finally:
        server.kill()
        server.wait()
    _check_stderr(server, output)


@pytest.mark.parametrize("log_format", LOG_FORMATS)
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_a_client_without_its_stdout_completes_its_echoes_with_0(
    tcpecho: str, peer: int, output: str, loop: str, log_format: str
) -> None:
    argv = [tcpecho, "client", "--server", "127.0.0.1", "--port", str(peer)]
    options = ["--count", "3", "--interval", "50ms", "--loop", loop, "--log-format", log_format]
    client = _start([*argv, *options], output)
    try:
        # --count 3: the status is 0 only when three echoes came back and matched.
        assert client.wait(10) == 0
    finally:
        client.kill()
        client.wait()
    _check_stderr(client, output)


def test_a_client_that_fails_without_its_stdout_still_exits_1(tcpecho: str) -> None:
    refused = free_port()
    argv = [tcpecho, "client", "--server", "127.0.0.1", "--port", str(refused)]
    client = _start([*argv, "--count", "1"], "full")
    assert client.wait(10) == 1
    _check_stderr(client, "full")


@pytest.mark.parametrize("loop", LOOPS)
def test_without_any_standard_stream_both_still_work(tcpecho: str, loop: str) -> None:
    """stdin, stdout and stderr all closed: no socket may take descriptor 0, 1 or 2."""
    port = free_port()
    server = subprocess.Popen(
        [*CLOSE_ALL, tcpecho, "server", "--host", "127.0.0.1", "--port", str(port), "--loop", loop]
    )
    try:
        _wait_until_listening(port, server)
        options = ["--count", "2", "--interval", "50ms", "--loop", loop, "--log-format", "json"]
        client = subprocess.run(
            [*CLOSE_ALL, tcpecho, "client", "--server", "127.0.0.1", "--port", str(port), *options],
            timeout=10,
            check=False,
        )
        assert client.returncode == 0
        assert echo_once(port, b"and direct echoes") == b"and direct echoes"
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    finally:
        server.kill()
        server.wait()


def test_workers_without_their_stdout_serve_and_stop_with_0(tcpecho: str) -> None:
    port = free_port()
    argv = [tcpecho, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    server = _start(argv, "closed-mid-run")
    try:
        _wait_until_listening(port, server)
        for turn in range(6):  # the kernel spreads them over both workers
            assert echo_once(port, f"{turn}".encode()) == f"{turn}".encode()
        os.kill(server.pid, signal.SIGTERM)
        assert server.wait(10) == 0
    finally:
        server.kill()
        server.wait()
    assert server.stderr is not None
    lines = server.stderr.read().decode().splitlines()
    server.stderr.close()
    assert "Traceback" not in "\n".join(lines)
    # One line per process at most: the supervisor and each worker write their own logs.
    assert len(lines) <= 3, lines


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J\x1b[31mEVIL - TCP:127.0.0.1:8000", "?[2J?[31mEVIL - TCP:127.0.0.1:8000"),
        ("\x9b2J\x9b31m", "?2J?31m"),  # C1's CSI: ESC [ to a terminal that reads 8-bit C1
        ("bell\x07 tab\t newline\n del\x7f nul\x00", "bell? tab? newline? del? nul?"),
        ("\x80\x9f\xa0", "??\xa0"),  # C1 ends at U+009F; U+00A0 is a (no-break) space
        ("psql café → ü 中文 \ufffd", "psql café → ü 中文 \ufffd"),  # printable: as it is
    ],
)
def test_control_characters_are_escaped_as_ps_shows_them(text: str, shown: str) -> None:
    assert escape_controls(text) == shown
    assert len(escape_controls(text)) == len(text)  # one for one: columns stay aligned
