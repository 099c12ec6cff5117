"""``tcpecho watch`` on loopback, as users run it: a connection of the test's own with its
owner and options, the filters and options from the command line or the environment, the
states listed (``ss``'s connected sockets, or every state with ``--all``), the table off a
terminal with another program's command line escaped, usage errors, and stopping on a
signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import Spawn
from tests.support import LoggedProcess
from tests.watch.support import (
    Row,
    matched_snapshot_of,
    port_of,
    run_watch,
    snapshot_of,
    wait_until,
    watch_argv,
)


@pytest.fixture
def own_connection() -> Iterator[tuple[int, int]]:
    """A loopback connection of this test process: (listening port, client's local port);
    the client side carries TCP_USER_TIMEOUT 7 s, the server side keepalive (30 s idle,
    then 3 probes 5 s apart)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 7000)
            accepted, _ = listener.accept()
            with accepted:
                accepted.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
                accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
                accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
                yield port, client.getsockname()[1]


def test_once_json_lists_a_connection_of_this_test_with_its_owner(
    own_connection: tuple[int, int],
) -> None:
    port, client_port = own_connection
    rows = snapshot_of(run_watch(watch_argv("--once", "--json", "--port", str(port))))
    assert len(rows) == 2  # both ends: the listener itself is no connection
    assert {row["pid"] for row in rows} == {os.getpid()}
    client = next(row for row in rows if row["local"] == f"127.0.0.1:{client_port}")
    server = next(row for row in rows if row["peer"] == f"127.0.0.1:{client_port}")
    for row in rows:
        assert row["state"] == "ESTABLISHED"
        assert "pytest" in (row["command"] or "")
        assert (row["stuck"], row["stuck_for_s"], row["gives_up_in_s"]) == (False, None, None)
    if os.geteuid() == 0:  # a process may always read its parent's sockets as root
        assert client["options_source"] == server["options_source"] == "socket"
        assert client["options"]["user_timeout_ms"] == 7000
        assert server["options"]["user_timeout_ms"] == 0
        # Healthy: what a request lost now would take, from the socket's own options.
        assert client["limited_by"] == "user_timeout"
        assert 7.3 <= client["gives_up_after_s"] <= 7.6
        assert server["limited_by"] == "tcp_retries2"
        assert 925 <= server["gives_up_after_s"] <= 935
        # Idle, a vanished peer is noticed only by keepalive: 30 s + 3 x 5 s after the last
        # data on the server's side, never on the client's (nothing is ever sent).
        assert server["if_idle"] == {
            "gives_up_after_s": 45.0,
            "limited_by": "keepalive",
            "clock": "last-data",
        }
        assert client["if_idle"] == {
            "gives_up_after_s": None,
            "limited_by": "nothing",
            "clock": "last-data",
        }


def test_stuck_on_a_healthy_machine_lists_nothing_of_ours(own_connection: tuple[int, int]) -> None:
    port, _ = own_connection
    # Another program's stuck connection may be listed: then the status is 1.
    rows = matched_snapshot_of(run_watch(watch_argv("--once", "--json", "--stuck")))
    assert [row for row in rows if row["pid"] == os.getpid()] == []
    assert [row for row in rows if port in (port_of(row["local"]), port_of(row["peer"]))] == []


def test_the_options_may_come_from_the_environment(own_connection: tuple[int, int]) -> None:
    port, _ = own_connection
    env = {"TCPECHO_WATCH_ONCE": "true", "TCPECHO_WATCH_JSON": "1", "TCPECHO_WATCH_PORT": str(port)}
    rows = snapshot_of(run_watch(watch_argv(), env))
    assert len(rows) == 2


@pytest.fixture
def time_wait() -> Iterator[tuple[int, int]]:
    """A listener of this test's and a connection to it that its client closed first, so
    the client's end is in TIME-WAIT: (listening port, the client's port)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        client_port = client.getsockname()[1]
        accepted, _ = listener.accept()
        client.close()  # the first FIN: this end goes on to TIME-WAIT
        accepted.close()
        yield port, client_port


def _states(rows: list[Row], port: int) -> set[tuple[str, str]]:
    """(state, local address) of each row: which sockets of ``port`` were listed."""
    return {(row["state"], row["local"]) for row in rows if port in _ports(row)}


def _ports(row: Row) -> tuple[int, int]:
    return port_of(row["local"]), port_of(row["peer"])


def test_time_wait_is_listed_only_with_all(time_wait: tuple[int, int]) -> None:
    """As ``ss``: by default connected sockets only; the finished ones with ``--all``."""
    port, client_port = time_wait
    finished = ("TIME_WAIT", f"127.0.0.1:{client_port}")

    def listed_with_all() -> set[tuple[str, str]]:
        return _states(snapshot_of(run_watch(watch_argv("--once", "--json", "--all"))), port)

    wait_until(lambda: finished in listed_with_all(), timeout=5, what="TIME-WAIT socket")
    assert snapshot_of(run_watch(watch_argv("--once", "--json", "--port", str(port)))) == []
    rows = snapshot_of(run_watch(watch_argv("--once", "--json", "-a", "--port", str(port))))
    assert _states(rows, port) == {finished, ("LISTEN", f"127.0.0.1:{port}")}
    closed = next(row for row in rows if row["state"] == "TIME_WAIT")
    assert (closed["pid"], closed["limited_by"], closed["stuck"]) == (None, None, False)
    table = run_watch(watch_argv("--once", "--port", str(port)), {"TCPECHO_WATCH_ALL": "true"})
    assert "TIME-WAIT" in table.stdout, table


def test_a_listening_socket_is_listed_only_with_all() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert snapshot_of(run_watch(watch_argv("--once", "--json", "--port", str(port)))) == []
        rows = snapshot_of(run_watch(watch_argv("--once", "--json", "--all", "--port", str(port))))
        assert _states(rows, port) == {("LISTEN", f"127.0.0.1:{port}")}
        assert (rows[0]["pid"], rows[0]["stuck"], rows[0]["limited_by"]) == (
            os.getpid(),
            False,
            None,
        )
        table = run_watch(watch_argv("--once", "--all", "--port", str(port)))
        row = next(line for line in table.stdout.splitlines() if line.endswith(f":{port}"))
        assert "LISTEN" in row.split()


def test_off_a_terminal_each_snapshot_is_a_table(own_connection: tuple[int, int]) -> None:
    port, client_port = own_connection
    result = run_watch(watch_argv("--once", "--port", str(port)))
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tcpecho watch")
    assert lines[1].split()[:4] == ["PID", "COMMAND", "PEER", "STATE"]
    assert "\x1b" not in result.stdout  # no terminal, no redrawing
    row = next(line for line in lines if line.rstrip().endswith(f"127.0.0.1:{client_port}"))
    assert row.split()[0] == str(os.getpid())
    if os.geteuid() == 0:  # the options are read: the client's has no keepalive
        assert "2 connections, 0 stuck, 1 never noticed if idle" in lines[0]
        # IF IDLE beside GIVES UP: the client's never, the keepalive server's 45 s.
        idle_at = lines[1].index("IF IDLE") + len("IF IDLE")
        assert row[:idle_at].split()[-1] == "never", row
        server = next(line for line in lines if line.rstrip().endswith(f"127.0.0.1:{port}"))
        assert server[:idle_at].split()[-1] == "45.0s", server
    else:
        assert "2 connections, 0 stuck" in lines[0]


# A command line holding terminal sequences: clear the screen, then red.
EVIL = "\x1b[2J\x1b[31mEVIL"


def test_a_command_line_is_shown_escaped_as_ps_shows_it() -> None:
    """A program started as ``exec -a $'\\e[2J\\e[31mEVIL' socat ...``: its row shows the
    escape characters as ``?`` and holds no ESC; the JSON keeps the command line whole."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        script = f"exec -a $'\\e[2J\\e[31mEVIL' socat - TCP:127.0.0.1:{port}"
        evil = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE)
        try:
            accepted, _ = listener.accept()
            with accepted:
                args = ("--once", "--port", str(port), "--pid", str(evil.pid))
                (row,) = snapshot_of(run_watch(watch_argv("--json", *args)))
                assert row["command"] == f"{EVIL} - TCP:127.0.0.1:{port}"
                table = run_watch(watch_argv(*args))
        finally:
            evil.kill()
            evil.wait()
            assert evil.stdin is not None
            evil.stdin.close()
    assert table.returncode == 0, table
    assert "\x1b" not in table.stdout
    line = next(line for line in table.stdout.splitlines() if line.startswith(str(evil.pid)))
    assert line.split()[1] == "?[2J?[31mEVIL"


def test_a_peer_given_by_name_is_matched_by_the_addresses_it_resolves_to(
    own_connection: tuple[int, int],
) -> None:
    """localhost resolves (from /etc/hosts) to 127.0.0.1: the client's end of our connection,
    whose peer is the listener, is listed; the accepted end, whose peer port differs, is not."""
    port, client_port = own_connection
    rows = snapshot_of(run_watch(watch_argv("--once", "--json", "--peer", f"localhost:{port}")))
    assert [(row["local"], row["peer"]) for row in rows] == [
        (f"127.0.0.1:{client_port}", f"127.0.0.1:{port}")
    ]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--interval", "abc"], {}, "not a duration"),
        (["--interval", "0s"], {}, "below the minimum"),
        (["--port", "0"], {}, "--port"),
        (["--pid", "-1"], {}, "--pid"),
        (["--peer", "[::1"], {}, "--peer"),
        # Issue 21: a name that does not resolve matched nothing, exit 0; now refused at start.
        (
            ["--once", "--peer", "no-such-host.invalid"],
            {},
            "'--peer': no-such-host.invalid does not resolve: ",
        ),
        (
            ["--once"],
            {"TCPECHO_WATCH_PEER": "no-such-host.invalid:8000"},
            "TCPECHO_WATCH_PEER (the environment variable for '--peer'): "
            "no-such-host.invalid does not resolve: ",
        ),
        ([], {"TCPECHO_WATCH_INTERVAL": "soon"}, "TCPECHO_WATCH_INTERVAL"),
        ([], {"TCPECHO_WATCH_PORT": "70000"}, "TCPECHO_WATCH_PORT"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_watch(watch_argv(*args), env)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]
    assert result.stdout == ""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_the_watch_with_status_0(spawn: Spawn, signum: int) -> None:
    watcher = spawn(watch_argv("--interval", "200ms"))
    wait_until(lambda: len(_headers(watcher)) >= 2, timeout=15, what="two snapshots")
    watcher.signal(signum)
    assert watcher.wait(5) == 0
    watcher.assert_no_traceback()
    assert watcher.stderr_lines == []


def _headers(process: LoggedProcess) -> list[str]:
    return [line for line in list(process.other_lines) if line.startswith("tcpecho watch")]
