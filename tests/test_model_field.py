"""The model's field faults (``tcpecho.model.field``): what each predicts for the settings
that decide it, and the verdicts the experiment draws from a measurement."""

from __future__ import annotations

import pytest

from tcpecho.experiment import Case, Fault, FaultTiming, Profile, Result, Verdict, expect
from tcpecho.model import (
    KEEPALIVE_EARLY_S,
    Activity,
    KernelSettings,
    Mechanism,
    Outcome,
    Traffic,
    after_idle_expiry,
    after_ip_reuse,
    after_partition,
    behind_proxy,
    retransmission_expiries,
    stalled_reader,
)
from tcpecho.settings import Deadlines, SettingError
from tcpecho.tcp.options import TcpOptions

KERNEL = KernelSettings()
QUICK = KernelSettings(tcp_rto_max_s=1.0)
KEEPALIVE_10S = TcpOptions(keepalive_idle_s=10, keepalive_interval_s=1, keepalive_count=3)
USER_TIMEOUT_5S = TcpOptions(user_timeout_ms=5000)


def test_a_flow_kept_alive_by_keepalive_or_traffic_survives_the_idle_timeout() -> None:
    idle = Traffic(next_request_s=18.0)
    kept = after_idle_expiry(KERNEL, KEEPALIVE_10S, Activity.IDLE, 15.0, idle)
    assert kept.outcome is Outcome.SURVIVES
    assert kept.clock == "last-data"
    assert kept.low_s == 18.0  # the next request's echo
    busy = after_idle_expiry(KERNEL, TcpOptions(), Activity.ACTIVE, 15.0, Traffic())
    assert busy.survives
    assert 15.0 <= busy.low_s < busy.high_s <= 15.0 + 1.0 + 0.5


def test_after_idle_expiry_the_next_request_hangs_or_is_reset() -> None:
    idle = Traffic(next_request_s=18.0)
    hangs = after_idle_expiry(QUICK, TcpOptions(), Activity.IDLE, 15.0, idle)
    assert (hangs.mechanism, hangs.clock, hangs.outcome) == (
        Mechanism.TCP_RETRIES2,
        "request",
        Outcome.FAILS,
    )
    cut_short = after_idle_expiry(KERNEL, USER_TIMEOUT_5S, Activity.IDLE, 15.0, idle)
    assert cut_short.mechanism is Mechanism.USER_TIMEOUT
    assert 5.0 < cut_short.low_s < 6.0
    reset = after_idle_expiry(KERNEL, TcpOptions(), Activity.IDLE, 15.0, idle, reset=True)
    assert (reset.mechanism, reset.high_s) == (Mechanism.MIDDLEBOX_RESET, 1.0)
    assert "ECONNRESET" in reset.errnos


def test_keepalive_at_or_above_the_idle_timeout_detects_the_forgotten_flow() -> None:
    late = TcpOptions(keepalive_idle_s=20, keepalive_interval_s=1, keepalive_count=3)
    idle = Traffic(next_request_s=60.0)
    silent = after_idle_expiry(KERNEL, late, Activity.IDLE, 15.0, idle)
    assert (silent.mechanism, silent.low_s, silent.clock) == (
        Mechanism.KEEPALIVE,
        23.0,
        "last-data",
    )
    reset = after_idle_expiry(KERNEL, late, Activity.IDLE, 15.0, idle, reset=True)
    assert reset.errnos[0] == "ECONNRESET"  # the first probe's RST, at 20 s (jiffies early)
    assert reset.low_s == 20.0 - KEEPALIVE_EARLY_S


def _sends_after(heal_s: float) -> list[float]:
    """When a retransmission of a request sent at 0 can get through a heal at ``heal_s``."""
    found = []
    for rto in (0.204, 0.212):
        for slack in (1.0, 1.06):
            found.append(
                next(t for t in retransmission_expiries(KERNEL, rto, 0.2, slack) if t >= heal_s)
            )
    return found


def test_a_busy_connection_survives_a_partition_at_the_first_retransmission_after_the_heal() -> (
    None
):
    outage = 9.0
    healed = after_partition(KERNEL, TcpOptions(), Activity.ACTIVE, outage, Traffic())
    assert healed.survives
    assert healed.clock == "fault"
    # Sent up to 1 s into the outage: the heal is 8-9 s after the send, and the next
    # retransmission ~13-14.4 s after it.
    assert healed.low_s <= min(_sends_after(outage))
    assert healed.high_s >= max(_sends_after(outage - 1.0)) + 1.0
    assert healed.low_s > outage


def test_a_user_timeout_or_deadline_shorter_than_the_outage_cuts_the_connection() -> None:
    cut = after_partition(KERNEL, USER_TIMEOUT_5S, Activity.ACTIVE, 9.0, Traffic())
    assert (cut.outcome, cut.mechanism) == (Outcome.CUT, Mechanism.USER_TIMEOUT)
    deadline = after_partition(
        KERNEL, TcpOptions(), Activity.ACTIVE, 9.0, Traffic(), Deadlines(read_timeout_s=3.0)
    )
    assert (deadline.outcome, deadline.mechanism) == (Outcome.CUT, Mechanism.READ_TIMEOUT)
    # A user timeout longer than the outage's retransmission lets it through.
    long = TcpOptions(user_timeout_ms=30_000)
    assert after_partition(KERNEL, long, Activity.ACTIVE, 9.0, Traffic()).survives


def test_an_idle_connection_is_cut_by_a_partition_only_when_all_its_probes_are_lost() -> None:
    probes_in_the_outage = TcpOptions(keepalive_idle_s=3, keepalive_interval_s=1, keepalive_count=3)
    idle = Traffic(next_request_s=12.0)
    cut = after_partition(KERNEL, probes_in_the_outage, Activity.IDLE, 9.0, idle)
    assert (cut.outcome, cut.mechanism) == (Outcome.CUT, Mechanism.KEEPALIVE)
    assert after_partition(KERNEL, KEEPALIVE_10S, Activity.IDLE, 9.0, idle).survives
    # The fault came late after the last echo: the first probe falls in the outage.
    late = Traffic(next_request_s=12.0, fault_lag_s=2.0)
    both = TcpOptions(
        keepalive_idle_s=10, keepalive_interval_s=1, keepalive_count=3, user_timeout_ms=5000
    )
    assert after_partition(KERNEL, both, Activity.IDLE, 9.0, late).outcome is Outcome.CUT


def test_a_new_pod_on_the_address_resets_at_the_first_retransmission_after_it() -> None:
    reset = after_ip_reuse(KERNEL, TcpOptions(), Activity.ACTIVE, 3.0, Traffic())
    assert (reset.mechanism, reset.errnos) == (Mechanism.ADDRESS_REUSED, ("ECONNRESET",))
    # Sent up to 1 s after the fault: the new pod is there 2-3 s after the send, and the
    # retransmission after that leaves ~3.2-3.4 s after it.
    assert reset.low_s >= 3.2
    assert reset.high_s <= 3.4 * 1.06 + 0.5
    probe = after_ip_reuse(KERNEL, KEEPALIVE_10S, Activity.IDLE, 3.0, Traffic())
    # The 10 s probe, which the keepalive timer's jiffies may send a little early.
    assert probe.clock == "last-data"
    assert 9.9 < probe.low_s < 10.0 < probe.high_s
    assert after_ip_reuse(KERNEL, TcpOptions(), Activity.IDLE, 3.0, Traffic()).never


def test_only_a_window_filling_sender_is_cut_by_the_user_timeout_of_a_stalled_reader() -> None:
    small = stalled_reader(KERNEL, USER_TIMEOUT_5S, Activity.ACTIVE)
    assert small.never  # every request is acknowledged: no timer runs
    filling = stalled_reader(KERNEL, USER_TIMEOUT_5S, Activity.ACTIVE, fills_windows=True)
    assert (filling.outcome, filling.mechanism) == (Outcome.CUT, Mechanism.USER_TIMEOUT)
    assert 5.0 < filling.low_s < filling.high_s < 7.0
    assert stalled_reader(KERNEL, TcpOptions(), Activity.ACTIVE, fills_windows=True).never
    deadline = stalled_reader(KERNEL, TcpOptions(), Activity.ACTIVE, Deadlines(read_timeout_s=3))
    assert (deadline.outcome, deadline.mechanism) == (Outcome.CUT, Mechanism.READ_TIMEOUT)
    assert stalled_reader(KERNEL, KEEPALIVE_10S, Activity.IDLE).never  # probes answered


def test_behind_a_proxy_only_the_apps_deadline_or_the_proxys_own_socket_end_the_wait() -> None:
    proxied = behind_proxy(QUICK, TcpOptions(), Activity.ACTIVE, Traffic())
    assert proxied.mechanism is Mechanism.TCP_RETRIES2
    assert proxied.errnos == ("EOF", "ECONNRESET")
    # The app's options act on its loopback connection: expect() ignores them here.
    timing = FaultTiming()
    with_user_timeout = expect(
        Fault.SIDECAR, timing, QUICK, Profile("u", USER_TIMEOUT_5S), Activity.ACTIVE
    )
    assert (with_user_timeout.low_s, with_user_timeout.high_s) == (proxied.low_s, proxied.high_s)
    deadline = behind_proxy(
        QUICK, TcpOptions(), Activity.ACTIVE, Traffic(), Deadlines(read_timeout_s=3)
    )
    assert deadline.mechanism is Mechanism.READ_TIMEOUT
    proxy_timeout = behind_proxy(
        KERNEL, TcpOptions(), Activity.ACTIVE, Traffic(), proxy_timeout_s=5
    )
    assert proxy_timeout.mechanism is Mechanism.PROXY_TIMEOUT
    assert behind_proxy(KERNEL, TcpOptions(), Activity.IDLE, Traffic()).never


@pytest.mark.parametrize(
    ("measured", "recovered", "fault", "verdict"),
    [
        (None, 13.8, Fault.PARTITION, Verdict.SURVIVED),
        (5.5, None, Fault.PARTITION, Verdict.CUT),
        (5.5, None, Fault.STALLED_READER, Verdict.CUT),
        (5.5, None, Fault.IP_REUSE, Verdict.DETECTED),
        (None, None, Fault.PARTITION, Verdict.HANG),
    ],
)
def test_the_verdict_says_survived_or_cut_where_the_peer_remains(
    measured: float | None, recovered: float | None, fault: Fault, verdict: Verdict
) -> None:
    profile = Profile("p", USER_TIMEOUT_5S)
    result = Result(Case(fault, profile, Activity.ACTIVE))
    result.prediction = expect(fault, FaultTiming(), KERNEL, profile, Activity.ACTIVE)
    result.measured_s, result.recovered_s = measured, recovered
    result.errno = "ETIMEDOUT" if measured is not None else None
    assert result.verdict is verdict


def test_a_survival_the_model_did_not_predict_is_a_miss() -> None:
    profile = Profile("u", USER_TIMEOUT_5S)
    result = Result(Case(Fault.PARTITION, profile, Activity.ACTIVE))
    result.prediction = expect(Fault.PARTITION, FaultTiming(), KERNEL, profile, Activity.ACTIVE)
    assert result.prediction.outcome is Outcome.CUT
    result.recovered_s = 13.8
    assert (result.verdict, result.matches) == (Verdict.SURVIVED, False)


@pytest.mark.parametrize(
    "timing",
    [
        {"path_idle_timeout_s": 1.5},  # conntrack counts whole seconds
        {"path_idle_timeout_s": 1.0},
        {"outage_s": 0.5},
        {"reuse_after_s": 0.1},
        {"outage_s": 7200.0},
    ],
)
def test_fault_timings_out_of_range_are_refused(timing: dict[str, float]) -> None:
    with pytest.raises(SettingError):
        FaultTiming(**timing)
