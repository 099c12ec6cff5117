"""``tcpecho explain``: the scenarios and traps it names, its output, and its ranges against
what the lab measures for the same options and faults."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tcpecho.explain import PathContext, Trap, explain, socket_traps
from tcpecho.model import KernelSettings, Mechanism
from tcpecho.model import Outcome as PredictedOutcome
from tcpecho.model.paths import PATHS
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions
from tests.conftest import requires_netns
from tests.support import tcpecho_executable

DEFAULTS = KernelSettings()
KEEPALIVE = TcpOptions(keepalive_idle_s=10, keepalive_interval_s=5, keepalive_count=3)


def _codes(tcp: TcpOptions, deadlines: Deadlines, **kernel: Any) -> set[str]:
    return {trap.code for trap in explain(KernelSettings(**kernel), tcp, deadlines).traps}


PROTECTED = replace(KEEPALIVE, user_timeout_ms=20_000)  # bounded busy and idle
NONE = Deadlines()
TRAPS = [
    (TcpOptions(), NONE, {}, {"no-bound", "slow-connect"}),
    (
        TcpOptions(keepalive=True),
        NONE,
        {},
        {"keepalive-without-user-timeout", "keepalive-default-idle", "slow-connect"},
    ),
    # The client's own read timeout ends a busy request: keepalive's blind spot hangs nothing.
    (KEEPALIVE, Deadlines(read_timeout_s=5), {}, {"slow-connect"}),
    (TcpOptions(user_timeout_ms=30_000), NONE, {}, {"user-timeout-without-keepalive"}),
    (replace(PROTECTED, user_timeout_ms=30_000), NONE, {}, {"user-timeout-exceeds-keepalive"}),
    (PROTECTED, NONE, {}, set()),
    (replace(PROTECTED, user_timeout_ms=2000), NONE, {}, {"user-timeout-too-short"}),
    (PROTECTED, Deadlines(read_timeout_s=0.5), {}, {"read-timeout-too-short"}),
    (
        TcpOptions(recverr=True),
        NONE,
        {},
        {"no-bound", "recverr-without-user-timeout", "slow-connect"},
    ),
    (TcpOptions(user_timeout_ms=20_000, keepalive=True), NONE, {}, {"keepalive-default-idle"}),
    (PROTECTED, NONE, {"tcp_retries2": 5}, {"tcp-retries2-sysctl"}),
]


@pytest.mark.parametrize(("tcp", "deadlines", "kernel", "expected"), TRAPS)
def test_each_trap_is_named_where_it_is(
    tcp: TcpOptions, deadlines: Deadlines, kernel: dict[str, Any], expected: set[str]
) -> None:
    assert _codes(tcp, deadlines, **kernel) == expected


def test_every_trap_comes_with_its_fix() -> None:
    explanation = explain(
        DEFAULTS, TcpOptions(user_timeout_ms=1000, keepalive=True, recverr=True), Deadlines()
    )
    assert explanation.traps
    for trap in explanation.traps:
        assert trap.message
        assert trap.fix


def test_the_scenarios_come_from_the_model() -> None:
    tcp = replace(KEEPALIVE, user_timeout_ms=30_000)
    explanation = explain(DEFAULTS, tcp, Deadlines())
    names = [outcome.scenario.name for outcome in explanation.outcomes]
    assert names == ["busy", "idle", "unreachable", "connect", "stalled-reader", "stale-conntrack"]
    assert explanation.outcome("busy").prediction.contains(30.43)
    assert explanation.outcome("idle").prediction.contains(30.2)  # first probe past 30 s
    assert explanation.outcome("connect").prediction.contains(30.01)
    assert explanation.outcome("stalled-reader").prediction.never
    assert "TCP_USER_TIMEOUT" in explanation.outcome("busy").reasoning


def _trap(code: str, tcp: TcpOptions, deadlines: Deadlines = NONE) -> Trap:
    return next(trap for trap in explain(DEFAULTS, tcp, deadlines).traps if trap.code == code)


def _detected(tcp: TcpOptions, scenario: str) -> str:
    return explain(DEFAULTS, tcp, NONE).outcome(scenario).prediction.describe()


def test_a_user_timeout_past_keepalive_says_why_in_the_users_own_numbers() -> None:
    """Issue 21's options: "make --user-timeout at most 19s" gave a number without its rule.
    With keepalive on, the kernel ends an idle connection's probing at the first probe at or
    past TCP_USER_TIMEOUT, whatever the count: 10 + 4 x 3 = 22 s, not 10 + 3 x 3 = 19 s."""
    args = ("--user-timeout", "20s", "--keepalive-idle", "10s")
    result = _explain("--json", *args, "--keepalive-interval", "3s", "--keepalive-count", "3")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    idle = next(s for s in document["scenarios"] if s["name"] == "idle")
    assert idle["detected_after_s"]["low"] == 22  # the model's, which the lab checks
    (trap,) = document["warnings"]
    assert trap["code"] == "user-timeout-exceeds-keepalive"
    message, fix = trap["message"], trap["fix"]
    assert "first probe at or past TCP_USER_TIMEOUT, not after the probe count" in message
    assert "with --user-timeout 20s it probes on to 22 s after the last data" in message
    assert "3 s later than the 19 s" in message
    assert "--keepalive-idle 10s + --keepalive-count 3 x --keepalive-interval 3s" in message
    assert fix.startswith("make --user-timeout at most 19s, so probing ends by then")
    assert "noticed within 19 s" in fix
    assert "accept the idle detection at 22 s" in fix


def test_keepalive_values_from_the_namespace_are_named_by_their_sysctls() -> None:
    tcp = TcpOptions(user_timeout_ms=1_000_000, keepalive_idle_s=10)
    message = _trap("user-timeout-exceeds-keepalive", tcp).message
    assert "--keepalive-idle 10s + tcp_keepalive_probes=9 x tcp_keepalive_intvl=75" in message
    assert "the 685 s" in message  # 10 + 9 x 75
    assert "probes on to 1060 s" in message  # 10 + 14 x 75: the first probe at or past 1000 s
    assert "at most 685s" in _trap("user-timeout-exceeds-keepalive", tcp).fix


def test_a_suggested_user_timeout_says_what_it_gives_and_why_that_much() -> None:
    fix = _trap("no-bound", TcpOptions()).fix
    assert fix.startswith("add --user-timeout, for example 30s: ")
    with_30s = _detected(TcpOptions(user_timeout_ms=30_000), "busy")
    assert f"fails after {with_30s} instead of {_detected(TcpOptions(), 'busy')}" in fix
    assert "30 s stays well above the 6.2 s a lossy but healthy path takes" in fix
    assert "keepalive for idle connections, which the user timeout does not watch" in fix
    # With keepalive's probing over in 25 s, 30 s would stretch it: the example is 25 s.
    fix = _trap("keepalive-without-user-timeout", KEEPALIVE).fix
    assert fix.startswith("add --user-timeout, for example 25s: ")
    assert f"fails after {_detected(replace(KEEPALIVE, user_timeout_ms=25_000), 'busy')}" in fix
    assert "--keepalive-idle 10s + --keepalive-count 3 x --keepalive-interval 5s = 25 s" in fix
    assert _trap("recverr-without-user-timeout", TcpOptions(recverr=True)).fix.startswith(
        "add --user-timeout, for example 30s: "
    )


def test_the_other_traps_give_their_reasons_with_numbers() -> None:
    too_short = _trap("user-timeout-too-short", TcpOptions(user_timeout_ms=3000))
    assert "TCP_USER_TIMEOUT 3s ends the connection before" in too_short.message
    assert "0.2+0.4+0.8+1.6+3.2 = 6.2 s" in too_short.message
    assert too_short.fix.startswith("use at least ~10s: above those 6.2 s")
    slow = _trap("slow-connect", TcpOptions()).fix
    assert "--connect-timeout, for example 5s: " in slow
    assert "a lost SYN is sent again after 1 s" in slow
    assert (
        f"--syn-retries 2 gives up after {_detected(TcpOptions(syn_retries=2), 'connect')}" in slow
    )
    default_idle = _trap("keepalive-default-idle", TcpOptions(keepalive=True)).message
    assert "tcp_keepalive_time (7200 s)" in default_idle
    assert f"noticed only {_detected(TcpOptions(keepalive=True), 'idle')} after" in default_idle
    # The example keepalive reaches the user timeout: 10 + 4 x 5 = 30 s, and says so.
    for tcp in (
        TcpOptions(user_timeout_ms=30_000),
        TcpOptions(user_timeout_ms=30_000, keepalive=False),
    ):
        without = _trap("user-timeout-without-keepalive", tcp).fix
        example = "--keepalive-idle 10s --keepalive-interval 5s --keepalive-count 4"
        assert without.startswith(f"add keepalive, for example {example}: ")
        assert "a dead idle peer is then noticed 30 s after the last data" in without
        assert "(here 30 s) at least the user timeout (30s)" in without


# A value a fix suggests, written as a flag takes it (30s, 500ms), and a time it gives (30.4 s).
SUGGESTED_VALUE = re.compile(r"\b[0-9]+(ms|s|m|h)\b")
A_TIME = re.compile(r"[0-9] s\b")


@pytest.mark.parametrize(("tcp", "deadlines", "kernel", "expected"), TRAPS)
def test_every_value_a_fix_suggests_says_what_it_gives(
    tcp: TcpOptions, deadlines: Deadlines, kernel: dict[str, Any], expected: set[str]
) -> None:
    """No bare number: a fix that names a value says, with a time, what it gives or why."""
    for trap in explain(KernelSettings(**kernel), tcp, deadlines).traps:
        if SUGGESTED_VALUE.search(trap.fix):
            assert A_TIME.search(trap.fix), trap


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tcpecho_executable(), "explain", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_command_prints_scenarios_and_warnings() -> None:
    result = _explain()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "options: none (the kernel's defaults)"
    assert "tcp_retries2=" in result.stdout
    busy = next(line for line in lines if line.startswith("busy "))
    assert "ETIMEDOUT" in busy
    assert "929-994 s" in busy  # ~924.6 s plus the first retransmission's lead
    assert "  no-bound: " in result.stdout
    assert "    fix: " in result.stdout
    assert all(len(line) <= 100 for line in lines)


# Option sets whose cells are wider than their headers: the client's own deadlines' error
# names (CONNECT_TIMEOUT, READ_TIMEOUT) and a range of seven-digit seconds.
TABLE_OPTIONS = [
    (),
    ("--connect-timeout", "5s"),
    ("--read-timeout", "500ms"),
    ("--connect-timeout", "5s", "--read-timeout", "2s", "--user-timeout", "20s"),
    ("--read-timeout", "1000h", "--connect-timeout", "5s"),
    ("--recverr", "--syn-retries", "2", "--keepalive-idle", "10s"),
]
DETECTED_AFTER = re.compile(r"never|< [0-9.]+ s|[0-9.]+-[0-9.]+ s")


@pytest.mark.parametrize("args", TABLE_OPTIONS, ids=lambda args: " ".join(args) or "defaults")
def test_every_cell_stands_apart_under_its_header(args: tuple[str, ...]) -> None:
    """Each column as wide as its widest cell: every cell starts where its header does, two
    spaces after the one before (``CONNECT_TIMEOUTconnecting`` ran together)."""
    table, document = _explain(*args), _explain("--json", *args)
    assert table.returncode == document.returncode == 0, table.stderr + document.stderr
    lines = table.stdout.splitlines()
    header = next(line for line in lines if line.startswith("scenario  "))
    starts = [header.index(name) for name in ("detected after", "error", "what happens")]
    for scenario in json.loads(document.stdout)["scenarios"]:
        row = next(line for line in lines if line.startswith(f"{scenario['name']} "))
        for start in starts:
            assert row[start - 2 : start] == "  ", (header, row)
            assert row[start] != " ", (header, row)
        name, detected, error, what = (
            row[begin:end].strip() for begin, end in zip([0, *starts], [*starts, None], strict=True)
        )
        assert name == scenario["name"]
        assert DETECTED_AFTER.fullmatch(detected), row
        assert (detected == "never") == (scenario["detected_after_s"] is None), row
        assert error == (scenario["errno"] or "-")
        assert what, row
        assert scenario["description"].startswith(what), row
    assert all(len(line) <= 100 for line in lines)


def test_json_has_settings_sysctls_scenarios_and_warnings() -> None:
    result = _explain("--json", "--user-timeout", "30s", "--keepalive-idle", "10s")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) >= {"settings", "sysctls", "scenarios", "warnings"}
    assert document["settings"]["flags"] == ["--user-timeout", "30s", "--keepalive-idle", "10s"]
    assert document["sysctls"]["net.ipv4.tcp_retries2"] == int(
        Path("/proc/sys/net/ipv4/tcp_retries2").read_text()
    )
    scenarios = {scenario["name"]: scenario for scenario in document["scenarios"]}
    busy = scenarios["busy"]
    assert busy["mechanism"] == "user_timeout"
    assert busy["errno"] == "ETIMEDOUT"
    assert 30.3 <= busy["detected_after_s"]["low"] <= 30.5
    assert scenarios["stalled-reader"]["detected_after_s"] is None
    assert set(scenarios["idle"]) >= {"name", "description", "detected_after_s", "mechanism"}
    codes = {warning["code"] for warning in document["warnings"]}
    assert "keepalive-default-idle" not in codes  # the idle time was given
    assert all(set(w) == {"code", "message", "fix"} for w in document["warnings"])


def test_bad_options_are_the_clients_usage_errors() -> None:
    result = _explain("--user-timeout", "30")
    assert result.returncode == 2
    assert "not a duration" in result.stderr
    assert "Traceback" not in result.stderr


# -- against the lab -------------------------------------------------------------------------

# Each profile with the lab cases that correspond to explain's scenarios.
LAB_PROFILES = (
    "--user-timeout 5s",
    "--keepalive-idle 10s --keepalive-interval 1s --keepalive-count 3",
    "--keepalive-idle 10s --keepalive-interval 1s --keepalive-count 3 --user-timeout 5s",
    "--recverr",
)
SCENARIO_OF = {
    ("force-delete", "active"): "busy",
    ("force-delete", "idle"): "idle",
    ("unreachable", "active"): "unreachable",
    ("unreachable", "idle"): "idle",
}


@pytest.fixture
def fresh_namespace() -> Iterator[str]:
    """A new network namespace: kernel defaults, as the lab's client pods have."""
    name = f"tcpecho-test-explain-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@requires_netns
@pytest.mark.netns
def test_explains_ranges_contain_what_the_lab_measures(
    tmp_path: Path, fresh_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "lab.json"
    lab = subprocess.run(
        [
            *(tcpecho_executable(), "lab", "--quick"),
            *("--fault", "force-delete", "--fault", "unreachable", "--json", str(report)),
            *(arg for profile in LAB_PROFILES for arg in ("--client-args", profile)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert lab.returncode == 0, lab.stderr[-3000:]
    compared = []
    for case in json.loads(report.read_text())["cases"]:
        if case["quick"]:
            continue  # its kernel budget was shortened: explain speaks of the real one
        profile = LAB_PROFILES[int(case["profile"].rsplit("-", 1)[1]) - 1]
        explained = subprocess.run(
            [
                *("ip", "netns", "exec", fresh_namespace),
                *(tcpecho_executable(), "explain", "--json", *profile.split()),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        scenarios = {s["name"]: s for s in json.loads(explained.stdout)["scenarios"]}
        scenario = scenarios[SCENARIO_OF[case["fault"], case["mode"]]]
        measured, expected = case["measured_s"], scenario["detected_after_s"]
        compared.append(f"{case['name']:58} {profile:80} {measured} in {expected}")
        if expected is None:
            assert measured is None, compared[-1]
        else:
            assert measured is not None, compared[-1]
            assert expected["low"] <= measured <= expected["high"], compared[-1]
        assert case["matches_model"], compared[-1]  # the errno too
    with capsys.disabled():  # how close: the figures go into the test log
        print("\n" + "\n".join(compared))
    assert len(compared) >= 10


# -- the path ----------------------------------------------------------------------------------

NLB = PathContext(350.0, preset="aws-nlb")


def _names(explanation: Any) -> list[str]:
    return [outcome.scenario.name for outcome in explanation.outcomes]


def test_the_path_adds_the_field_scenarios_it_describes() -> None:
    plain = explain(DEFAULTS, PROTECTED, NONE)
    assert _names(plain)[-1] == "stale-conntrack"  # any Service can leave one
    assert "idle-expiry" not in _names(plain)
    full = explain(DEFAULTS, PROTECTED, NONE, replace(NLB, outage_s=10.0, via_proxy=True))
    assert _names(full)[-4:] == ["idle-expiry", "partition", "sidecar", "stale-conntrack"]
    stale = full.outcome("stale-conntrack")
    assert stale.prediction == explain(DEFAULTS, PROTECTED, NONE).outcome("connect").prediction
    assert "a new socket" in stale.reasoning


def test_keepalive_below_the_paths_idle_timeout_keeps_the_flow() -> None:
    kept = explain(DEFAULTS, PROTECTED, NONE, NLB).outcome("idle-expiry")
    assert kept.prediction.survives
    assert "comes before aws-nlb's idle timeout (5m50s)" in kept.reasoning
    late = replace(PROTECTED, keepalive_idle_s=400)
    explanation = explain(DEFAULTS, late, NONE, NLB)
    assert (
        explanation.outcome("idle-expiry").prediction.mechanism is Mechanism.KEEPALIVE_USER_TIMEOUT
    )
    trap = next(t for t in explanation.traps if t.code == "keepalive-exceeds-path-idle")
    assert "400 s idle" in trap.message
    assert "175s" in trap.fix
    # Without keepalive the idle connection is forgotten, and its next request hangs.
    bare = explain(DEFAULTS, TcpOptions(), NONE, NLB)
    assert bare.outcome("idle-expiry").prediction.mechanism is Mechanism.TCP_RETRIES2
    assert "keepalive-exceeds-path-idle" in {t.code for t in bare.traps}
    reset = explain(DEFAULTS, TcpOptions(), NONE, PathContext(240.0, resets=True))
    assert reset.outcome("idle-expiry").prediction.mechanism is Mechanism.MIDDLEBOX_RESET


def test_a_user_timeout_shorter_than_the_outage_is_a_trap_whose_fix_survives_it() -> None:
    outage = PathContext(outage_s=10.0)
    cut = explain(DEFAULTS, TcpOptions(user_timeout_ms=5000), NONE, outage)
    assert cut.outcome("partition").prediction.outcome is PredictedOutcome.CUT
    trap = next(t for t in cut.traps if t.code == "user-timeout-cuts-outage")
    suggested = int(re.search(r"at least (\d+)s", trap.fix)[1])  # type: ignore[index]
    for seconds, survives in ((suggested, True), (suggested - 1, False)):
        tcp = TcpOptions(user_timeout_ms=seconds * 1000)
        assert explain(DEFAULTS, tcp, NONE, outage).outcome("partition").prediction.survives is (
            survives
        )
    kept = explain(DEFAULTS, TcpOptions(user_timeout_ms=suggested * 1000), NONE, outage)
    assert "user-timeout-cuts-outage" not in {t.code for t in kept.traps}


def test_behind_a_sidecar_the_apps_tcp_options_are_a_trap() -> None:
    proxied = PathContext(via_proxy=True)
    explanation = explain(DEFAULTS, PROTECTED, NONE, proxied)
    sidecar = explanation.outcome("sidecar")
    # The app's user timeout does not bound it: the proxy's upstream socket has none.
    assert sidecar.prediction.low_s > 900
    assert "options-behind-proxy" in {t.code for t in explanation.traps}
    deadline = explain(DEFAULTS, TcpOptions(), Deadlines(read_timeout_s=3), proxied)
    assert deadline.outcome("sidecar").prediction.mechanism is Mechanism.READ_TIMEOUT
    assert "options-behind-proxy" not in {t.code for t in deadline.traps}


def test_every_path_preset_is_sourced_and_documented() -> None:
    page = (Path(__file__).parent.parent / "docs" / "explain.md").read_text()
    for preset in PATHS.values():
        assert preset.source.startswith("https://")
        assert preset.idle_timeout_s > 0
        assert f"`{preset.name}`" in page
        assert preset.source in page


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--path", "aws-nlb", "--path-idle-timeout", "5m"), "not both"),
        (("--path", "nowhere"), "nowhere"),
        (("--outage", "0s"), "--outage must be more than 0s"),
        (("--path-idle-timeout", "soon"), "not a duration"),
    ],
)
def test_bad_path_options_are_usage_errors(args: tuple[str, ...], expected: str) -> None:
    result = _explain(*args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "Error" in line]) == 1


def test_the_path_shows_in_the_table_and_the_json() -> None:
    shown = _explain("--path", "azure-lb", "--outage", "10s", "--user-timeout", "30s")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^idle-expiry +", shown.stdout, flags=re.MULTILINE)
    assert re.search(r"^partition +survives", shown.stdout, flags=re.MULTILINE)
    document = json.loads(
        _explain("--path", "azure-lb", "--outage", "10s", "--user-timeout", "30s", "--json").stdout
    )
    partition = next(s for s in document["scenarios"] if s["name"] == "partition")
    assert partition["outcome"] == "survives"
    assert partition["detected_after_s"] is None
    assert partition["echo_after_s"]["low"] > 10


@pytest.mark.parametrize("path", [PathContext(), NLB, PathContext(240.0, resets=True)])
@pytest.mark.parametrize(
    "tcp", [tcp for tcp, deadlines, kernel, _ in TRAPS if deadlines == NONE and not kernel]
)
def test_a_sockets_traps_are_explains_without_deadlines(tcp: TcpOptions, path: PathContext) -> None:
    """What ``watch`` gives a live socket: explain's traps for the same options and path,
    every code and message, from a fraction of the scenarios."""
    assert socket_traps(DEFAULTS, tcp, path) == list(explain(DEFAULTS, tcp, NONE, path).traps)
    outage = replace(path, outage_s=10.0)
    assert socket_traps(DEFAULTS, tcp, outage) == list(explain(DEFAULTS, tcp, NONE, outage).traps)


def test_a_reused_address_resets_the_first_retransmission_after_it() -> None:
    reused = explain(DEFAULTS, TcpOptions(), NONE, PathContext(ip_reuse_after_s=3.0))
    outcome = reused.outcome("ip-reuse")
    assert outcome.prediction.mechanism is Mechanism.ADDRESS_REUSED
    assert outcome.prediction.errnos == ("ECONNRESET",)
    # The retransmission after 3 s leaves ~3.2-3.4 s after the request.
    assert outcome.prediction.low_s >= 3.2
    assert outcome.prediction.high_s <= 3.4 * 1.06 + 0.5
    late = explain(
        DEFAULTS, TcpOptions(user_timeout_ms=10_000), NONE, PathContext(ip_reuse_after_s=30.0)
    )
    assert late.outcome("ip-reuse").prediction.mechanism is Mechanism.USER_TIMEOUT
    assert "before the new pod comes up (30s)" in late.outcome("ip-reuse").reasoning
    bad = _explain("--ip-reuse-after", "0s")
    assert bad.returncode == 2
    assert "--ip-reuse-after must be more than 0s" in bad.stderr
