"""``tcpecho watch`` on programs tcpecho did not write: socat and bash clients of the lab's
ClusterIP, in network namespaces, black-holed as a force-deleted pod is.

What a user relies on is checked against the kernel, not against the code: the options it
reads are the ones the program set; the owner is the program; a black-holed connection is
listed stuck with its retransmissions rising; the give-up time is the kernel model's (about
5.4 s for a 5 s TCP_USER_TIMEOUT: the timeout after a tail-loss probe and a first RTO;
about 929 s for tcp_retries2; 131 s for an unanswered connect); the time it has been stuck,
rebuilt from the kernel's timers, agrees with the time since the request was sent; and
where the options cannot be read the watch says what it assumed instead.
"""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tcpecho.lab.topology import CLUSTER_IP, SERVICE_PORT
from tcpecho.model import Activity, Failure, KernelSettings, predict
from tcpecho.tcp.options import TcpOptions
from tests.conftest import Spawn, requires_netns
from tests.support import LoggedProcess
from tests.watch.support import (
    Lab,
    Row,
    port_of,
    run_watch,
    running_lab,
    snapshot_of,
    wait_until,
    watch_argv,
)

TEST_PREFIX = "tcpecho-test-watch-"
CLUSTER = f"{CLUSTER_IP}:{SERVICE_PORT}"
# socat 1.7's EXEC splits its command at spaces without honouring quotes, so the loop that
# sends a line every second goes through SYSTEM (sh -c).
PINGER = "SYSTEM:while true; do echo ping; sleep 1; done"
BASH_CLIENT = (
    f"exec 3<>/dev/tcp/{CLUSTER_IP}/{SERVICE_PORT}; "
    "while echo ping >&3 && read -t 30 r <&3; do sleep 1; done"
)
USER_TIMEOUT_5S = f"TCP:{CLUSTER},setsockopt-int=6:18:5000"  # IPPROTO_TCP, TCP_USER_TIMEOUT
# Root without CAP_SYS_PTRACE (removed from the bounding and inheritable sets, so an exec
# as root cannot get it back).
NO_PTRACE = ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# Runs its arguments with pidfd_getfd refused (EPERM) by a seccomp filter: what Docker's and
# containerd's default profiles do to a container without CAP_SYS_PTRACE.
REFUSE_PIDFD_GETFD = """
import ctypes, errno, os, struct, sys
program = [
    (0x20, 0, 0, 0),  # load the system call's number
    (0x15, 0, 1, 438),  # pidfd_getfd?
    (0x06, 0, 0, 0x00050000 | errno.EPERM),  # then fail it with EPERM
    (0x06, 0, 0, 0x7FFF0000),  # else allow
]
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
filter_program = Program(len(program), ctypes.addressof(code))
assert libc.prctl(22, 2, ctypes.byref(filter_program), 0, 0) == 0  # seccomp, filter mode
os.execvp(sys.argv[1], sys.argv[1:])
"""
# How far the rebuilt stuck_for_s may be from the time since the send, for the first ~20 s,
# both read at the snapshot's own time (its "timestamp", taken by the watch just before it
# reads the sockets: not when this test's reader thread got the line, which a loaded machine
# delays). The retransmissions done by then (steps of 0.2 s to 6.5 s) each fired late by part
# of the timer wheel's granularity (4, 32, 32, 32, 256, 256 ms at HZ=250), which the estimate
# takes at a mean of 3 %: the error stays within about 0.3 s; the rest is the time the
# snapshot takes to reach the socket and the program's reaction to the line it was handed.
STUCK_TOLERANCE_S = 0.5
# A SYN's timers are 1 s, 1 s, ... 2 s, 4 s (32 ms granularity): it drifts far less.
CONNECT_TOLERANCE_S = 0.3
# But the SYN leaves only once `ip netns exec` has started socat, after the test's clock for
# the connect started: that start-up (milliseconds, up to about a second on a loaded 2-core
# machine) may put the test's count ahead of the kernel's.
START_UP_S = 1.0
# The pinging programs send once a second (plus a fork of sleep): their first unanswered
# request leaves within this of the fault.
PING_PERIOD_S = 1.2


@pytest.fixture
def lab(spawn: Spawn, tcpecho: str) -> Iterator[Lab]:
    with running_lab(TEST_PREFIX, spawn, tcpecho) as built:
        yield built


def send_line(program: subprocess.Popen[bytes], line: bytes) -> float:
    """Write a line for ``program`` to send; the (monotonic) time it was handed over."""
    assert program.stdin is not None
    program.stdin.write(line)
    program.stdin.flush()
    return time.monotonic()


@requires_netns
@pytest.mark.netns
def test_it_reads_each_programs_own_options_and_owner(lab: Lab) -> None:
    plain = lab.start(["socat", PINGER, f"TCP:{CLUSTER}"])
    pinger = lab.start(["socat", PINGER, USER_TIMEOUT_5S])
    bash = lab.start(["bash", "-c", BASH_CLIENT])
    rows = lab.wait_for_owners({plain.pid, pinger.pid, bash.pid})
    for row in rows.values():
        assert (row["peer"], row["state"], row["options_source"]) == (
            CLUSTER,
            "ESTABLISHED",
            "socket",
        )
        assert (row["stuck"], row["stuck_for_s"], row["gives_up_in_s"]) == (False, None, None)
        assert row["assumption"] is None
    assert rows[pinger.pid]["options"]["user_timeout_ms"] == 5000
    assert rows[pinger.pid]["command"].startswith("socat SYSTEM:")
    assert rows[pinger.pid]["limited_by"] == "user_timeout"
    # The timeout plus the tail-loss probe (~0.2 s) and the first RTO (~0.2 s).
    assert 5.3 <= rows[pinger.pid]["gives_up_after_s"] <= 5.6
    assert rows[bash.pid]["command"].startswith("bash -c exec 3<>/dev/tcp/")
    for pid in (plain.pid, bash.pid):
        assert rows[pid]["options"]["user_timeout_ms"] == 0
        assert rows[pid]["options"]["keepalive"] is False
        assert rows[pid]["limited_by"] == "tcp_retries2"
        assert 925 <= rows[pid]["gives_up_after_s"] <= 935  # the 924.6 s budget, and its lead
    _check_filters(lab, rows, pinger.pid, bash.pid)


def _check_filters(lab: Lab, rows: dict[int, Row], pinger: int, bash: int) -> None:
    def pids(*args: str, env: dict[str, str] | None = None) -> set[int]:
        argv = lab.in_client(watch_argv("--once", "--json", *args))
        return {row["pid"] for row in snapshot_of(run_watch(argv, env))}

    everyone = set(rows)
    assert pids("--pid", str(pinger)) == {pinger}
    assert pids("--port", str(port_of(rows[pinger]["local"]))) == {pinger}
    assert pids("--port", str(SERVICE_PORT)) == everyone  # the peer's port counts too
    assert pids("--peer", CLUSTER) == everyone
    assert pids("--peer", CLUSTER_IP) == everyone
    assert pids("--peer", f"{CLUSTER_IP}:{SERVICE_PORT + 1}") == set()
    assert pids("--peer", "10.96.0.11") == set()
    assert pids("--stuck") == set()
    assert pids(env={"TCPECHO_WATCH_PID": str(bash)}) == {bash}


@requires_netns
@pytest.mark.netns
def test_black_holed_programs_are_stuck_until_the_kernel_gives_up(
    lab: Lab, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    timed = lab.start(["socat", "-", f"TCP:{CLUSTER}"], stdin=True)  # sends what the test writes
    pinger = lab.start(["socat", PINGER, USER_TIMEOUT_5S])
    bash = lab.start(["bash", "-c", BASH_CLIENT])
    lab.wait_for_owners({timed.pid, pinger.pid, bash.pid})
    send_line(timed, b"hello\n")  # one echo first, so its RTO is the path's
    time.sleep(0.5)
    lab.topology.drop_pod_traffic()
    fault_at = time.monotonic()
    watcher = spawn(lab.in_client(watch_argv("--json", "--stuck", "--interval", "1s")))
    sent_at = send_line(timed, b"ping\n")
    connecting = lab.start(["socat", "-", f"TCP:{CLUSTER}"], stdin=True)  # its SYNs vanish
    connect_at = time.monotonic()
    time.sleep(3)
    table = run_watch(lab.in_client(watch_argv("--once")))
    _record(table.stdout, capsys)
    snapshots = _snapshots_until(
        watcher,
        lambda: _latest(watcher) >= sent_at + 21,
        timeout=40,
        what=lambda: f"21 s of snapshots: exit {watcher.proc.poll()}, {watcher.stderr_lines[-5:]}",
    )
    _check_timed(_rows_of(snapshots, timed.pid, since=sent_at), capsys)
    _check_pinger(_rows_of(snapshots, pinger.pid, since=fault_at), table.stdout, pinger)
    _check_bash(_rows_of(snapshots, bash.pid, since=fault_at))
    _check_connecting(_rows_of(snapshots, connecting.pid, since=connect_at))


def _snapshots_until(
    watcher: LoggedProcess,
    condition: Callable[[], bool],
    timeout: float,
    what: Callable[[], str],
) -> list[dict[str, Any]]:
    """The watch's JSON snapshots once ``condition`` holds; the watch stopped cleanly."""
    wait_until(condition, timeout=timeout, what=what)
    watcher.signal(signal.SIGTERM)
    assert watcher.wait(5) == 0
    watcher.assert_no_traceback()
    return [event for event in list(watcher.events) if "connections" in event]


def _latest(watcher: LoggedProcess) -> float:
    """When the latest snapshot arrived (monotonic: a snapshot reaches the test a few
    milliseconds after it was taken, which only makes the measured wait look longer)."""
    arrivals = [event["_received_at"] for event in list(watcher.events) if "connections" in event]
    return max(arrivals, default=0.0)


def _rows_of(snapshots: list[dict[str, Any]], pid: int, since: float) -> list[tuple[float, Row]]:
    """(seconds from ``since`` to the snapshot's own time, row) for each snapshot that lists
    a connection of ``pid``."""
    return [
        (_taken_at(snapshot) - since, row)
        for snapshot in snapshots
        for row in snapshot["connections"]
        if row["pid"] == pid
    ]


def _taken_at(snapshot: dict[str, Any]) -> float:
    """When the watch took ``snapshot`` (its wall-clock timestamp), on this test's monotonic
    clock: what a reader thread's arrival time would add is not in it."""
    wall = datetime.datetime.fromisoformat(snapshot["timestamp"]).timestamp()
    return wall - (time.time() - time.monotonic())


def _record(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Show what was measured in the test log: the figures are worth keeping."""
    with capsys.disabled():
        print(f"\n{text}")


def _check_timed(rows: list[tuple[float, Row]], capsys: pytest.CaptureFixture[str]) -> None:
    """The request whose send time the test knows: stuck_for_s must be that time."""
    early = [(elapsed, row) for elapsed, row in rows if elapsed <= 21]
    assert len(early) >= 18, [elapsed for elapsed, _ in rows]
    _record(json.dumps(min(early, key=lambda pair: abs(pair[0] - 10))[1]), capsys)
    errors = [row["stuck_for_s"] - elapsed for elapsed, row in early]
    _record(
        f"stuck_for_s - time since the send: {min(errors):+.3f} .. {max(errors):+.3f} s", capsys
    )
    assert max(abs(error) for error in errors) <= STUCK_TOLERANCE_S, errors
    retransmissions = [row["tcp_info"]["total_retrans"] for _, row in rows]
    assert retransmissions == sorted(retransmissions)
    assert retransmissions[-1] > retransmissions[0] >= 1
    # The give-up time holds still (the RTO the wait began with) while the time left shrinks.
    assert len({row["gives_up_after_s"] for _, row in rows}) == 1
    assert 925 <= rows[0][1]["gives_up_after_s"] <= 935
    for _, row in rows:
        assert (row["state"], row["stuck"], row["limited_by"]) == (
            "ESTABLISHED",
            True,
            "tcp_retries2",
        )
        assert row["clock"] == "request"
        assert row["tcp_info"]["unacked"] >= 1
        assert row["gives_up_in_s"] == pytest.approx(
            row["gives_up_after_s"] - row["stuck_for_s"], abs=0.002
        )


def _check_pinger(
    rows: list[tuple[float, Row]], table: str, pinger: subprocess.Popen[bytes]
) -> None:
    """TCP_USER_TIMEOUT 5 s: stuck for about 5.4 s, then gone (socat saw ETIMEDOUT)."""
    assert len(rows) >= 3, rows
    for since_fault, row in rows:
        assert row["limited_by"] == "user_timeout"
        assert row["options"]["user_timeout_ms"] == 5000
        assert 5.3 <= row["gives_up_after_s"] <= 5.6
        _assert_between_fault_and_ping(row["stuck_for_s"], since_fault)
    # Listed only while the kernel still waits: at most one snapshot interval past it.
    assert rows[-1][0] <= PING_PERIOD_S + 5.6 + 1.0 + STUCK_TOLERANCE_S
    assert pinger.wait(5) != 0  # socat ended on the error
    row_line = next(line for line in table.splitlines() if line.split()[:1] == [str(pinger.pid)])
    assert "user_timeout" in row_line
    # GIVES UP, as durations.format_seconds shows it (5.39s): the JSON's give-up time.
    times = [float(cell[:-1]) for cell in row_line.split() if re.fullmatch(r"\d+\.\d+s", cell)]
    assert any(5.3 <= shown <= 5.6 for shown in times), row_line


def _assert_between_fault_and_ping(stuck_for_s: float, since_fault: float) -> None:
    """A pinging program's unanswered request left after the fault, within a ping period."""
    assert since_fault - PING_PERIOD_S - STUCK_TOLERANCE_S <= stuck_for_s
    assert stuck_for_s <= since_fault + STUCK_TOLERANCE_S


def _check_bash(rows: list[tuple[float, Row]]) -> None:
    assert len(rows) >= 15, rows
    for since_fault, row in rows:
        assert row["limited_by"] == "tcp_retries2"
        assert 925 <= row["gives_up_after_s"] <= 935
        if since_fault <= 21:
            _assert_between_fault_and_ping(row["stuck_for_s"], since_fault)
    assert rows[-1][1]["tcp_info"]["total_retrans"] > rows[0][1]["tcp_info"]["total_retrans"]


def _check_connecting(rows: list[tuple[float, Row]]) -> None:
    """A connect into the black hole: the SYN budget (127 s, given up at the SYN timer past
    it, 131 s), counted from the connect."""
    assert len(rows) >= 15, rows
    for since_connect, row in rows:
        assert (row["state"], row["limited_by"]) == ("SYN_SENT", "tcp_syn_retries")
        assert 127 <= row["gives_up_after_s"] <= 140
        ahead = since_connect - row["stuck_for_s"]
        assert -CONNECT_TOLERANCE_S <= ahead <= CONNECT_TOLERANCE_S + START_UP_S


@requires_netns
@pytest.mark.netns
def test_without_the_right_to_read_them_the_options_are_assumed(lab: Lab) -> None:
    pinger = lab.start(["socat", PINGER, USER_TIMEOUT_5S])  # root, every capability
    confined = lab.start([*NO_PTRACE, "socat", PINGER, f"TCP:{CLUSTER},setsockopt-int=6:18:4000"])
    lab.wait_for_owners({pinger.pid, confined.pid})
    # Root without CAP_SYS_PTRACE may ptrace (read /proc/PID/fd, pidfd_getfd) only a process
    # whose capabilities it holds too: not the full-powered socat, but the confined one.
    rows = lab.watch_once(prefix=tuple(NO_PTRACE))
    hidden = [row for row in rows if row["pid"] is None]
    assert len(hidden) == 1
    _assert_assumed(hidden[0])
    assert "/proc/PID/fd" in hidden[0]["assumption"]
    confined_row = next(row for row in rows if row["pid"] == confined.pid)
    assert confined_row["options_source"] == "socket"
    assert confined_row["options"]["user_timeout_ms"] == 4000
    # A seccomp profile that refuses pidfd_getfd: the owner is seen, its options are not.
    rows = lab.watch_once(prefix=(sys.executable, "-c", REFUSE_PIDFD_GETFD))
    by_pid = {row["pid"]: row for row in rows}
    assert set(by_pid) == {pinger.pid, confined.pid}
    for pid, row in by_pid.items():
        _assert_assumed(row)
        assert f"pid {pid}" in row["assumption"]


def _assert_assumed(row: Row) -> None:
    """Options unknown: predicted with the kernel's defaults, as the assumption says, and
    how to get the real ones."""
    assert (row["options_source"], row["options"]) == ("unknown", None)
    assert "no TCP_USER_TIMEOUT" in row["assumption"]
    assert "keepalive off" in row["assumption"]
    assert "CAP_SYS_PTRACE" in row["assumption"]
    # What the defaults imply, whatever the program really set.
    assert row["limited_by"] == "tcp_retries2"
    assert 925 <= row["gives_up_after_s"] <= 935


@requires_netns
@pytest.mark.netns
def test_root_reads_the_options_of_another_users_program(lab: Lab) -> None:
    """As a debug container running as root beside an app that runs as its own user."""
    nobodys = lab.start([*NOBODY, "socat", PINGER, f"TCP:{CLUSTER},setsockopt-int=6:18:3000"])
    lab.wait_for_owners({nobodys.pid})
    (row,) = lab.watch_once()
    assert row["pid"] == nobodys.pid
    assert (row["options_source"], row["options"]["user_timeout_ms"]) == ("socket", 3000)


# An orphan's budget in this test: 5 retries, 0.2 s x (2^6 - 1) = 12.6 s (the default 0
# stands for 8: 102.2 s, docs/kernel-facts.md). Above 4 the 204 ms RTO's expiries no longer
# straddle the budget, so the range stays one step wide.
ORPHAN_RETRIES = 5


@requires_netns
@pytest.mark.netns
def test_an_orphan_is_bounded_by_tcp_orphan_retries_not_tcp_retries2(
    lab: Lab, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    """A program killed while its request waits for an ACK: its socket, FIN queued behind
    the data, is an orphan the kernel finishes alone, within the orphan budget the watch
    predicts; the kernel drops it then, 900 s before tcp_retries2 would have."""
    lab.topology.sysctl(lab.topology.client_ns, "net.ipv4.tcp_orphan_retries", ORPHAN_RETRIES)
    timed = lab.start(["socat", "-", f"TCP:{CLUSTER}"], stdin=True)
    local = lab.wait_for_owners({timed.pid})[timed.pid]["local"]
    send_line(timed, b"hello\n")  # one echo first, so its RTO is the path's
    time.sleep(0.5)
    lab.topology.drop_pod_traffic()
    sent_at = send_line(timed, b"ping\n")
    time.sleep(1.0)  # retransmitting: killed mid-wait, as the programs were
    timed.kill()
    timed.wait(5)
    watcher = spawn(lab.in_client(watch_argv("--json", "--interval", "0.2s")))
    table = run_watch(lab.in_client(watch_argv("--once"))).stdout
    _record(table, capsys)
    assert "1 orphaned" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.rstrip().endswith(local))
    assert "FIN-WAIT-1" in row, row
    assert "tcp_orphan_retries" in row, row
    assert f"after {ORPHAN_RETRIES} retries (tcp_orphan_retries={ORPHAN_RETRIES})" in table
    snapshots = _snapshots_until(
        watcher,
        lambda: _gone_since(watcher, local) is not None,
        timeout=40,
        what=lambda: f"end of the orphan {local}: {watcher.stderr_lines[-5:]}",
    )
    rows = [
        row for snapshot in snapshots for row in snapshot["connections"] if row["local"] == local
    ]
    assert rows, "the orphan was never listed"
    expected = predict(
        KernelSettings(tcp_orphan_retries=ORPHAN_RETRIES),
        TcpOptions(),
        Failure.SILENT,
        Activity.ORPHANED,
    )
    for row in rows:
        assert (row["pid"], row["state"], row["orphaned"]) == (None, "FIN_WAIT1", True)
        assert row["limited_by"] == "tcp_orphan_retries"
        assert row["if_idle"] is None  # it can never be idle: its FIN waits
        assert expected.low_s - 0.01 <= row["gives_up_after_s"] <= expected.high_s
    gone_at = _gone_since(watcher, local)
    assert gone_at is not None
    # Seen gone at the first snapshot after the end: at most one interval late, plus the
    # watch's own scan.
    ended_after = gone_at - sent_at
    _record(
        f"orphan gone {ended_after:.2f} s after the send (expected {expected.describe()})", capsys
    )
    assert expected.low_s <= ended_after <= expected.high_s + 0.2 + 0.3


def _gone_since(watcher: LoggedProcess, local: str) -> float | None:
    """When the first snapshot without ``local`` arrived, after one that listed it."""
    seen = False
    for event in list(watcher.events):
        if "connections" not in event:
            continue
        listed = any(row["local"] == local for row in event["connections"])
        if listed:
            seen = True
        elif seen:
            arrived: float = event["_received_at"]
            return arrived
    return None


@requires_netns
@pytest.mark.netns
def test_an_orphan_whose_rto_reached_its_cap_ends_at_its_next_expiry(
    lab: Lab, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the RTO at its cap the kernel no longer counts the orphan "alive", and the
    sysctl's 0 then allows it no retry: it ends at the timer's next expiry, not after the
    8 retries' budget. A 1 s cap (tcp_rto_max_ms, per namespace) gets there in 2 s."""
    lab.topology.sysctl(lab.topology.client_ns, "net.ipv4.tcp_rto_max_ms", 1000)
    timed = lab.start(["socat", "-", f"TCP:{CLUSTER}"], stdin=True)
    local = lab.wait_for_owners({timed.pid})[timed.pid]["local"]
    send_line(timed, b"hello\n")
    time.sleep(0.5)
    lab.topology.drop_pod_traffic()
    send_line(timed, b"ping\n")
    watcher = spawn(lab.in_client(watch_argv("--json", "--interval", "0.2s")))
    time.sleep(3.0)  # 0.2, 0.4, 0.8 s, then 1 s steps: the RTO is at its cap
    timed.kill()
    timed.wait(5)
    killed_at = time.monotonic()
    snapshots = _snapshots_until(
        watcher,
        lambda: _gone_since(watcher, local) is not None,
        timeout=20,
        what=lambda: f"end of the orphan {local}: {watcher.stderr_lines[-5:]}",
    )
    orphans = [
        row
        for snapshot in snapshots
        for row in snapshot["connections"]
        if row["local"] == local and row["orphaned"]
    ]
    assert orphans, "the orphan was never listed"
    for row in orphans:
        assert row["tcp_info"]["rto_ms"] == 1000
        assert row["limited_by"] == "tcp_orphan_retries"
        assert row["gives_up_in_s"] <= 1.0 * 1.06  # the next expiry, not the 7.4 s budget
    gone_at = _gone_since(watcher, local)
    assert gone_at is not None
    _record(f"capped orphan gone {gone_at - killed_at:.2f} s after the kill", capsys)
    # At most one 1 s step after the kill, a late timer, a snapshot interval and a scan.
    assert gone_at - killed_at <= 1.06 + 0.2 + 0.5
