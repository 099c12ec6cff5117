"""The in-cluster reproduction without a cluster: argument handling, the client's log, the
retransmission counter, the report, and the whole ``reproduce`` run against stand-ins for
docker, kind and kubectl that record what they were asked to do."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster import reproduce as kind
from cluster.overlays import OVERLAYS, client_env, expected

from tcpecho import events
from tcpecho.experiment import Case, Fault, Result
from tcpecho.lab.report import COLUMNS
from tcpecho.model import Activity

ROOT = Path(__file__).resolve().parent.parent.parent

SNMP = """\
Ip: Forwarding DefaultTTL InReceives InHdrErrors
Ip: 1 64 4512 0
Icmp: InMsgs InErrors
Icmp: 12 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 3 0 0 0 1 118 121 {retrans} 0 2 0
Udp: InDatagrams NoPorts
Udp: 20 0
"""  # noqa: E501 (the kernel's own line)


def response_event(seq: int = 1) -> str:
    return json.dumps(
        {
            "timestamp": "2026-11-27T19:54:05.151536Z",
            "level": "info",
            "event": "response_received",
            "seq": seq,
            "rtt_ms": 0.31,
            "rto_ms": 204.0,
            "connection": 1,
        }
    )


def failed_event(**fields: object) -> str:
    event = {
        "timestamp": "2026-11-27T19:54:10.151536Z",
        "level": "error",
        "event": "connection_failed",
        "phase": "request",
        "errno": "ETIMEDOUT",
        "error": "[Errno 110] Connection timed out",
        "seq": 4,
        "detection_s": 30.412,
        "since_last_response_s": 33.2,
        "tcp_info": None,
        "connection": 1,
    }
    event.update(fields)
    return json.dumps(event)


# -- the pod's counters ----------------------------------------------------------------------


def test_retransmitted_segments_from_proc_net_snmp() -> None:
    assert kind.retransmitted_segments(SNMP.format(retrans=17)) == 17


def test_retransmitted_segments_from_this_machine() -> None:
    with open("/proc/net/snmp") as snmp:
        assert kind.retransmitted_segments(snmp.read()) >= 0


@pytest.mark.parametrize(
    "text",
    ["", "Ip: Forwarding\nIp: 1\n", SNMP.format(retrans="x"), SNMP.replace("RetransSegs", "Re")],
)
def test_retransmitted_segments_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match=r"RetransSegs|Tcp"):
        kind.retransmitted_segments(text)


# -- the report ------------------------------------------------------------------------------


def _result(overlay: str, **fields: object) -> Result:
    profile = OVERLAYS[overlay]
    result = Result(
        Case(Fault.FORCE_DELETE, profile, Activity.ACTIVE), prediction=expected(overlay)
    )
    for key, value in fields.items():
        setattr(result, key, value)
    return result


def test_report_is_the_labs_table_with_one_row_per_case() -> None:
    results = [
        _result(
            "user-timeout",
            measured_s=30.43,
            measured_clock="request",
            errno="ETIMEDOUT",
            retransmissions=8,
        ),
        _result("default"),
        _result(
            "default",
            prediction=None,
            measured_s=0.2,
            measured_clock="last-data",
            errno="EOF",
            retransmissions=0,
        ),
    ]
    lines = kind.render_table(results).splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == [
        "force-delete",
        "user-timeout",
        "active",
        "30.4-32.5",
        "s",
        "30.4",
        "s",
        "request",
        "ETIMEDOUT",
        "8",
        "detected",
        "ok",
    ]
    # Not noticed before the deadline: a hang, and not what the model expects either.
    assert lines[3].split() == [
        *("force-delete", "default", "active", "929-994", "s", "none"),
        *("-", "-", "-", "hang", "MISS"),
    ]
    assert lines[4].split()[3:] == ["?", "0.20", "s", "last", "data", "EOF", "0", "error", "?"]
    # Columns line up: every row's verdict starts where the header's does.
    column = lines[0].index("verdict")
    assert all(
        line[column:].split()[0] in {"verdict", "detected", "hang", "error"}
        for line in [lines[0], *lines[2:]]
    )


def test_expected_times_come_from_the_kernel_model() -> None:
    default = expected("default")
    assert default is not None
    assert default.contains(939.0)  # the field report: 15 m 39 s
    user_timeout = expected("user-timeout")
    assert user_timeout is not None
    assert user_timeout.contains(30.43)
    keepalive = expected("keepalive")
    assert keepalive is not None
    assert (keepalive.low_s, keepalive.high_s) == (default.low_s, default.high_s)
    mitigated = expected("mitigated")
    assert mitigated is not None
    assert mitigated.errnos == ("READ_TIMEOUT",)
    assert expected("custom") is None


def test_an_overlay_renders_to_the_clients_environment() -> None:
    assert client_env(OVERLAYS["default"]) == {}
    assert client_env(OVERLAYS["mitigated"]) == {
        "TCPECHO_CLIENT_USER_TIMEOUT": "30s",
        "TCPECHO_CLIENT_KEEPALIVE": "true",
        "TCPECHO_CLIENT_KEEPALIVE_IDLE": "10s",
        "TCPECHO_CLIENT_KEEPALIVE_INTERVAL": "5s",
        "TCPECHO_CLIENT_KEEPALIVE_COUNT": "3",
        "TCPECHO_CLIENT_READ_TIMEOUT": "10s",
    }


# -- following a log -------------------------------------------------------------------------


def python_printing(script: str) -> list[str]:
    return [sys.executable, "-u", "-c", textwrap.dedent(script)]


def test_follower_returns_the_event_as_soon_as_it_is_written() -> None:
    follower = kind.LogFollower(
        python_printing(
            f"""
            import time
            print("not json")
            print({response_event()!r})
            time.sleep(0.5)
            print({failed_event()!r}, end="", flush=True)
            time.sleep(0.3)
            print()
            time.sleep(30)
            """
        )
    )
    try:
        started = time.monotonic()
        first = follower.wait_for(events.ResponseReceived, 10)
        assert first == events.ResponseReceived(seq=1, rtt_ms=0.31, rto_ms=204.0)
        failed = follower.wait_for(events.ConnectionFailed, 10)
        assert failed is not None
        assert failed.detection_s == 30.412
        assert time.monotonic() - started < 5, "the follower waited past the event"
    finally:
        follower.close()
    assert follower.process.poll() is not None, "close() leaves no process behind"


def test_follower_stops_when_the_log_ends() -> None:
    follower = kind.LogFollower(python_printing(f"print({response_event()!r})"))
    try:
        started = time.monotonic()
        assert follower.wait_for(events.ConnectionFailed, 30) is None
        assert follower.ended
        assert time.monotonic() - started < 5
    finally:
        follower.close()


def test_follower_gives_up_at_its_deadline() -> None:
    follower = kind.LogFollower(python_printing("import time; time.sleep(30)"))
    try:
        started = time.monotonic()
        assert follower.wait_for(events.Event, 0.5) is None
        assert 0.4 < time.monotonic() - started < 3
    finally:
        follower.close()


# -- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overlay", "nope"], "nope: not one of default, keepalive"),
        (["--timeout", "abc"], "not a duration"),
        (["--timeout", "0s"], "below the minimum"),
        (["--cni", "weave"], "'weave' is not one of"),
        (["--calico-manifest", "/nonexistent.yaml"], "no such file"),
        (["--project-dir", "/nonexistent"], "does not exist"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    if "--project-dir" not in args:
        args = [*args, "--project-dir", str(ROOT)]
    result = CliRunner().invoke(kind.reproduce, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_checkout_without_overlays_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(kind.reproduce, ["--project-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no overlays under" in result.output


def test_missing_tools_are_named_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(kind.reproduce, ["--project-dir", str(ROOT)])
    assert result.exit_code == 2
    assert "reproduce needs docker, kind, kubectl on PATH" in result.output
    assert "+ " not in result.output, "nothing may run before the check"


def test_the_module_runs_as_a_program_with_usage_errors_and_no_traceback() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "cluster.reproduce", "--overlay", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2
    assert "Usage: python -m cluster.reproduce" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert (
        subprocess.run(
            [sys.executable, "-m", "cluster.reproduce", "--help"],
            capture_output=True,
            cwd=ROOT,
            check=False,
        ).returncode
        == 0
    )


# -- a whole run, against stand-ins ----------------------------------------------------------

STAND_IN = """\
#!{python}
# A stand-in for {tool}: records its arguments, answers like the real tool would.
import json, os, sys, time
state = os.environ["STAND_IN_STATE"]
args = sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as calls:
    calls.write(json.dumps(["{tool}", *args]) + "\\n")
fail = os.environ.get("STAND_IN_FAIL", "")
if fail and fail in " ".join(["{tool}", *args]):
    print("stand-in: told to fail", file=sys.stderr)
    sys.exit(1)
deleted = os.path.join(state, "server-deleted")
if "{tool}" == "kind" and args[:2] == ["get", "clusters"]:
    print(os.environ.get("STAND_IN_CLUSTERS", "kind"))
elif "{tool}" == "kubectl" and "get" in args and "pods" in args:
    print("server-7d9f-abcde" if "app=server" in args else "client-5c4b-fghij", end="")
elif "{tool}" == "kubectl" and "delete" in args and "pod" in args:
    open(deleted, "w").close()
elif "{tool}" == "kubectl" and "exec" in args:
    print({snmp!r}.format(retrans=19 if os.path.exists(deleted) else 3))
elif "{tool}" == "kubectl" and "logs" in args:
    print({response!r}, flush=True)
    for _ in range(200):
        if os.path.exists(deleted):
            print({failed!r}, flush=True)
            sys.exit(0)
        time.sleep(0.05)
"""


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """docker, kind and kubectl stand-ins first on PATH; returns their state directory."""
    bin_dir = tmp_path / "bin"
    state = tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for tool in ("docker", "kind", "kubectl"):
        script = bin_dir / tool
        script.write_text(
            STAND_IN.format(
                python=sys.executable,
                tool=tool,
                snmp=SNMP,
                failed=failed_event(),
                response=response_event(),
            )
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STAND_IN_STATE", str(state))
    return state


def calls(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls").read_text().splitlines()]


def test_reproduce_runs_the_whole_sequence_and_reports(stand_ins: Path) -> None:
    result = CliRunner().invoke(
        kind.reproduce,
        ["--overlay", "user-timeout", "--project-dir", str(ROOT), "--timeout", "30s"],
    )
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0].split()[0] == "fault"
    assert table[2].split() == [
        *("force-delete", "user-timeout", "active", "30.4-32.5", "s", "30.4", "s"),
        *("request", "ETIMEDOUT", "16", "detected", "ok"),
    ]
    made = calls(stand_ins)
    firsts = [" ".join(call[:3]) for call in made]
    assert firsts[:2] == ["kind get clusters", "kind create cluster"]
    assert made[-1] == ["kind", "delete", "cluster", "--name", "tcpecho"]
    config = made[1][made[1].index("--config") + 1]
    assert config == str(ROOT / "configs" / "kind-cluster-config.yaml")
    flat = [" ".join(call) for call in made]
    order = [
        "create -f " + kind.CALICO_MANIFEST,
        "rollout status daemonset/calico-node",
        "wait --for=condition=Ready nodes --all",
        "docker build --tag localhost/tcpecho:latest",
        "kind load docker-image localhost/tcpecho:latest --name tcpecho",
        "create namespace tcpecho-user-timeout",
        "apply -k " + str(ROOT / "manifests" / "overlays" / "user-timeout"),
        "wait --for=condition=Available deployment --all",
        "delete pod server-7d9f-abcde --grace-period=0 --force",
        "kind delete cluster",
    ]
    positions = [next(i for i, call in enumerate(flat) if step in call) for step in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))


def test_kindnet_needs_no_calico(stand_ins: Path) -> None:
    result = CliRunner().invoke(
        kind.reproduce,
        [
            *("--cni", "kindnet", "--overlay", "default"),
            *("--project-dir", str(ROOT), "--calico-manifest", "/nonexistent.yaml"),
            *("--timeout", "30s"),
        ],
    )
    assert result.exit_code == 0, result.output
    flat = [" ".join(call) for call in calls(stand_ins)]
    assert not any("calico" in call for call in flat)
    assert "kind-cluster-config-kindnet.yaml" in flat[1]


def test_a_failed_step_still_deletes_the_cluster(
    stand_ins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_FAIL", "apply -k")
    result = CliRunner().invoke(kind.reproduce, ["--project-dir", str(ROOT)])
    assert result.exit_code == 1
    assert "reproduce: kubectl" in result.output
    assert "exited 1" in result.output
    assert "Traceback" not in result.output
    assert calls(stand_ins)[-1][:3] == ["kind", "delete", "cluster"]


def test_an_existing_cluster_is_neither_used_nor_deleted(
    stand_ins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_CLUSTERS", "dev\ntcpecho")
    result = CliRunner().invoke(kind.reproduce, ["--project-dir", str(ROOT)])
    assert result.exit_code == 2
    assert "a kind cluster 'tcpecho' exists already" in result.output
    assert calls(stand_ins) == [["kind", "get", "clusters"]]


def test_keep_cluster_leaves_it_running(stand_ins: Path) -> None:
    result = CliRunner().invoke(
        kind.reproduce,
        ["--overlay", "mitigated", "--keep-cluster", "--project-dir", str(ROOT)],
    )
    assert result.exit_code == 0, result.output
    assert not any(call[:2] == ["kind", "delete"] for call in calls(stand_ins))
    assert "kind delete cluster --name tcpecho" in result.output
