"""``tcpecho lab`` end to end: the quick matrix against the model, and cleanup on every exit."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcpecho.lab.runner import RUN_PREFIX
from tcpecho.lab.topology import leftover_namespaces
from tcpecho.model import Mechanism, Prediction
from tests.conftest import requires_netns
from tests.support import abandoned_namespaces, read_table

pytestmark = [requires_netns, pytest.mark.netns]

LAB = [sys.executable, "-m", "tcpecho", "lab"]
OLD_FAULTS = ("force-delete", "node-loss", "unreachable", "kill", "graceful")


def _host_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout


@pytest.fixture
def clean_host() -> Iterator[None]:
    """The lab must leave the host as it found it: no namespaces, no rules, no processes.

    (Another lab run may be under way on the machine: only what appeared is checked.)"""
    rules_before, namespaces_before = _host_ruleset(), set(leftover_namespaces(RUN_PREFIX))
    yield
    # A dead run's namespaces only: another lab run may be going on beside this one.
    assert set(abandoned_namespaces(RUN_PREFIX)) <= namespaces_before
    assert _host_ruleset() == rules_before


def _processes_of(run_pid: int) -> list[int]:
    """tcpecho processes started by the lab run ``run_pid`` (they run in its namespaces)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
            namespace = os.readlink(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if b"tcpecho" in b" ".join(cmdline) and int(entry) != run_pid:
            for name in leftover_namespaces(f"{RUN_PREFIX}{run_pid}-"):
                if os.stat(f"/run/netns/{name}").st_ino == int(namespace.split("[")[1][:-1]):
                    found.append(int(entry))
    return found


def test_quick_matrix_matches_the_kernel_model(
    tmp_path: Path, clean_host: None, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "lab.json"
    started = time.monotonic()
    result = subprocess.run(
        [
            *LAB,
            "--quick",
            *(arg for fault in OLD_FAULTS for arg in ("--fault", fault)),
            *("--profile", "default", "--profile", "user-timeout", "--profile", "keepalive"),
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    with capsys.disabled():  # the table goes into the CI log, for the record
        print(f"\n{result.stdout}\nlab wall time, from start to exit: {wall:.1f} s")
    cases = {case["name"]: case for case in json.loads(report.read_text())["cases"]}
    assert len(cases) == 5 * 6  # five faults x three profiles x (active, idle)
    for name, case in cases.items():
        assert case["error"] is None, (name, case["error"])
        # The measurement lies in the range the model predicted, with a predicted errno.
        assert case["matches_model"], (name, case["prediction"], case["measured_s"], case["errno"])
    # What the comparison is for:
    assert cases["force-delete/default/active"]["verdict"] == "hang"
    assert cases["force-delete/default/active"]["quick"] is True
    assert cases["force-delete/default/active"]["retransmissions"] >= 15
    assert cases["force-delete/default/idle"]["measured_s"] is None
    assert cases["force-delete/user-timeout/active"]["verdict"] == "detected"
    assert cases["force-delete/user-timeout/idle"]["measured_s"] is None  # no data, no timer
    assert cases["force-delete/keepalive/active"]["verdict"] == "hang"  # probes wait for acks
    assert cases["force-delete/keepalive/idle"]["verdict"] == "detected"
    assert cases["unreachable/default/active"]["errno"] == "ENETUNREACH"
    for fault in ("kill", "graceful"):
        for mode in ("active", "idle"):
            assert cases[f"{fault}/default/{mode}"]["verdict"] == "fast"
    # As in the original reproduction: the pod is gone, its flow is still ESTABLISHED.
    conntrack = cases["force-delete/default/active"]["conntrack"]
    assert any("ESTABLISHED" in line and "dst=10.96.0.10" in line for line in conntrack)
    assert "outside the predicted range" not in result.stdout
    # One prediction wherever it is shown: explain, in a namespace as fresh as the lab's
    # client pods, expects what the lab expected.
    for name, flags in (
        ("force-delete/user-timeout/active", ["--user-timeout", "5s"]),
        (
            "force-delete/keepalive/idle",
            ["--keepalive-idle", "10s", "--keepalive-interval", "1s", "--keepalive-count", "3"],
        ),
    ):
        _assert_explain_expects(cases[name], flags)


def _assert_explain_expects(case: dict[str, Any], flags: list[str]) -> None:
    shown = subprocess.run(
        ["unshare", "--net", *LAB[:-1], "explain", "--json", *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    scenario = "busy" if case["mode"] == "active" else "idle"
    explained = next(s for s in json.loads(shown.stdout)["scenarios"] if s["name"] == scenario)
    prediction = case["prediction"]
    assert (
        round(prediction["low_s"], 3),
        round(prediction["high_s"], 3),
        prediction["mechanism"],
    ) == (
        explained["detected_after_s"]["low"],
        explained["detected_after_s"]["high"],
        explained["mechanism"],
    ), (case["name"], explained)


IDLE_SOCAT = "idle-socat=(echo hello; sleep 3600) | socat - TCP:{host}:{port}"
NEVER_IDLE = "expected never: nothing notices an idle connection without keepalive; watched"


def _described(prediction: dict[str, Any]) -> str:
    """The JSON's prediction as the table shows it."""
    never = prediction["never"]
    return Prediction(
        math.inf if never else prediction["low_s"],
        math.inf if never else prediction["high_s"],
        prediction["clock"],
        Mechanism(prediction["mechanism"]),
        tuple(prediction["errnos"]),
    ).describe()


def test_progress_lines_count_on_the_clock_of_the_range_they_expect(
    tmp_path: Path, clean_host: None
) -> None:
    """An idle case counts from the last data, as its range does, a busy one from the
    unanswered request; the range is the one the table and the JSON hold (a program's
    too, which is started as busy and found idle); a case nothing ends says never."""
    report = tmp_path / "lab.json"
    result = subprocess.run(
        [
            *LAB,
            *("--quick", "--fault", "force-delete", "--json", str(report)),
            *("--profile", "keepalive", "--profile", "default", "--client-cmd", IDLE_SOCAT),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cases = {case["name"]: case for case in json.loads(report.read_text())["cases"]}
    waiting: dict[str, list[str]] = {name: [] for name in cases}
    for line in result.stderr.splitlines():
        name, _, rest = line.strip().partition(" ")
        if name in waiting and rest.strip().startswith("waiting"):
            waiting[name].append(rest.strip())
    for name, lines in waiting.items():
        assert lines, (name, result.stderr[-3000:])  # each case waits for 11 s and more
    keepalive_idle = cases["force-delete/keepalive/idle"]
    assert keepalive_idle["mode"] == "idle"
    expected = _described(keepalive_idle["prediction"])
    for line in waiting["force-delete/keepalive/idle"]:
        shown = re.fullmatch(
            rf"waiting +([\d.]+) s since the last data \(expected {re.escape(expected)}\)", line
        )
        assert shown, line
        # Still waiting: less time since the last data than its measured detection.
        assert float(shown[1]) <= keepalive_idle["measured_s"] + 1.0, (line, keepalive_idle)
    expected = _described(cases["force-delete/keepalive/active"]["prediction"])
    for line in waiting["force-delete/keepalive/active"]:
        assert re.fullmatch(
            rf"waiting +[\d.]+ s (since the unanswered request|after the fault, for the next "
            rf"request) \(expected {re.escape(expected)}( from it)?\)",
            line,
        ), line
    program = cases["force-delete/idle-socat"]
    assert (program["mode"], program["prediction"]["never"]) == ("idle", True)
    for name in ("force-delete/default/idle", "force-delete/idle-socat"):
        assert all(NEVER_IDLE in line for line in waiting[name]), waiting[name]
    assert all("watched up to 15.0 s" in line for line in waiting["force-delete/idle-socat"])
    # The busy expectation (the whole retransmission budget) is never shown as the idle
    # program's, which is what it was before it was seen idle.
    assert "14.6-16.3 s" not in "\n".join(waiting["force-delete/idle-socat"])


def _start_and_wait_for_faults(argv: list[str]) -> subprocess.Popen[str]:
    lab = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert lab.stderr is not None
    deadline = time.monotonic() + 90
    for line in lab.stderr:  # progress lines: wait until the cases are under way
        if " waiting " in line or time.monotonic() > deadline:
            break
    assert leftover_namespaces(f"{RUN_PREFIX}{lab.pid}-"), "the lab built no namespaces"
    return lab


def test_sigint_reports_what_finished_and_marks_the_rest_interrupted(
    tmp_path: Path, clean_host: None
) -> None:
    """Ctrl-C once some cases have finished: their measurements are in the table and the
    JSON, the others are marked interrupted, everything is removed, and the exit is 130."""
    report = tmp_path / "lab.json"
    argv = [*LAB, "--quick", "--fault", "kill", "--fault", "node-loss", "--profile", "default"]
    lab = subprocess.Popen(
        [*argv, "--json", str(report)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert lab.stderr is not None
    progress = []
    for line in lab.stderr:  # the kill cases end within a second of their fault
        progress.append(line)
        if re.match(r"-- [12] cases? running", line):
            break
    else:
        raise AssertionError("".join(progress))
    processes = _processes_of(lab.pid)
    assert processes, "no server or client running in the lab's namespaces"
    lab.send_signal(signal.SIGINT)
    stdout, stderr = lab.communicate(timeout=60)
    assert lab.returncode == 128 + signal.SIGINT, stdout + stderr
    assert "Traceback" not in stderr
    assert "stopped; every namespace, rule and process of this run has been removed" in stderr
    rows = {f"{row['fault']}/{row['profile']}/{row['mode']}": row for row in read_table(stdout)}
    cases = {case["name"]: case for case in json.loads(report.read_text())["cases"]}
    assert (
        set(rows)
        == set(cases)
        == {
            f"{fault}/default/{mode}"
            for fault in ("kill", "node-loss")
            for mode in ("active", "idle")
        }
    )
    for mode in ("active", "idle"):
        finished, unfinished = cases[f"kill/default/{mode}"], cases[f"node-loss/default/{mode}"]
        assert (finished["verdict"], finished["matches_model"]) == ("fast", True), finished
        assert finished["measured_s"] is not None
        assert finished["measured_s"] < 1.0
        assert finished["errno"] in ("EOF", "ECONNRESET")
        assert rows[f"kill/default/{mode}"]["verdict"] == "fast"
        assert unfinished["verdict"] == "interrupted", unfinished
        assert unfinished["measured_s"] is None
        assert unfinished["prediction"] is not None  # what it was waiting for
        assert rows[f"node-loss/default/{mode}"]["verdict"] == "interrupted"
        assert rows[f"node-loss/default/{mode}"]["measured"].startswith("interrupted ")
    assert json.loads(report.read_text())["stopped_by"] == "SIGINT"
    assert "model: every measurement within its predicted range; 2 cases interrupted" in stdout
    assert "SIGINT stopped the run before 2 cases of 4 had finished" in stdout
    assert leftover_namespaces(f"{RUN_PREFIX}{lab.pid}-") == []
    for pid in processes:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} survived"


def test_after_sigkill_cleanup_removes_what_the_run_left(clean_host: None) -> None:
    lab = _start_and_wait_for_faults([*LAB, "--fault", "node-loss", "--profile", "default"])
    processes = _processes_of(lab.pid)
    assert processes, "no server or client running in the lab's namespaces"
    lab.kill()
    lab.communicate(timeout=30)
    left = leftover_namespaces(f"{RUN_PREFIX}{lab.pid}-")
    assert left, "SIGKILL leaves the namespaces behind: that is what --cleanup is for"
    result = subprocess.run([*LAB, "--cleanup"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert f"removed {len(left)} namespaces left by earlier runs" in result.stdout
    assert leftover_namespaces(f"{RUN_PREFIX}{lab.pid}-") == []
    time.sleep(0.2)  # killed processes may take a moment to be reaped by init
    for pid in processes:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), f"process {pid} survived"


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--fault", "meteor"], "--fault"),
        (["--profile", "fast"], "--profile"),
        (["--rto-max", "500ms"], "below the minimum of 1s"),
        (["--rto-max", "5"], "not a duration"),
        (["--tcp-retries2", "0"], "--tcp-retries2"),
        (["--program-timeout", "30"], "not a duration"),
        (["--program-timeout", "500ms"], "'--program-timeout': 500ms is below the minimum of 1s"),
        (["--program-timeout", "2h"], "2h is above the maximum of 1h"),
        (["--client-args", "--interval 5s"], "must not set --interval"),
        (["--client-args", "--user-timeout 30"], "not a duration"),
        (["--client-args", "--no-such-flag"], "No such option"),
        (["--json", "/nonexistent/lab.json"], "the directory /nonexistent does not exist"),
        (["--plot", "/nonexistent/lab.png"], "the directory /nonexistent does not exist"),
    ],
)
def test_bad_lab_input_is_a_usage_error(args: list[str], expected: str, clean_host: None) -> None:
    result = subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


def test_missing_requirements_are_named_with_the_way_to_get_them(tmp_path: Path) -> None:
    # Root without the capabilities that namespaces take, as in a container: the process
    # keeps uid 0, so it can still read the checkout wherever it lives.
    without_caps = ["setpriv", "--bounding-set=-net_admin,-sys_admin", "--inh-caps=-all"]
    result = subprocess.run([*without_caps, *LAB, "--quick"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "Error: tcpecho lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network "
        "namespaces): run it with sudo"
    )
    only_net_admin = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-all"]
    result = subprocess.run([*only_net_admin, *LAB, "--quick"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "needs root (CAP_SYS_ADMIN for network namespaces)" in result.stderr
    only_ip = tmp_path / "bin"
    only_ip.mkdir()
    (only_ip / "ip").symlink_to("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip")
    result = subprocess.run(
        [*LAB, "--quick"], capture_output=True, text=True, env={**os.environ, "PATH": str(only_ip)}
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "Error: tcpecho lab needs 'nft' on PATH: apt-get install -y nftables"
    )
    without_matplotlib = (
        "import sys; sys.modules['matplotlib'] = None; from tcpecho.cli import main; "
        f"main(['lab', '--plot', '{tmp_path / 'x.png'}'], prog_name='tcpecho')"
    )
    result = subprocess.run(
        [sys.executable, "-c", without_matplotlib], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "--plot needs matplotlib: pip install 'tcpecho[plot]'" in result.stderr
