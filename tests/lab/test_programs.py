"""Any program in the lab: real clients and servers tcpecho did not write, judged by what the
kernel shows of their sockets, against the model's prediction from the options they set."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from tcpecho.experiment import Result
from tcpecho.lab.programs import (
    BusyAtFault,
    DataAfter,
    Program,
    ProgramClient,
    ProgramError,
    SendClock,
    StartupTimeouts,
    program_names,
    shown_survival,
    unmapped,
    wait_until_listening,
)
from tcpecho.lab.runner import RUN_PREFIX, rto_max_supported
from tcpecho.lab.topology import SERVER_IP, SERVICE_PORT, Topology, leftover_namespaces
from tcpecho.model import Activity, Mechanism, Outcome, Prediction
from tcpecho.tcp.diag import Connection
from tcpecho.tcp.info import TcpInfo
from tests.conftest import requires_netns
from tests.support import read_table, tcpecho_executable

PING_EVERY_SECOND = "while :; do echo ping; sleep 1; done"
SOCAT = f"{PING_EVERY_SECOND} | socat - TCP:{{host}}:{{port}}"
# TCP_USER_TIMEOUT through socat's generic option: level 6 (IPPROTO_TCP), option 18.
SOCAT_USER_TIMEOUT = f"{SOCAT},setsockopt-int=6:18:5000"
BASH_DEV_TCP = (
    'bash -c "exec 3<>/dev/tcp/$TCPECHO_LAB_HOST/$TCPECHO_LAB_PORT; '
    'while echo ping >&3 && read -t 60 reply <&3; do sleep 1; done"'
)
SOCAT_KEEPALIVE = (
    "(echo hello; sleep 3600) | socat - "
    "TCP:{host}:{port},keepalive,keepidle=10,keepintvl=1,keepcnt=3"
)


def test_a_program_is_named_by_its_name_or_its_command() -> None:
    assert program_names(["socat=socat - TCP:{host}:{port}", "nc {host} {port}"]) == [
        ("socat", "socat - TCP:{host}:{port}"),
        ("nc {host} {port}", "nc {host} {port}"),
    ]
    (long,) = program_names(["while :; do echo ping; sleep 1; done | socat - TCP:x:1"])
    assert long[0] == "while :; do echo ping; ~"


def _lab(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp_path / "lab.json"
    result = subprocess.run(
        [tcpecho_executable(), "lab", "--quick", "--json", str(report), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    cases = json.loads(report.read_text())["cases"] if report.exists() else []
    return result, {case["name"]: case for case in cases}


@requires_netns
@pytest.mark.netns
def test_real_clients_are_measured_through_their_sockets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result, cases = _lab(
        tmp_path,
        *("--fault", "force-delete", "--fault", "kill"),
        *("--client-cmd", f"socat={SOCAT}"),
        *("--client-cmd", f"socat-user-timeout={SOCAT_USER_TIMEOUT}"),
        *("--client-cmd", f"bash={BASH_DEV_TCP}"),
        *("--client-cmd", f"socat-keepalive={SOCAT_KEEPALIVE}"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with capsys.disabled():  # the table goes into the test log, for the record
        print("\n" + result.stdout)
    assert set(cases) == {
        f"{fault}/{name}"
        for fault in ("force-delete", "kill")
        for name in ("socat", "socat-user-timeout", "bash", "socat-keepalive")
    }
    for name, case in cases.items():
        assert case["error"] is None, (name, case["error"])
        assert case["matches_model"], (name, case["prediction"], case["measured_s"])
    # The options the lab read are the ones each program set on its socket.
    assert cases["force-delete/socat-user-timeout"]["options"]["user_timeout_ms"] == 5000
    assert cases["force-delete/socat"]["options"]["user_timeout_ms"] == 0
    assert cases["force-delete/bash"]["options"]["keepalive"] is False
    keepalive = cases["force-delete/socat-keepalive"]["options"]
    assert (keepalive["keepalive"], keepalive["keepalive_idle_s"]) == (True, 10)
    # Busy programs against the black hole: the user timeout ends it, nothing else does.
    bounded = cases["force-delete/socat-user-timeout"]
    assert (bounded["mode"], bounded["verdict"]) == ("active", "detected")
    assert bounded["prediction"]["mechanism"] == "user_timeout"
    for hanging in ("force-delete/socat", "force-delete/bash"):
        assert cases[hanging]["mode"] == "active"
        assert cases[hanging]["verdict"] == "hang"  # only the (shortened) kernel budget
        assert cases[hanging]["prediction"]["mechanism"] == "tcp_retries2"
    idle = cases["force-delete/socat-keepalive"]
    assert (idle["mode"], idle["measured_clock"], idle["verdict"]) == (
        "idle",
        "last-data",
        "detected",
    )
    # While it waits, the progress line expects what the table does: the idle prediction,
    # not the busy one (the program was started as a busy --client-cmd).
    expected = Prediction(
        idle["prediction"]["low_s"],
        idle["prediction"]["high_s"],
        idle["prediction"]["clock"],
        Mechanism(idle["prediction"]["mechanism"]),
        (),
    ).describe()
    waiting = re.findall(
        r"force-delete/socat-keepalive +waiting +[\d.]+ s since the last data \(expected (.*)\)$",
        result.stderr,
        re.M,
    )
    assert waiting, result.stderr[-2000:]
    assert set(waiting) == {expected}, (waiting, expected)
    # Every program's namespace had --quick's budget (its options were unknown until it
    # ran), and the model counted it; * marks only the programs that budget ended.
    quick_sysctl = "net.ipv4.tcp_rto_max_ms" if rto_max_supported() else "net.ipv4.tcp_retries2"
    marked = {name for name, case in cases.items() if case["quick"]}
    assert marked == {"force-delete/socat", "force-delete/bash"}
    for name, case in cases.items():
        assert quick_sysctl in case["sysctls"], name
    starred = {
        f"{row['fault']}/{row['profile']}"
        for row in read_table(result.stdout)
        if row["expected"].endswith(" *")
    }
    assert starred == marked
    assert "* --quick: only the kernel's retransmission budget ends the cases marked *" in (
        result.stdout
    )
    assert "Every program case ran with" in result.stdout
    # And the table says what the lab read from each program's socket, as watch shows it.
    lines = result.stdout.splitlines()
    for shown in (
        "  socat               defaults",
        "  socat-user-timeout  user_timeout=5s",
        "  bash                defaults",
        "  socat-keepalive     keepalive=10s/1s/3",
    ):
        assert shown in lines, result.stdout
    # The bash client ends its loop when its read fails: the lab records its exit.
    assert cases["force-delete/bash"]["exit_status"] == 0
    for name in ("socat", "socat-user-timeout", "bash", "socat-keepalive"):
        assert cases[f"kill/{name}"]["verdict"] == "fast"  # the FIN came


@requires_netns
@pytest.mark.netns
def test_a_real_server_and_programs_that_fail_are_clear_case_errors(tmp_path: Path) -> None:
    result, cases = _lab(
        tmp_path,
        *("--fault", "graceful", "--server-cmd", "socat TCP-LISTEN:{port},fork,reuseaddr PIPE"),
        *("--client-cmd", f"socat={SOCAT}"),
        *("--client-cmd", "exits=exit 3"),
        *("--client-cmd", "refused=socat - TCP:{host}:1"),
    )
    assert result.returncode == 1  # a case could not run
    assert "Traceback" not in result.stderr
    served = cases["graceful/socat"]
    assert served["error"] is None
    assert (served["verdict"], served["measured_clock"]) == ("fast", "fault")
    assert "exited with status 3" in cases["graceful/exits"]["error"]
    refused = cases["graceful/refused"]["error"]
    assert "exited with status 1" in refused
    assert "before it talked to the service" in refused
    assert "could not run graceful/exits" in result.stdout


@requires_netns
@pytest.mark.netns
def test_a_program_that_shows_nothing_fails_fast_and_one_on_its_way_gets_longer() -> None:
    """``sleep`` holds no socket and uses no CPU: it connects to nothing, and fails after
    ``lifeless_s``; a server listening on another port, and a client connected that sends
    nothing, are visibly doing something: they get ``ready_s``."""
    from tcpecho.experiment import Case, Fault, Profile
    from tcpecho.model import Activity

    timeouts = StartupTimeouts(ready_s=4.0, lifeless_s=1.0)

    def client_of(topology: Topology, command: str) -> ProgramClient:
        case = Case(Fault.KILL, Profile("program", command=command), Activity.ACTIVE)
        return ProgramClient(topology, command, Result(case))

    async def failing(wait: Awaitable[None], message: str) -> float:
        started = time.monotonic()
        with pytest.raises(ProgramError, match=message):
            await wait
        return time.monotonic() - started

    async def run(topology: Topology) -> None:
        sleeper = client_of(topology, "sleep 30")
        await sleeper.start()
        try:
            waited = await failing(
                sleeper.wait_until_talking(timeouts),
                r"^'sleep 30' connects to nothing: no socket in its namespace and no CPU "
                r"time used for 1s \(--program-timeout to wait longer\)$",
            )
            assert 1.0 <= waited < 3.0
        finally:
            await sleeper.stop()
        elsewhere = await Program.start(
            topology, topology.server_ns, "socat TCP-LISTEN:9000,fork,reuseaddr PIPE", "", 0
        )
        try:
            waited = await failing(
                wait_until_listening(elsewhere, topology, SERVICE_PORT, timeouts),
                r"^the server 'socat .*' listened on no port 8000 within 4s "
                r"\(it listens on 9000\)$",
            )
            assert 4.0 <= waited < 6.0
        finally:
            await elsewhere.stop()
        server = await Program.start(
            topology, topology.server_ns, SOCAT_ECHO_SERVER, SERVER_IP, SERVICE_PORT
        )
        silent = client_of(topology, "sleep 30 | socat - TCP:{host}:{port}")
        try:
            await wait_until_listening(server, topology, SERVICE_PORT, timeouts)
            await silent.start()
            waited = await failing(
                silent.wait_until_talking(timeouts),
                r"had no connection to the service with data both ways within 4s$",
            )
            assert 4.0 <= waited < 6.0
        finally:
            await silent.stop()
            await server.stop()

    # Built outside the event loop, as the lab does: pyroute2 runs a loop of its own.
    with Topology(f"tcpecho-test-programs-{os.getpid()}") as topology:
        asyncio.run(run(topology))


@requires_netns
@pytest.mark.netns
def test_sleep_as_a_client_or_a_server_fails_fast_with_what_it_did_not_do(
    tmp_path: Path,
) -> None:
    """The real lab: 60 s were spent on each before; --program-timeout sets one limit."""
    runs = {
        "client": ["--fault", "kill", "--client-cmd", "sleeper=sleep 100"],
        "server": ["--fault", "kill", "--profile", "default", "--server-cmd", "sleep 100"],
        "elsewhere": [
            *("--fault", "kill", "--profile", "default", "--program-timeout", "3s"),
            *("--server-cmd", "socat TCP-LISTEN:9000,fork,reuseaddr PIPE"),
        ],
    }
    started = time.monotonic()
    labs = {
        name: subprocess.Popen(
            [tcpecho_executable(), "lab", "--json", str(tmp_path / f"{name}.json"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in runs.items()
    }
    outputs, took = {}, {}
    for name, lab in labs.items():
        outputs[name] = lab.communicate(timeout=120)
        took[name] = time.monotonic() - started
        assert lab.returncode == 1, outputs[name]  # a case could not run
        assert "Traceback" not in outputs[name][1]
        assert leftover_namespaces(f"{RUN_PREFIX}{lab.pid}-") == []
    errors = {
        name: [
            case["error"] for case in json.loads((tmp_path / f"{name}.json").read_text())["cases"]
        ]
        for name in runs
    }
    lifeless = "no socket in its namespace and no CPU time used for 10s"
    assert errors["client"] == [
        f"warming up: 'sleep 100' connects to nothing: {lifeless} "
        "(--program-timeout to wait longer)"
    ]
    assert f"could not run kill/sleeper: {errors['client'][0]}" in outputs["client"][0]
    assert outputs["client"][1].startswith("tcpecho lab: 1 case in parallel")
    assert errors["server"] == 2 * [
        f"starting: the server 'sleep 100' listens on nothing: {lifeless} "
        "(--program-timeout to wait longer)"
    ]
    assert errors["elsewhere"] == 2 * [
        "starting: the server 'socat TCP-LISTEN:9000,fork,reuseaddr PIPE' listened on no port "
        "8000 within 3s (it listens on 9000)"
    ]
    # Each after its limit, far from the minute it was.
    assert 10.0 <= took["client"] < 25.0, took
    assert 10.0 <= took["server"] < 25.0, took
    assert 3.0 <= took["elsewhere"] < 15.0, took


def test_a_dual_stack_socket_reaches_the_service_through_a_v4_mapped_address() -> None:
    assert unmapped("[::ffff:10.96.0.10]:8000") == "10.96.0.10:8000"
    assert unmapped("10.96.0.10:8000") == "10.96.0.10:8000"
    assert unmapped("[::1]:8000") == "[::1]:8000"  # a real IPv6 peer stays itself


# An idle client whose setup takes two exchanges a second apart: the fault must wait for the
# second, or it would find the client busy (its second line unanswered).
SLOW_SETUP_KEEPALIVE = (
    "(echo hello; sleep 1; echo again; sleep 3600) | socat - "
    "TCP:{host}:{port},keepalive,keepidle=10,keepintvl=1,keepcnt=3"
)
# A client with a deadline of its own (read -t 3), which no socket option shows.
BASH_READ_TIMEOUT = (
    'bash -c "exec 3<>/dev/tcp/$TCPECHO_LAB_HOST/$TCPECHO_LAB_PORT; '
    'while echo ping >&3 && read -t 3 reply <&3; do sleep 1; done"'
)
SOCAT_ECHO_SERVER = "socat TCP-LISTEN:{port},fork,reuseaddr PIPE"


@requires_netns
@pytest.mark.netns
def test_a_recipe_brings_its_server_its_quiet_period_deadlines_and_watch_limit() -> None:
    """What the cookbook's recipes need from the lab, through its Python interface."""
    from tcpecho.experiment import Fault, Profile
    from tcpecho.lab.runner import KernelBudget, plan, run_cases
    from tcpecho.model import Activity, Mechanism
    from tcpecho.settings import Deadlines

    idle = (Activity.IDLE,)
    profiles = [
        Profile("quiet", activities=idle, command=SLOW_SETUP_KEEPALIVE, quiet_s=2.0),
        Profile(
            "deadline",
            activities=(Activity.ACTIVE,),
            command=BASH_READ_TIMEOUT,
            deadlines=Deadlines(read_timeout_s=3.0),
            server_command=SOCAT_ECHO_SERVER,
        ),
        Profile(
            "watched",
            activities=idle,
            command="(echo hello; sleep 3600) | socat - TCP:{host}:{port}",
            quiet_s=0.5,
            watch_s=3.0,
        ),
    ]
    cases = plan([Fault.FORCE_DELETE], profiles)
    results = {
        result.case.profile.name: result
        for result in asyncio.run(
            run_cases(cases, KernelBudget(quick=True), lambda lines: None, 60.0)
        )
    }
    quiet, deadline, watched = results["quiet"], results["deadline"], results["watched"]
    for result in results.values():
        assert result.error is None, result.error
    assert quiet.observed_activity is Activity.IDLE  # the fault waited for the second line
    assert quiet.prediction is not None
    assert quiet.prediction.mechanism is Mechanism.KEEPALIVE
    assert quiet.matches, (quiet.prediction, quiet.measured_s)
    assert deadline.prediction is not None
    assert deadline.prediction.mechanism is Mechanism.READ_TIMEOUT
    assert deadline.matches, (deadline.prediction, deadline.measured_s)
    assert deadline.server_events == []  # socat served, not tcpecho's server
    assert watched.measured_s is None
    assert watched.observed_s is not None
    assert 3.0 <= watched.observed_s < 5.0  # not the 15 s a "never" case is watched


def _info(unacked: int, total_retrans: int, last_data_sent_ms: int) -> TcpInfo:
    return TcpInfo(
        state="ESTABLISHED", retransmits=0, probes=0, backoff=0, rto_ms=204.0,
        unacked=unacked, lost=0, total_retrans=total_retrans, rtt_ms=0.1, rttvar_ms=0.05,
        last_data_sent_ms=last_data_sent_ms, last_data_recv_ms=0, last_ack_recv_ms=0,
    )  # fmt: skip


def test_the_send_clock_is_the_send_not_a_retransmission() -> None:
    """The lab's active clock, from successive looks at a program's socket (the case that
    ran 0.25 s short in a fresh root: the first look with the request in flight came after
    its tail-loss probe)."""
    # Sent between two looks, seen before any retransmission: last_data_sent dates it.
    clock = SendClock()
    clock.look(10.00, _info(unacked=0, total_retrans=0, last_data_sent_ms=900))
    clock.look(10.05, _info(unacked=1, total_retrans=0, last_data_sent_ms=30))
    assert clock.sent_at == pytest.approx(10.02)
    # Seen only after the probe went (210 ms after the send): the send came after the last
    # look with nothing in flight, not 10 ms before this one.
    late = SendClock()
    late.look(10.00, _info(unacked=0, total_retrans=0, last_data_sent_ms=900))
    late.look(10.26, _info(unacked=1, total_retrans=1, last_data_sent_ms=10))
    assert late.sent_at == pytest.approx(10.00)
    late.look(10.80, _info(unacked=1, total_retrans=2, last_data_sent_ms=5))
    assert late.sent_at == pytest.approx(10.00), "later looks do not move the clock"
    # In flight at the fault, already retransmitted: nothing better than last_data_sent.
    inflight = SendClock()
    inflight.look(10.00, _info(unacked=1, total_retrans=1, last_data_sent_ms=10))
    assert inflight.sent_at == pytest.approx(9.99)


def _connection(bytes_acked: int, bytes_received: int, last_ack_recv_ms: int) -> Connection:
    info = _info(unacked=0, total_retrans=0, last_data_sent_ms=0)
    info = dataclasses.replace(info, last_ack_recv_ms=last_ack_recv_ms)
    return Connection(
        "10.0.0.2:40000", "10.96.0.10:8000", "ESTABLISHED", 7, "keepalive", 0, 0, 0, info,
        bytes_acked, bytes_received,
    )  # fmt: skip


def test_an_idle_program_survives_the_window_by_an_answered_probe_or_data() -> None:
    """idle-expiry: a program waiting on a read sends only keepalive probes; the peer's ACK
    of one after the window shows the path still carries it, as data would."""
    after = DataAfter(window_end=115.0)
    assert not after.look(110.0, _connection(6, 5, last_ack_recv_ms=0))  # the probe at 10 s
    # After the window: the last ACK is still the one before it, nothing new arrived.
    assert not after.look(116.0, _connection(6, 5, last_ack_recv_ms=6000))
    # The next probe's ACK, 0.4 s before this look: after the window.
    assert after.look(120.8, _connection(6, 5, last_ack_recv_ms=400))
    # Data after the window shows it too (a ping's answer, an echo).
    data = DataAfter(window_end=115.0)
    data.look(114.0, _connection(6, 5, last_ack_recv_ms=9000))
    assert data.look(116.0, _connection(6, 9, last_ack_recv_ms=9000))
    # Nothing seen before the window's end: nothing to compare with.
    assert not DataAfter(window_end=115.0).look(121.0, _connection(6, 9, last_ack_recv_ms=0))


def test_a_survival_nothing_shows_gets_a_window_to_show_in() -> None:
    """The model's survival with no request to show it becomes a range the lab can see: from
    the window's end to a second window on (whatever kept the flow came within one)."""
    unseen = Prediction(math.inf, math.inf, "last-data", Mechanism.NOTHING, (), Outcome.SURVIVES)
    shown = shown_survival(unseen, 15.0)
    assert (shown.low_s, shown.clock, shown.survives) == (15.0, "last-data", True)
    assert 2 * 15.0 * 1.06 <= shown.high_s <= 2 * 15.0 * 1.06 + 0.5
    assert shown_survival(unseen, None) is unseen  # a fault with no window
    never = Prediction(math.inf, math.inf, "last-data", Mechanism.NOTHING, ())
    assert shown_survival(never, 15.0) is never  # nothing survives: nothing to show
    echo = Prediction(15.0, 16.3, "last-data", Mechanism.NOTHING, (), Outcome.SURVIVES)
    assert shown_survival(echo, 15.0) is echo  # the model gave its own range


def test_a_program_is_busy_by_a_send_at_the_fault_not_by_a_later_ping() -> None:
    before = _connection(6, 5, last_ack_recv_ms=0)
    # A request a second: its data is ACKed within the first look or two after the fault.
    busy = BusyAtFault(fault_at=100.0, before=before)
    assert busy.look(100.5, None, before) is Activity.IDLE
    assert busy.look(101.2, None, _connection(11, 10, 0)) is Activity.ACTIVE
    assert busy.look(130.0, None, _connection(11, 10, 0)) is Activity.ACTIVE  # it stays so
    # gRPC's ping, 10 s after the last read: data sent and ACKed, but no request in flight.
    pinging = BusyAtFault(fault_at=100.0, before=before)
    assert pinging.look(100.5, None, before) is Activity.IDLE
    assert pinging.look(108.5, None, _connection(23, 22, 0)) is Activity.IDLE
    # A send waiting for its ACK is a busy program's whenever it shows (a ping's unanswered
    # under force-delete: the clock of the send).
    assert pinging.look(109.0, 108.5, _connection(23, 22, 0)) is Activity.ACTIVE
