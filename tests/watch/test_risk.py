"""``tcpecho watch``'s connections at risk (issue 23), on real sockets: what each connection's
own options will let go wrong in the state it is in, named with explain's traps (the same
codes and messages), the ``--at-risk`` filter, ``--once``'s exit status for scripts and
probes, and ``options-unknown`` where the options cannot be read.

Idle connections are this test's own, on loopback, with the options set on them here; busy
ones are programs in a lab's client pod whose peer is black-holed, as a force-deleted pod's.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tcpecho.explain import PathContext, explain
from tcpecho.model import KernelSettings
from tcpecho.settings import Deadlines, SettingError
from tcpecho.tcp.options import EffectiveOptions
from tcpecho.watch import WatchConfig
from tests.conftest import Spawn, requires_netns, requires_root
from tests.watch.support import (
    Lab,
    Row,
    matched_snapshot_of,
    run_watch,
    running_lab,
    snapshot_of,
    watch_argv,
)

TEST_PREFIX = "tcpecho-test-risk-"
# Root without CAP_SYS_PTRACE: it cannot read a full-powered process's descriptors.
NO_PTRACE = ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"]
Options = list[tuple[int, int, int]]  # setsockopt's (level, option, value), in order
KEEPALIVE_60S = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
]
USER_TIMEOUT_20S = [(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 20_000)]
PROTECTED = KEEPALIVE_60S + USER_TIMEOUT_20S  # 60 s + 3 x 5 s of probing, within 20 s busy

Hold = Callable[[Options, Options], int]


@pytest.fixture
def hold() -> Iterator[Hold]:
    """``hold(client, server)``: a loopback connection of this test process, idle, each end
    with the options given; its listener's port. Closed after the test."""
    opened: list[socket.socket] = []

    def connect(client: Options, server: Options) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        opened.append(listener)
        port: int = listener.getsockname()[1]
        connecting = socket.create_connection(("127.0.0.1", port))
        opened.append(connecting)
        accepted, _ = listener.accept()
        opened.append(accepted)
        for sock, options in ((connecting, client), (accepted, server)):
            for level, name, value in options:
                sock.setsockopt(level, name, value)
        return port

    yield connect
    for sock in reversed(opened):
        sock.close()


def _watch(port: int, *args: str) -> list[Row]:
    return snapshot_of(run_watch(watch_argv("--once", "--json", "--port", str(port), *args)))


def _client(rows: list[Row], port: int) -> Row:
    """The connecting end's row: its peer is the listener."""
    return next(row for row in rows if row["peer"] == f"127.0.0.1:{port}")


def _server(rows: list[Row], port: int) -> Row:
    return next(row for row in rows if row["local"] == f"127.0.0.1:{port}")


def _codes(row: Row) -> list[str]:
    return [risk["code"] for risk in row["at_risk"]]


def _explains(row: Row, path: PathContext | None = None) -> dict[str, str]:
    """explain's message for each trap of the options the row says its socket carries, on
    ``path``: the one place each trap is worded."""
    tcp = EffectiveOptions(**row["options"])
    traps = explain(KernelSettings.here(), tcp, Deadlines(), path or PathContext()).traps
    return {trap.code: trap.message for trap in traps}


@requires_root  # reading the test process's own sockets: ptrace rights over it
def test_an_idle_connection_without_keepalive_is_at_risk(hold: Hold) -> None:
    """No options at all: idle, a vanished peer goes unnoticed and the next request hangs
    for tcp_retries2 (no-bound); with a user timeout only, keepalive's absence is the risk
    (user-timeout-without-keepalive). Each with explain's own message, as JSON objects."""
    bare = hold([], [])
    rows = _watch(bare)
    assert len(rows) == 2
    for row in rows:
        assert (row["state"], row["options_source"], row["stuck"]) == (
            "ESTABLISHED",
            "socket",
            False,
        )
        assert row["at_risk"] == [{"code": "no-bound", "message": _explains(row)["no-bound"]}]
        assert "tcp_retries2=" in row["at_risk"][0]["message"]
    timed = hold(USER_TIMEOUT_20S, [])
    client = _client(_watch(timed), timed)
    assert client["options"]["user_timeout_ms"] == 20_000
    code = "user-timeout-without-keepalive"
    assert client["at_risk"] == [{"code": code, "message": _explains(client)[code]}]
    # The table marks both, counts them, and words each code once under it.
    table = run_watch(watch_argv("--once", "--port", str(bare)))
    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert "2 connections, 0 stuck, 2 never noticed if idle, 2 at risk" in lines[0]
    risk_at = lines[1].index("RISK")
    assert [line[risk_at:].split()[0] for line in lines[2:4]] == ["no-bound", "no-bound"]
    notes = [line for line in lines if line.startswith("no-bound: ")]
    assert len(notes) == 1
    assert notes[0].startswith(f"no-bound: {_explains(rows[0])['no-bound'][:40]}")


@requires_root
def test_keepalive_no_sooner_than_the_paths_idle_timeout_is_at_risk(hold: Hold) -> None:
    """Keepalive's first probe after 60 s idle: at risk on a path that forgets a flow idle
    for 30 s or 60 s (at or above it), safe behind aws-nlb's 350 s; no path, no such risk."""
    port = hold(PROTECTED, PROTECTED)
    for args, path in [
        (("--path-idle-timeout", "30s"), PathContext(30.0)),
        (("--path-idle-timeout", "1m"), PathContext(60.0)),
    ]:
        for row in _watch(port, *args):
            code = "keepalive-exceeds-path-idle"
            assert row["at_risk"] == [{"code": code, "message": _explains(row, path)[code]}]
            assert "keepalive's first probe comes after 60 s idle" in row["at_risk"][0]["message"]
    for safe in [(), ("--path", "aws-nlb")]:
        assert [row["at_risk"] for row in _watch(port, *safe)] == [[], []]
    # A preset names itself in the message; keepalive off is at risk on any path.
    bare = hold([], [])
    row = _client(_watch(bare, "--path", "azure-lb"), bare)
    assert _codes(row) == ["no-bound", "keepalive-exceeds-path-idle"]
    assert "keepalive is off" in row["at_risk"][1]["message"]
    assert "azure-lb's idle timeout (4m)" in row["at_risk"][1]["message"]


@requires_root
def test_once_at_risk_exits_1_when_a_connection_matches_and_0_when_none_does(
    hold: Hold,
) -> None:
    protected = hold(PROTECTED, PROTECTED)
    bare = hold([], [])
    for output in ((), ("--json",)):
        safe = run_watch(watch_argv("--once", "--at-risk", "--port", str(protected), *output))
        assert (safe.returncode, safe.stderr) == (0, ""), safe
        risky = run_watch(watch_argv("--once", "--at-risk", "--port", str(bare), *output))
        assert (risky.returncode, risky.stderr) == (1, ""), risky
    assert (
        matched_snapshot_of(
            run_watch(watch_argv("--once", "--json", "--at-risk", "--port", str(protected)))
        )
        == []
    )
    # Only the connections at risk are listed; the header counts them.
    listed = matched_snapshot_of(run_watch(watch_argv("--once", "--json", "--at-risk")))
    ours = [row for row in listed if bare in _ports(row) or protected in _ports(row)]
    assert {row["local"] for row in ours} == {row["local"] for row in _watch(bare)}
    table = run_watch(watch_argv("--once", "--at-risk", "--port", str(protected)))
    assert "0 connections, 0 stuck, 0 at risk" in table.stdout.splitlines()[0]
    assert "no connection matches" in table.stdout
    # Without --at-risk or --stuck, --once still exits 0, at risk or not; so does --stuck
    # matching nothing (an idle connection is not stuck).
    for args in (("--once",), ("--once", "--json"), ("--once", "--stuck")):
        assert run_watch(watch_argv(*args, "--port", str(bare))).returncode == 0
    environment = {"TCPECHO_WATCH_ONCE": "1", "TCPECHO_WATCH_AT_RISK": "true"}
    assert run_watch(watch_argv("--port", str(bare)), environment).returncode == 1


def _ports(row: Row) -> tuple[int, int]:
    return int(row["local"].rsplit(":", 1)[1]), int(row["peer"].rsplit(":", 1)[1])


@requires_root
def test_options_that_cannot_be_read_are_a_risk_that_cannot_be_told(hold: Hold) -> None:
    """Root without CAP_SYS_PTRACE sees this (full-powered) test process's connections but
    not their owner nor options: options-unknown, never an empty list; a listener, whose
    state no option bounds, carries none."""
    port = hold(PROTECTED, PROTECTED)
    argv = [*NO_PTRACE, *watch_argv("--once", "--json", "--all", "--port", str(port))]
    rows = snapshot_of(run_watch(argv))
    connected = [row for row in rows if row["state"] == "ESTABLISHED"]
    assert len(connected) == 2
    for row in connected:
        assert (row["pid"], row["options_source"]) == (None, "unknown")
        assert _codes(row) == ["options-unknown"]
        assert "cannot be told" in row["at_risk"][0]["message"]
    (listening,) = [row for row in rows if row["state"] == "LISTEN"]
    assert listening["at_risk"] == []
    at_risk = [*NO_PTRACE, *watch_argv("--once", "--json", "--at-risk", "--port", str(port))]
    assert len(matched_snapshot_of(run_watch(at_risk))) == 2  # cannot tell counts


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--path", "aws-nlb", "--path-idle-timeout", "5m"], "give --path or --path-idle-timeout"),
        (["--path-idle-timeout", "0s"], "--path-idle-timeout must be more than 0s"),
        (["--path", "nowhere"], "nowhere"),
        (["--at-risk", "--path-idle-timeout", "soon"], "not a duration"),
    ],
)
def test_bad_path_options_are_usage_errors(args: list[str], expected: str) -> None:
    result = run_watch(watch_argv("--once", *args))
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]
    assert result.stdout == ""


def test_the_config_refuses_a_path_that_forgets_at_once() -> None:
    with pytest.raises(SettingError, match="more than 0s"):
        WatchConfig(path=PathContext(0.0))


# -- busy: a black-holed peer ----------------------------------------------------------------


@pytest.fixture
def lab(spawn: Spawn, tcpecho: str) -> Iterator[Lab]:
    with running_lab(TEST_PREFIX, spawn, tcpecho) as built:
        yield built


@requires_netns
@pytest.mark.netns
def test_a_busy_connection_without_a_user_timeout_is_at_risk(lab: Lab) -> None:
    """Requests the black hole never acknowledges: without a user timeout, nothing but
    tcp_retries2 (no-bound), keepalive or not (it sends no probe while data waits); with
    one, none, though its keepalive is off (an idle risk); a connect into the hole, its
    SYNs' budget (slow-connect). ``--once --at-risk --stuck`` lists them and exits 1."""
    cluster = "10.96.0.10:8000"
    bare = lab.start(["socat", "-", f"TCP:{cluster}"], stdin=True)
    keepalive = lab.start(["socat", "-", f"TCP:{cluster},keepalive"], stdin=True)
    bounded = lab.start(["socat", "-", f"TCP:{cluster},setsockopt-int=6:18:30000"], stdin=True)
    programs = (bare, keepalive, bounded)
    lab.wait_for_owners({program.pid for program in programs})
    for program in programs:  # one echo first: the path works
        _send(program, b"hello\n")
    time.sleep(0.5)
    lab.topology.drop_pod_traffic()
    for program in programs:
        _send(program, b"ping\n")
    connecting = lab.start(["socat", "-", f"TCP:{cluster}"], stdin=True)  # its SYNs vanish
    time.sleep(1.5)  # each has retransmitted: stuck
    rows = {row["pid"]: row for row in lab.watch_once()}
    for pid in (bare.pid, keepalive.pid, bounded.pid):
        assert rows[pid]["stuck"], rows[pid]
        assert rows[pid]["tcp_info"]["unacked"] >= 1
    assert _codes(rows[bare.pid]) == ["no-bound"]
    assert _codes(rows[keepalive.pid]) == ["keepalive-without-user-timeout"]
    assert "keepalive sends no probe" in rows[keepalive.pid]["at_risk"][0]["message"]
    assert rows[bounded.pid]["at_risk"] == []
    assert rows[connecting.pid]["state"] == "SYN_SENT"
    assert _codes(rows[connecting.pid]) == ["slow-connect"]
    argv = lab.in_client(watch_argv("--once", "--json", "--at-risk", "--stuck"))
    matched = {row["pid"] for row in matched_snapshot_of(run_watch(argv))}
    assert matched == {bare.pid, keepalive.pid, connecting.pid}
    table = run_watch(lab.in_client(watch_argv("--once", "--at-risk")))
    assert table.returncode == 1, table
    assert "3 connections, 3 stuck, 1 never noticed if idle, 3 at risk" in table.stdout


def _send(program: subprocess.Popen[bytes], line: bytes) -> None:
    assert program.stdin is not None
    program.stdin.write(line)
    program.stdin.flush()
