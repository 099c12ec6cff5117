"""Detection of a silent peer with real kernel timers: client and server in network namespaces.

The client talks to the server through a node namespace doing kube-proxy-style DNAT, as a
client pod talks to a ClusterIP service. After a few echoes the node drops everything to
and from the server pod (nft), which is what the force-deleted pod's vanished route does.
Expected times come from the kernel facts measured on this machine: TCP_USER_TIMEOUT gives
up about 0.41 s (the first retransmission) plus the timeout after the unanswered send;
keepalive idle/interval/count 1 s/1 s/3 gives up about 4 s after the last data on an idle
connection; with no option the kernel retransmits for about 15 minutes. The client's
/metrics are scraped from the node, as a Prometheus in the cluster would reach the pod.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tcpecho.lab.topology import (
    CLIENT_IP,
    CLUSTER_IP,
    Topology,
    in_namespace,
    leftover_namespaces,
    remove_namespaces,
)
from tests.conftest import Spawn, requires_netns
from tests.support import LoggedProcess, Scrape, abandoned_namespaces, port_of, scrape

pytestmark = [requires_netns, pytest.mark.netns]

TEST_PREFIX = "tcpecho-test-"
_numbers = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers() -> Iterator[None]:
    """Remove namespaces of an earlier run that was killed, and check none of this run's
    remain after (a run going on beside this one keeps its own)."""
    remove_namespaces(abandoned_namespaces(TEST_PREFIX))
    yield
    assert leftover_namespaces(f"{TEST_PREFIX}{os.getpid()}-") == []


@pytest.fixture
def topology() -> Iterator[Topology]:
    with Topology(f"{TEST_PREFIX}{os.getpid()}-{next(_numbers)}") as built:
        yield built


def _record(event: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    """Show the measured failure in the test log: the figures are worth keeping."""
    shown = {key: value for key, value in event.items() if not key.startswith("_")}
    with capsys.disabled():
        print(f"\n{json.dumps(shown)}")


def _start(topology: Topology, spawn: Spawn, tcpecho: str, *client_args: str) -> LoggedProcess:
    server = spawn(topology.command(topology.server_ns, [tcpecho, "server", "--catch-sigterm"]))
    server.wait_for("server_started")
    return spawn(
        topology.command(
            topology.client_ns, [tcpecho, "client", "--server", CLUSTER_IP, *client_args]
        )
    )


def test_user_timeout_detects_the_black_hole_after_about_the_timeout(
    topology: Topology, spawn: Spawn, tcpecho: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = _start(
        topology,
        spawn,
        tcpecho,
        *("--interval", "300ms", "--user-timeout", "3s", "--tcp-info-interval", "500ms"),
    )
    connected = client.wait_for("connected")
    client.wait_for("response_received", count=3)
    topology.drop_pod_traffic()
    failed = client.wait_for("connection_failed", timeout=10)
    _record(failed, capsys)
    assert (failed["errno"], failed["phase"]) == ("ETIMEDOUT", "request")
    # Never before the timeout; the first retransmission adds ~0.41 s, timers a little more.
    assert 3.0 <= failed["detection_s"] <= 4.0
    assert client.wait(5) == 1
    # What `connected` expected beforehand holds, and so does the live view's give-up time.
    busy = connected["expected_busy"]
    assert busy["limited_by"] == "user_timeout"
    assert busy["low_s"] <= failed["detection_s"] <= busy["high_s"]
    waiting = [e for e in client.named("waiting_for_response") if e["seq"] == failed["seq"]]
    _check_live_view(waiting, interval=0.5, until=failed["detection_s"])
    assert {e["limited_by"] for e in waiting} == {"user_timeout"}
    # The timeout plus the first retransmission's lead (a tail-loss probe at ~0.2 s, then
    # the first RTO, at least 200 ms).
    assert 3.39 <= waiting[0]["gives_up_after_s"] <= 3.8
    assert waiting[0]["gives_up_after_s"] <= failed["detection_s"] + 0.1


def _check_live_view(waiting: list[dict[str, Any]], interval: float, until: float) -> None:
    """An event every interval from the first interval on, with the kernel's retransmissions
    rising and the time left shrinking."""
    # The client sleeps an interval after each event (fixed delay): a timer never fires
    # before its deadline on the loop's clock, but uvloop arms it from a clock cached at the
    # start of the iteration, which ran a getsockopt and a log line first (milliseconds;
    # 0.05 s leaves a preemption room). Late, the loop may be by any amount on a loaded
    # machine, so no gap has an upper bound; the count does: n events need n intervals.
    assert len(waiting) >= int(until / interval) - 1, waiting
    times = [event["waiting_s"] for event in waiting]
    assert interval - 0.05 <= times[0]
    for earlier, later in itertools.pairwise(times):
        assert interval - 0.05 <= later - earlier
    assert times[-1] <= until  # each was emitted while the request still waited
    retransmissions = [event["tcp_info"]["total_retrans"] for event in waiting]
    assert retransmissions == sorted(retransmissions)
    assert retransmissions[-1] > retransmissions[0] >= 1
    left = [event["gives_up_in_s"] for event in waiting]
    assert left == sorted(left, reverse=True)
    for event in waiting:
        assert event["tcp_info"]["unacked"] >= 1
        assert event["gives_up_in_s"] == pytest.approx(
            max(0.0, event["gives_up_after_s"] - event["waiting_s"]), abs=0.002
        )


def test_keepalive_detects_the_black_hole_on_an_idle_connection(
    topology: Topology, spawn: Spawn, tcpecho: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = _start(
        topology,
        spawn,
        tcpecho,
        "--interval",
        "60s",
        "--keepalive-idle",
        "1s",
        "--keepalive-interval",
        "1s",
        "--keepalive-count",
        "3",
    )
    client.wait_for("response_received")
    topology.drop_pod_traffic()
    failed = client.wait_for("connection_failed", timeout=10)
    _record(failed, capsys)
    assert (failed["errno"], failed["phase"], failed["detection_s"]) == ("ETIMEDOUT", "idle", None)
    # idle 1 s + 3 probes 1 s apart = 4 s after the last data.
    assert 3.5 <= failed["since_last_response_s"] <= 5.5
    assert client.wait(5) == 1


def test_without_options_the_client_is_still_waiting_and_says_on_what(
    topology: Topology, spawn: Spawn, tcpecho: str
) -> None:
    client = _start(topology, spawn, tcpecho, "--interval", "300ms")
    connected = client.wait_for("connected")
    client.wait_for("response_received", count=3)
    topology.drop_pod_traffic()
    dropped_at = time.monotonic()
    # Longer than either mitigation above takes; the kernel's budget is ~924.6 s.
    time.sleep(8)
    assert client.named("connection_failed") == []
    assert client.proc.poll() is None
    client.signal(signal.SIGTERM)
    assert client.wait(5) == 0
    summary = client.wait_for("summary")
    assert summary["sent"] == summary["received"] + 1  # one request is still unanswered
    assert summary["stopped_by"] == "SIGTERM"
    assert summary["unanswered_seq"] == summary["sent"]
    assert 7.5 <= summary["unanswered_for_s"] <= time.monotonic() - dropped_at + 0.5
    # The live view says the kernel's budget is what ends it: ~924.6 s after the first
    # retransmission, or one capped (120 s) step more when the RTO is exactly 200 ms.
    waiting = client.named("waiting_for_response")
    _check_live_view(waiting, interval=1.0, until=summary["unanswered_for_s"])
    assert {e["limited_by"] for e in waiting} == {"tcp_retries2"}
    assert 924.6 < waiting[0]["gives_up_after_s"] <= 924.6 + 0.5 + 120
    assert connected["expected_busy"]["limited_by"] == "tcp_retries2"
    assert connected["expected_idle"] == {"low_s": None, "high_s": None, "limited_by": "nothing"}


def test_metrics_show_the_hang_while_it_lasts_and_count_its_detection(
    topology: Topology, spawn: Spawn, tcpecho: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = _start(
        topology,
        spawn,
        tcpecho,
        *("--interval", "300ms", "--user-timeout", "3s", "--metrics-port", "0"),
        # After the failure the client backs off for 15-30 s: it stands still to be scraped.
        *("--retries", "1", "--retry-backoff", "30s"),
    )
    port = port_of(client.wait_for("metrics_started")["addresses"][0])

    def scraped() -> Scrape:
        return in_namespace(topology.node_ns, lambda: scrape(CLIENT_IP, port))

    client.wait_for("response_received", count=3)
    healthy = scraped()
    assert healthy.value("tcpecho_client_connected") == 1
    assert healthy.value("tcpecho_client_retransmits") == 0
    topology.drop_pod_traffic()
    dropped_at = time.monotonic()
    time.sleep(1.2)
    early_from, early, early_at = time.monotonic(), scraped(), time.monotonic()
    time.sleep(1.2)
    late_from, late, late_at = time.monotonic(), scraped(), time.monotonic()
    # The request left within an interval (0.3 s) of the drop, and waits on, second for
    # second; the kernel retransmits it by ~0.41 s after the send, then at each doubled RTO
    # (~0.82 s, ~1.64 s): more retransmissions at the second scrape than at the first.
    early_wait = early.value("tcpecho_client_waiting_seconds")
    late_wait = late.value("tcpecho_client_waiting_seconds")
    assert 0.5 <= early_wait <= early_at - dropped_at
    # Each scrape read the client's clock (CLOCK_MONOTONIC, as the test's) between the
    # test's send and its answer: the wait grew by what lies between those brackets, however
    # slowly either process was scheduled (1e-6: the gauge's rounding).
    assert late_from - early_at - 1e-6 <= late_wait - early_wait <= late_at - early_from + 1e-6
    assert 1 <= early.value("tcpecho_client_retransmits") < late.value("tcpecho_client_retransmits")
    assert late.value("tcpecho_client_connected") == 1
    # Still inside what the model expects for --user-timeout 3s: no alert yet.
    expected = late.value("tcpecho_client_expected_detection_seconds")
    assert 3.39 <= expected <= 4.2
    assert late.value("tcpecho_client_waiting_seconds") < expected
    failed = client.wait_for("connection_failed", timeout=10)
    client.wait_for("reconnecting")
    after = scraped()
    _record(failed, capsys)
    assert (failed["errno"], failed["phase"]) == ("ETIMEDOUT", "request")
    failures = after.labelled("tcpecho_client_failures_total")
    assert failures == {frozenset({("errno", "ETIMEDOUT"), ("phase", "request")}): 1}
    assert after.value("tcpecho_client_detection_seconds_count") == 1
    assert after.value("tcpecho_client_detection_seconds_sum") == pytest.approx(
        failed["detection_s"], abs=1e-6
    )
    assert 3.0 <= failed["detection_s"] <= 4.0
    assert after.value("tcpecho_client_detection_seconds_bucket", le="2.5") == 0
    assert after.value("tcpecho_client_detection_seconds_bucket", le="5.0") == 1
    assert after.value("tcpecho_client_waiting_seconds") == 0
    assert after.value("tcpecho_client_connected") == 0
    assert after.value("tcpecho_client_retransmits") == 0  # no connection now
    client.signal(signal.SIGTERM)
    assert client.wait(5) == 1
