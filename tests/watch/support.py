"""What the watch's tests share: running ``tcpecho watch`` as users run it, off a terminal
or on one of a given width, reading its one JSON snapshot back, and a lab (``running_lab``)
whose client pod runs programs the tests black-hole."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from typing import Any

from tcpecho.lab.topology import SERVICE_PORT, Topology, leftover_namespaces, remove_namespaces
from tests.conftest import Spawn
from tests.support import abandoned_namespaces, tcpecho_executable

Row = dict[str, Any]


def watch_argv(*args: str) -> list[str]:
    """``tcpecho watch ARGS``, as users run it."""
    return [tcpecho_executable(), "watch", *args]


def run_watch(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=30
    )


def snapshot_of(result: subprocess.CompletedProcess[str], status: int | None = 0) -> list[Row]:
    """The connections of the one JSON snapshot ``--once --json`` printed, with exit status
    ``status`` (None: any)."""
    if status is not None:
        assert result.returncode == status, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    connections: list[Row] = json.loads(lines[0])["connections"]
    return connections


def matched_snapshot_of(result: subprocess.CompletedProcess[str]) -> list[Row]:
    """The connections of ``--once --json`` with ``--stuck`` or ``--at-risk``, whose exit
    status says whether any matched: 1 when it lists some, 0 when none."""
    connections = snapshot_of(result, status=None)
    assert result.returncode == (1 if connections else 0), result
    return connections


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what if isinstance(what, str) else what()} in {timeout}s")
        time.sleep(0.05)


CLEAR = "\x1b[H\x1b[J"  # home and clear: how the watch starts each frame on a terminal


def watch_on_terminal(args: list[str], columns: int, timeout: float = 30) -> list[str]:
    """The lines ``tcpecho watch --once ARGS`` draws on a terminal ``columns`` wide: a
    pseudo-terminal of that size, as a user's terminal window is."""
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        watcher = subprocess.Popen(
            watch_argv("--once", *args),
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(follower)
    drawn = bytearray()
    try:
        deadline = time.monotonic() + timeout
        while chunk := _read_terminal(leader, deadline - time.monotonic()):
            drawn += chunk
    finally:
        os.close(leader)
        _, stderr = watcher.communicate(timeout=5)
    assert watcher.returncode == 0, stderr
    text = drawn.decode().replace("\r\n", "\n")  # the terminal's own line ends
    assert text.startswith(CLEAR), text
    return text[len(CLEAR) :].splitlines()


def _read_terminal(fd: int, timeout: float) -> bytes:
    """What the terminal shows next; b"" once its last writer is gone."""
    readable, _, _ = select.select([fd], [], [], max(0.0, timeout))
    assert readable, "the watch drew nothing in time"
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: no process holds the terminal any more
        return b""


def command_cell(lines: list[str], pid: int) -> str:
    """The COMMAND cell of process ``pid``'s row: from where the COMMAND header starts to
    where the next (left-aligned) one does."""
    heading = next(line for line in lines if line.split()[:2] == ["PID", "COMMAND"])
    start = heading.index("COMMAND")
    after = start + len("COMMAND")
    end = after + len(heading[after:]) - len(heading[after:].lstrip())
    row = next(line for line in lines if line.split()[:1] == [str(pid)])
    assert row[end - 2 : end] == "  ", row  # the cell stands apart from the next
    return row[start:end].strip()


_numbers = itertools.count()


class Lab:
    """A topology with ``tcpecho server`` in its server pod, and programs in its client pod
    that are killed, with the namespaces, whatever the test did."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.programs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], *, stdin: bool = False) -> subprocess.Popen[bytes]:
        program = subprocess.Popen(
            self.topology.command(self.topology.client_ns, argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.programs.append(program)
        return program

    def in_client(self, argv: list[str]) -> list[str]:
        return self.topology.command(self.topology.client_ns, argv)

    def watch_once(self, *args: str, prefix: tuple[str, ...] = ()) -> list[Row]:
        return snapshot_of(
            run_watch(self.in_client([*prefix, *watch_argv("--once", "--json", *args)]))
        )

    def wait_for_owners(self, pids: set[int], timeout: float = 10.0) -> dict[int, Row]:
        """The watch's row of each program, once each has connected and the watch sees it."""
        deadline = time.monotonic() + timeout
        while True:
            rows = {row["pid"]: row for row in self.watch_once("--port", str(SERVICE_PORT))}
            if pids <= rows.keys():
                return {pid: rows[pid] for pid in pids}
            assert time.monotonic() < deadline, f"no connection of {pids} within {timeout}s"
            time.sleep(0.2)

    def stop(self) -> None:
        for program in self.programs:
            if program.poll() is None:
                program.kill()
            try:
                program.wait(5)
            finally:
                if program.stdin is not None:
                    program.stdin.close()


@contextlib.contextmanager
def running_lab(prefix: str, spawn: Spawn, tcpecho: str) -> Iterator[Lab]:
    """A ``Lab`` in namespaces named ``PREFIX<pid>-<n>-...``, its server started; its programs
    killed and its namespaces removed afterwards, also on failure (and those of earlier runs
    of ``prefix`` that were killed)."""
    remove_namespaces(abandoned_namespaces(prefix))
    try:
        with Topology(f"{prefix}{os.getpid()}-{next(_numbers)}") as topology:
            built = Lab(topology)
            try:
                server = spawn(topology.command(topology.server_ns, [tcpecho, "server"]))
                server.wait_for("server_started")
                yield built
            finally:
                built.stop()
    finally:
        assert leftover_namespaces(f"{prefix}{os.getpid()}-") == []
