"""The field's faults in the lab, end to end: each with the default and a mitigating profile,
and with a program tcpecho did not write, measured against the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tcpecho.experiment import FaultTiming
from tcpecho.lab.runner import RUN_PREFIX
from tcpecho.lab.topology import leftover_namespaces
from tests.conftest import requires_netns
from tests.support import abandoned_namespaces

pytestmark = [requires_netns, pytest.mark.netns]

LAB = [sys.executable, "-m", "tcpecho", "lab"]
FIELD_FAULTS = (
    "idle-expiry",
    "idle-expiry-reset",
    "stale-conntrack",
    "ip-reuse",
    "partition",
    "stalled-reader",
    "sidecar",
)
TIMING = FaultTiming()  # the lab's defaults: --path-idle-timeout 15s, --outage 9s, ...
# A busy program that, once its connection fails, connects again (a new source port).
PINGER = (
    "pinger=while :; do while :; do echo ping; sleep 1; done | socat - TCP:{host}:{port}; "
    "sleep 0.2; done"
)


def _run(tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    """A quick lab run of the field's faults; its cases by name. Every case ran, none left
    a namespace behind, and each measurement lies in the range the model predicted."""
    report = tmp_path / "lab.json"
    before = set(leftover_namespaces(RUN_PREFIX))
    faults = [arg for fault in FIELD_FAULTS for arg in ("--fault", fault)]
    result = subprocess.run(
        [*LAB, "--quick", *faults, *args, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(result.stdout)  # the table, for the CI log
    could_not = [line for line in result.stdout.splitlines() if line.startswith("could not run")]
    assert result.returncode == 0, (could_not, result.stderr[-2000:])
    # Only a dead run's namespaces are leftovers: another lab run may be going on beside.
    assert set(abandoned_namespaces(RUN_PREFIX)) <= before
    cases = {case["name"]: case for case in json.loads(report.read_text())["cases"]}
    for name, case in cases.items():
        assert case["error"] is None, (name, case["error"])
        assert case["matches_model"], (name, case["prediction"], case["measured_s"], case)
    return cases


def _outcome(case: dict[str, Any]) -> tuple[str, str | None]:
    return case["verdict"], case["errno"]


def test_field_faults_with_the_built_in_profiles(tmp_path: Path) -> None:
    cases = _run(tmp_path)
    # A middlebox forgets an idle flow: a busy connection keeps it; an idle one without
    # keepalive hangs at its next request (or is reset); keepalive below the timeout keeps
    # the flow alive.
    for fault in ("idle-expiry", "idle-expiry-reset"):
        assert _outcome(cases[f"{fault}/default/active"]) == ("survived", None)
        assert _outcome(cases[f"{fault}/keepalive/idle"]) == ("survived", None)
        assert cases[f"{fault}/keepalive/idle"]["prediction"]["outcome"] == "survives"
    assert _outcome(cases["idle-expiry/default/idle"]) == ("hang", "ETIMEDOUT")
    assert cases["idle-expiry/default/idle"]["retransmissions"] >= 15
    assert _outcome(cases["idle-expiry/user-timeout/idle"]) == ("detected", "ETIMEDOUT")
    assert _outcome(cases["idle-expiry-reset/default/idle"]) == ("fast", "ECONNRESET")
    # The request after the expiry left after the idle timeout, not before.
    idle = cases["idle-expiry/default/idle"]["client_events"]
    sent = [e for e in idle if e["event"] == "request_sent"]
    assert len(sent) >= 2
    # A SYN before the Service's rule: the connect hangs for the SYN budget or the connect
    # timeout; then a fresh socket gets through, and the first one's entry stays untranslated.
    assert _outcome(cases["stale-conntrack/default/connecting"]) == ("hang", "ETIMEDOUT")
    connect_timeout = cases["stale-conntrack/connect-timeout/connecting"]
    assert _outcome(connect_timeout) == ("detected", "CONNECT_TIMEOUT")
    for profile in ("default", "user-timeout", "connect-timeout"):
        case = cases[f"stale-conntrack/{profile}/connecting"]
        assert case["recovered_s"] is not None, case
        # From the fault, which came just after the SYN left: the measured connect began then.
        assert case["recovered_s"] > case["measured_s"] - 1.0
    conntrack = cases["stale-conntrack/default/connecting"]["conntrack"]
    assert any("SYN_SENT" in line and "src=10.96.0.10 dst=10.244.1.2" in line for line in conntrack)
    # A new pod on the vanished pod's IP answers the next retransmission with RST.
    for profile in ("default", "user-timeout"):
        case = cases[f"ip-reuse/{profile}/active"]
        assert _outcome(case) == ("detected", "ECONNRESET")
        assert case["measured_s"] >= TIMING.reuse_after_s - 1.0  # the request left <= 1 s late
    assert _outcome(cases["ip-reuse/keepalive/idle"]) == ("detected", "ECONNRESET")
    assert cases["ip-reuse/default/idle"]["measured_s"] is None
    # A partition that heals: survived, at the first retransmission after the heal, unless
    # a user timeout shorter than the outage cut it.
    healed = cases["partition/default/active"]
    assert _outcome(healed) == ("survived", None)
    assert healed["recovered_s"] > TIMING.outage_s
    assert _outcome(cases["partition/user-timeout/active"]) == ("cut", "ETIMEDOUT")
    assert _outcome(cases["partition/read-timeout/active"]) == ("cut", "READ_TIMEOUT")
    assert _outcome(cases["partition/keepalive/idle"]) == ("survived", None)
    # A stalled reader: acknowledged requests wait forever, whatever the TCP options; only a
    # deadline ends them, or the user timeout once a sender filled the windows.
    for profile in ("default", "user-timeout", "keepalive"):
        assert cases[f"stalled-reader/{profile}/active"]["measured_s"] is None
    assert cases["stalled-reader/bulk/active"]["measured_s"] is None
    assert _outcome(cases["stalled-reader/read-timeout/active"]) == ("cut", "READ_TIMEOUT")
    assert _outcome(cases["stalled-reader/bulk+user-timeout/active"]) == ("cut", "ETIMEDOUT")
    # Behind a sidecar the app's own user timeout changes nothing; its deadline works.
    for profile in ("default", "user-timeout", "keepalive+user-timeout"):
        case = cases[f"sidecar/{profile}/active"]
        assert _outcome(case) == ("hang", "EOF"), case
    assert _outcome(cases["sidecar/read-timeout/active"]) == ("detected", "READ_TIMEOUT")


def test_field_faults_with_a_program(tmp_path: Path) -> None:
    """socat, judged by its socket as the kernel shows it."""
    cases = _run(tmp_path, "--client-cmd", PINGER)
    verdicts = {name.split("/")[0]: case["verdict"] for name, case in cases.items()}
    assert verdicts == {
        "idle-expiry": "survived",
        "idle-expiry-reset": "survived",
        "stale-conntrack": "hang",
        "ip-reuse": "detected",
        "partition": "survived",
        "stalled-reader": "hang",
        "sidecar": "hang",
    }
    assert cases["stale-conntrack/pinger"]["recovered_s"] is not None  # its next socat
    assert cases["partition/pinger"]["recovered_s"] > TIMING.outage_s
    assert cases["stalled-reader/pinger"]["measured_s"] is None
    assert cases["ip-reuse/pinger"]["measured_s"] is not None


# An idle program waiting on a read (a long poll, a query that takes an hour), with and
# without keepalive probes more frequent than the path's idle timeout.
WAITER = "(echo ping; sleep 3600) | socat - TCP:{host}:{port}"
KEPT = f"kept={WAITER},keepalive,keepidle=5,keepintvl=1,keepcnt=3"
FORGOTTEN = f"forgotten={WAITER}"


def test_an_idle_program_waiting_on_a_read_under_idle_expiry(tmp_path: Path) -> None:
    """Its keepalive keeps the flow: the lab sees the peer answer a probe after the window,
    though no data comes; without it nothing is sent, and nothing ever notices."""
    report = tmp_path / "lab.json"
    before = set(leftover_namespaces(RUN_PREFIX))
    programs = ["--client-cmd", KEPT, "--client-cmd", FORGOTTEN]
    result = subprocess.run(
        [*LAB, "--quick", "--fault", "idle-expiry", *programs, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-2000:]
    # Only a dead run's namespaces are leftovers: another lab run may be going on beside.
    assert set(abandoned_namespaces(RUN_PREFIX)) <= before
    cases = {case["profile"]: case for case in json.loads(report.read_text())["cases"]}
    kept, forgotten = cases["kept"], cases["forgotten"]
    assert (kept["mode"], kept["verdict"], kept["matches_model"]) == ("idle", "survived", True)
    # The first probe answered after the window, on the last data's clock.
    assert TIMING.path_idle_timeout_s <= kept["recovered_s"] <= 2 * TIMING.path_idle_timeout_s
    assert kept["prediction"]["outcome"] == "survives"
    assert (forgotten["verdict"], forgotten["matches_model"]) == ("hang", True)
    assert forgotten["prediction"]["never"]
