"""``tcpecho explain --recommend``: settings that meet the constraints by the model, the longest
that do, a clear answer when none can, and the lab's confirmation of what is promised."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tcpecho.explain import PathContext
from tcpecho.model import Activity, Failure, KernelSettings, Traffic, after_partition, predict
from tcpecho.recommend import Constraints, ImpossibleError, _keepalive, recommend
from tcpecho.stacks import STACKS
from tests.conftest import requires_netns
from tests.support import tcpecho_executable

DEFAULTS = KernelSettings()
CONSTRAINTS = [
    Constraints(30.0),
    Constraints(30.0, 10.0, PathContext(350.0, preset="aws-nlb")),
    Constraints(120.0, None, PathContext(60.0)),
    Constraints(10.0, 3.0, PathContext(15.0)),
    Constraints(900.0, 60.0, PathContext(900.0, preset="kube-proxy-ipvs")),
]


@pytest.mark.parametrize("constraints", CONSTRAINTS)
def test_the_settings_meet_every_constraint_by_the_model(constraints: Constraints) -> None:
    chosen = recommend(DEFAULTS, constraints)
    tcp = chosen.tcp
    deadline = constraints.detect_within_s
    assert predict(DEFAULTS, tcp, Failure.SILENT, Activity.ACTIVE).high_s <= deadline
    assert predict(DEFAULTS, tcp, Failure.SILENT, Activity.IDLE).high_s <= deadline
    assert tcp.keepalive_idle_s is not None
    assert tcp.keepalive_interval_s is not None
    outage = constraints.survive_outage_s
    if outage is not None:
        busy = after_partition(DEFAULTS, tcp, Activity.ACTIVE, outage, Traffic(request_offset_s=0))
        assert busy.survives
        # An outage that begins at the first keepalive probe still meets a probe after it.
        probes = range(
            tcp.keepalive_idle_s, (tcp.user_timeout_ms or 0) // 1000, tcp.keepalive_interval_s
        )
        assert any(probe >= tcp.keepalive_idle_s + outage for probe in probes)
    timeout = constraints.path.idle_timeout_s
    if timeout is not None:
        assert tcp.keepalive_idle_s < timeout
        assert tcp.keepalive_interval_s < timeout
        assert chosen.caveats == () or all(
            not caveat.startswith("keepalive-exceeds-path-idle") for caveat in chosen.caveats
        )


@pytest.mark.parametrize("constraints", CONSTRAINTS)
def test_the_user_timeout_is_the_longest_that_meets_them(constraints: Constraints) -> None:
    chosen = recommend(DEFAULTS, constraints).tcp
    longer = replace(chosen, user_timeout_ms=(chosen.user_timeout_ms or 0) + 1000)
    too_slow = (
        predict(DEFAULTS, longer, Failure.SILENT, Activity.ACTIVE).high_s
        > constraints.detect_within_s
    )
    if not too_slow:  # then keepalive has no room left under it to watch an idle peer in time
        with pytest.raises(ImpossibleError):
            _keepalive(DEFAULTS, constraints, replace(longer, keepalive=None))


@pytest.mark.parametrize(
    ("constraints", "conflict"),
    [
        (Constraints(1.0), "no user timeout notices a busy dead peer within 1s"),
        (Constraints(10.0, 8.0), "the user timeout must be at most"),
    ],
)
def test_impossible_constraints_name_the_conflict(constraints: Constraints, conflict: str) -> None:
    with pytest.raises(ImpossibleError, match=conflict):
        recommend(DEFAULTS, constraints)


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tcpecho_executable(), "explain", *args], capture_output=True, text=True, timeout=60
    )


def test_the_command_prints_settings_predictions_and_why() -> None:
    shown = _explain(
        "--recommend", "--detect-within", "30s", "--survive-outage", "10s", "--path", "aws-nlb"
    )
    assert shown.returncode == 0, shown.stderr
    for part in ("settings:", "predicted:", "why:", "TCPECHO_CLIENT_USER_TIMEOUT=", "aws-nlb"):
        assert part in shown.stdout
    document = json.loads(
        _explain("--recommend", "--detect-within", "30s", "--path", "aws-nlb", "--json").stdout
    )
    assert set(document) == {"constraints", "settings", "predictions", "why", "caveats", "stack"}
    assert document["stack"] is None  # no --stack
    assert document["predictions"]["busy"]["high_s"] <= 30
    assert document["predictions"]["path_margin_s"] > 0


def test_impossible_is_one_line_and_exit_1_and_bad_values_exit_2() -> None:
    impossible = _explain("--recommend", "--detect-within", "10s", "--survive-outage", "8s")
    assert impossible.returncode == 1
    assert impossible.stderr.count("\n") == 1
    assert impossible.stderr.startswith("tcpecho explain: impossible: ")
    for args in (
        ("--recommend",),
        ("--recommend", "--detect-within", "0s"),
        ("--recommend", "--detect-within", "30s", "--user-timeout", "5s"),
    ):
        bad = _explain(*args)
        assert bad.returncode == 2, args
        assert "Traceback" not in bad.stderr


@requires_netns
@pytest.mark.netns
@pytest.mark.parametrize(
    ("deadline", "outage", "path_timeout"), [(20.0, 5.0, 15.0), (12.0, 3.0, 30.0)]
)
def test_the_lab_confirms_what_is_promised(
    tmp_path: Path, deadline: float, outage: float, path_timeout: float
) -> None:
    """The recommended settings, run in the lab under the faults they promise to handle:
    force-delete detected within the deadline, busy and idle; the path's idle timeout and
    the outage survived."""
    chosen = recommend(DEFAULTS, Constraints(deadline, outage, PathContext(path_timeout)))
    report = tmp_path / "lab.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "tcpecho", "lab", "--quick"),
            *("--fault", "force-delete", "--fault", "idle-expiry", "--fault", "partition"),
            *("--outage", f"{outage:g}s", "--path-idle-timeout", f"{path_timeout:g}s"),
            *("--client-args", " ".join(chosen.tcp.as_flags()), "--json", str(report)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-2000:]
    cases = {case["name"]: case for case in json.loads(report.read_text())["cases"]}
    for mode in ("active", "idle"):
        detected = cases[f"force-delete/custom/{mode}"]
        assert detected["verdict"] == "detected"
        assert detected["measured_s"] <= deadline
        for fault in ("idle-expiry", "partition"):
            assert cases[f"{fault}/custom/{mode}"]["verdict"] == "survived"
    assert all(case["matches_model"] for case in cases.values())


# -- a library that pings (gRPC) ---------------------------------------------------------------

GRPC_PINGS = STACKS["grpc-python"].ping  # their answer's 60 s, a server's 5 min


@pytest.mark.parametrize("constraints", CONSTRAINTS)
def test_pings_meet_every_constraint_by_the_model(constraints: Constraints) -> None:
    """For gRPC: its TCP_USER_TIMEOUT and its ping interval, no keepalive; pings on an idle
    channel and without limit, each under the path's idle timeout."""
    chosen = recommend(DEFAULTS, constraints, GRPC_PINGS)
    tcp, ping = chosen.tcp, chosen.deadlines.ping
    assert ping is not None
    assert ping.without_calls
    assert ping.watches_idle
    assert tcp.keepalive is False
    deadline = constraints.detect_within_s
    deadlines = chosen.deadlines
    assert predict(DEFAULTS, tcp, Failure.SILENT, Activity.ACTIVE, deadlines).high_s <= deadline
    idle = predict(DEFAULTS, tcp, Failure.SILENT, Activity.IDLE, deadlines)
    assert idle.high_s <= deadline
    assert idle.low_s > ping.interval_s  # the ping first, then the user timeout on it
    outage = constraints.survive_outage_s
    if outage is not None:
        assert after_partition(
            DEFAULTS, tcp, Activity.ACTIVE, outage, Traffic(request_offset_s=0)
        ).survives
    if constraints.path.idle_timeout_s is not None:
        assert ping.interval_s < constraints.path.idle_timeout_s
        assert not any(c.startswith("keepalive-exceeds-path-idle") for c in chosen.caveats)


@pytest.mark.parametrize("constraints", CONSTRAINTS)
def test_the_ping_interval_is_the_longest_that_meets_them(constraints: Constraints) -> None:
    chosen = recommend(DEFAULTS, constraints, GRPC_PINGS)
    ping = chosen.deadlines.ping
    assert ping is not None
    longer = replace(chosen.deadlines, ping=replace(ping, interval_s=ping.interval_s + 1))
    late = predict(DEFAULTS, chosen.tcp, Failure.SILENT, Activity.IDLE, longer).high_s
    timeout = constraints.path.idle_timeout_s
    assert late > constraints.detect_within_s or (
        timeout is not None and ping.interval_s + 1 > timeout * 0.8
    )


def test_the_command_answers_in_grpcs_channel_options() -> None:
    shown = _explain(
        "--recommend", "--detect-within", "30s", "--survive-outage", "10s", "--path", "aws-nlb",
        "--stack", "grpc-python", "--json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    settings = document["stack"]["settings"]
    ping = document["settings"]["ping"]
    assert f"grpc.keepalive_time_ms={round(ping['interval_s'] * 1000)}" in settings
    user_timeout = document["settings"]["tcp"]["user_timeout_ms"]
    assert f"grpc.keepalive_timeout_ms={user_timeout}" in settings
    assert "grpc.keepalive_permit_without_calls=1 grpc.http2.max_pings_without_data=0" in settings
    assert document["predictions"]["idle"]["high_s"] <= 30
    assert any(c.startswith("ping-faster-than-server-allows") for c in document["caveats"])


def test_only_a_library_whose_servers_limit_pings_is_warned_of_them() -> None:
    """gRPC's servers take a ping without data at most every 5 min; Go's HTTP/2 servers set
    no such limit, so its pings every few seconds are no trap."""
    constraints = Constraints(30.0, None, PathContext())
    caveats = {
        name: recommend(DEFAULTS, constraints, STACKS[name].ping).caveats
        for name in ("grpc-python", "go-http2")
    }
    assert any(c.startswith("ping-faster-than-server-allows") for c in caveats["grpc-python"])
    assert not any(c.startswith("ping-faster-than-server-allows") for c in caveats["go-http2"])
