"""``tcpecho watch``'s COMMAND column with real programs on loopback: the script and the
argument that tell two runs of one interpreter apart (``python3 tcpecho server`` and
``python3 tcpecho client``, not two ``python3 tcpecho`` rows), and as much of the command
line as the terminal has room for, the script's name kept on a narrow one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, Spawn
from tests.watch.support import (
    command_cell,
    run_watch,
    snapshot_of,
    wait_until,
    watch_argv,
    watch_on_terminal,
)

NARROW = 100  # narrower than the table: COMMAND keeps its least room
WIDE = 300  # wider than the table with every command whole
PLAIN = 48  # off a terminal, which has no width: COMMAND's characters (docs/watch.md)
# Connects to the port given, says so, and holds the connection until its stdin closes.
HOLDER = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[2]))):
    print("connected", flush=True)
    sys.stdin.read()
"""


def _rows_for(args: list[str], pids: set[int]) -> None:
    """Wait until the watch lists a connection of every one of ``pids``."""

    def listed() -> bool:
        rows = snapshot_of(run_watch(watch_argv("--once", "--json", *args)))
        return pids <= {row["pid"] for row in rows}

    wait_until(listed, timeout=10, what=f"connections of {pids}")


def _interpreter(script: str) -> str:
    """The name a console script's interpreter shows in ps: its shebang's, no directories."""
    with open(script) as handle:
        return os.path.basename(handle.readline()[2:].split()[0])


def test_two_runs_of_one_script_differ_by_their_first_argument(
    start_server: Callable[..., RunningServer], spawn: Spawn, tcpecho: str
) -> None:
    """Issue 21: a server and a client were both ``python3 tcpecho`` (16 characters)."""
    server = start_server()
    client = spawn(
        [tcpecho, "client", "--server", "127.0.0.1", "--port", str(server.port), "--interval", "1m"]
    )
    args = ["--port", str(server.port)]
    pids = {"server": server.process.proc.pid, "client": client.proc.pid}
    _rows_for(args, set(pids.values()))
    python = _interpreter(tcpecho)
    off_terminal = run_watch(watch_argv("--once", *args))
    assert off_terminal.returncode == 0, off_terminal
    lines = off_terminal.stdout.splitlines()
    expected = {
        "server": f"{python} tcpecho server --host 127.0.0.1 --port {server.port}",
        "client": f"{python} tcpecho client --server 127.0.0.1 --port {server.port}",
    }
    for role, pid in pids.items():
        assert command_cell(lines, pid) == expected[role][:PLAIN].rstrip()
    narrow = watch_on_terminal(args, NARROW)
    assert all(len(line) <= NARROW for line in narrow)
    for role, pid in pids.items():  # no room for the interpreter: the script and its argument
        assert command_cell(narrow, pid).startswith(f"tcpecho {role} ")


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[tuple[int, dict[str, int]]]:
    """Two runs of one script deep in directories, ``rclient.py alpha`` and ``rclient.py
    beta``, each holding a connection to a listener of this test's: (port, pid by run)."""
    script = tmp_path / "deep" / "directories" / "rclient.py"
    script.parent.mkdir(parents=True)
    script.write_text(HOLDER)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        tail = ["--and", "a", "long", "tail", "of", "arguments", "that", "only", "room", "shows"]
        started = {
            run: subprocess.Popen(
                [sys.executable, str(script), run, str(port), *tail],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for run in ("alpha", "beta")
        }
        try:
            for process in started.values():
                assert process.stdout is not None
                assert process.stdout.readline() == b"connected\n"
            yield port, {run: process.pid for run, process in started.items()}
        finally:
            for process in started.values():
                process.kill()
                process.communicate()


def test_command_takes_the_room_the_terminal_has(holders: tuple[int, dict[str, int]]) -> None:
    """As ps and ss users expect: the interpreter, the script's name (not its directories),
    then its arguments: all of them on a wide terminal, the script and its first argument on
    a narrow one, never ``python rclient.p``."""
    port, pids = holders
    args = ["--peer", f"127.0.0.1:{port}"]  # the holders' ends: their peer is the listener
    python = os.path.basename(sys.executable)
    tail = "--and a long tail of arguments that only room shows"
    wide, narrow = watch_on_terminal(args, WIDE), watch_on_terminal(args, NARROW)
    off_terminal = run_watch(watch_argv("--once", *args)).stdout.splitlines()
    for run, pid in pids.items():
        whole = f"{python} rclient.py {run} {port} {tail}"
        assert command_cell(wide, pid) == whole
        assert command_cell(off_terminal, pid) == whole[:PLAIN].rstrip()
        assert command_cell(narrow, pid).startswith(f"rclient.py {run}")
    assert command_cell(narrow, pids["alpha"]) != command_cell(narrow, pids["beta"])
