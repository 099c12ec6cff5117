"""``tcpecho client`` against servers that misbehave, written here: one that never answers,
one that answers half and closes, one that echoes other bytes, one that resets, one that
answers after the read timeout, one that sends bytes nobody asked for. Each run ends with
its own failure name and exit status, and the summary counts what happened."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Spawn
from tests.support import LoggedProcess

ClientArgv = Callable[..., list[str]]
Behaviour = Callable[[socket.socket, int], None]  # a connection, and its number from 0


class MisbehavingServer:
    """A listener on a free loopback port that treats each connection with ``behaviour``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.behaviour = behaviour
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed at teardown
                return
            number = self.connections
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            conn.settimeout(10)
            # OSError: the client left first, and there is nothing more to misbehave at.
            with contextlib.suppress(OSError):
                self.behaviour(conn, number)

    def close(self) -> None:
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


def _request(conn: socket.socket) -> bytes:
    """One whole request, ``"<seq> <message>\\n"``."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def _until_closed(conn: socket.socket) -> None:
    while conn.recv(4096):
        pass


def never_answers(conn: socket.socket, number: int) -> None:
    _until_closed(conn)  # the kernel acknowledges; the application never answers


def answers_half_and_closes(conn: socket.socket, number: int) -> None:
    request = _request(conn)
    conn.sendall(request[: len(request) // 2])


def echoes_other_bytes(conn: socket.socket, number: int) -> None:
    request = _request(conn)
    conn.sendall(request.upper())
    _until_closed(conn)


def resets(conn: socket.socket, number: int) -> None:
    _request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def answers_late_once(conn: socket.socket, number: int) -> None:
    """The first connection's first echo comes after the client's read timeout; every later
    one is a good echo server."""
    if number == 0:
        request = _request(conn)
        time.sleep(0.6)
        conn.sendall(request)
        _until_closed(conn)
        return
    while request := _request(conn):
        conn.sendall(request)


def sends_unasked_bytes(conn: socket.socket, number: int) -> None:
    conn.sendall(_request(conn) + b"surprise")
    _until_closed(conn)


@pytest.fixture
def misbehaving() -> Iterator[Callable[[Behaviour], MisbehavingServer]]:
    servers: list[MisbehavingServer] = []

    def start(behaviour: Behaviour) -> MisbehavingServer:
        server = MisbehavingServer(behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# behaviour, extra client flags, the failure names in order, exit status,
# and the summary's (sent, received, failures, reconnects)
CASES = {
    "never answers": (never_answers, [], ["READ_TIMEOUT"], 1, (1, 0, 1, 0)),
    "answers half and closes": (answers_half_and_closes, [], ["EOF"], 1, (1, 0, 1, 0)),
    # A wrong echo is fatal: no retry, whatever --retries says.
    "echoes other bytes": (echoes_other_bytes, ["--retries", "3"], ["MISMATCH"], 1, (1, 0, 1, 0)),
    "resets": (
        resets,
        ["--retries", "2"],
        ["ECONNRESET", "ECONNRESET", "ECONNRESET"],
        1,
        (3, 0, 3, 2),
    ),
    # Late once, then a good server: the client gives up on the first, reconnects, and
    # completes its two echoes; the late bytes went to a connection it had closed.
    "answers after the read timeout": (
        answers_late_once,
        ["--retries", "1", "--count", "2"],
        ["READ_TIMEOUT"],
        0,
        (3, 2, 1, 1),
    ),
    "sends bytes nobody asked for": (
        sends_unasked_bytes,
        ["--retries", "3", "--interval", "1s", "--count", "2"],
        ["UNEXPECTED_DATA"],
        1,
        (1, 1, 1, 0),
    ),
}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_misbehaviour_ends_with_its_own_failure_and_status(
    misbehaving: Callable[[Behaviour], MisbehavingServer],
    spawn: Spawn,
    client_argv: ClientArgv,
    case: str,
    loop: str,
) -> None:
    behaviour, flags, failures, status, counts = CASES[case]
    server = misbehaving(behaviour)
    argv = client_argv(
        server.port,
        *("--count", "1", "--interval", "0s", "--retries", "0"),
        *("--read-timeout", "300ms", "--retry-backoff", "10ms", "--loop", loop),
        *flags,  # later flags win
    )
    client: LoggedProcess = spawn(argv)
    assert client.wait(30) == status
    logged = [event["errno"] for event in client.named("connection_failed")]
    assert logged == failures
    summary = client.wait_for("summary")
    sent, received, failed, reconnects = counts
    assert (summary["sent"], summary["received"]) == (sent, received)
    assert (summary["failures"], summary["reconnects"]) == (failed, reconnects)
    assert summary["exit_code"] == status
    client.assert_no_traceback()
