"""The kernel model against the measurements in the kernel facts (docs/kernel-facts.md)."""

from __future__ import annotations

import pytest

from tcpecho.model import (
    FIRST_RTO_S,
    TIMER_SLACK,
    TLP_S,
    Activity,
    Failure,
    KernelSettings,
    Mechanism,
    Traffic,
    after_idle_expiry,
    first_rto_s,
    give_up_after_send,
    orphan_budget,
    orphan_retries,
    predict,
    retries2_budget,
    stuck_for_s,
)
from tcpecho.settings import Deadlines, Ping
from tcpecho.tcp.diag import Connection
from tcpecho.tcp.info import TcpInfo
from tcpecho.tcp.options import TcpOptions

DEFAULTS = KernelSettings()
ACTIVE, IDLE = Activity.ACTIVE, Activity.IDLE
KEEPALIVE_1_1_3 = TcpOptions(
    keepalive=True, keepalive_idle_s=1, keepalive_interval_s=1, keepalive_count=3
)


@pytest.mark.parametrize(
    ("kernel", "budget"),
    [
        (DEFAULTS, 924.6),  # 0.2 * (2^10 - 1) + 6 * 120
        (KernelSettings(tcp_retries2=5), 12.6),
        (KernelSettings(tcp_retries2=6), 25.4),
        (KernelSettings(tcp_rto_max_s=1.0), 14.4),
    ],
)
def test_retries2_budget_is_the_kernels_model_timeout(
    kernel: KernelSettings, budget: float
) -> None:
    assert retries2_budget(kernel) == pytest.approx(budget)


@pytest.mark.parametrize(
    ("kernel", "connection", "failure", "activity", "measured", "errno"),
    [
        # (settings, fault, mode) -> seconds measured on this machine (kernel facts table)
        (
            KernelSettings(tcp_retries2=5),
            TcpOptions(),
            Failure.SILENT,
            ACTIVE,
            13.3,
            "ETIMEDOUT",
        ),
        (
            KernelSettings(tcp_retries2=6),
            TcpOptions(),
            Failure.SILENT,
            ACTIVE,
            26.6,
            "ETIMEDOUT",
        ),
        (
            KernelSettings(tcp_rto_max_s=1.0),
            TcpOptions(),
            Failure.SILENT,
            ACTIVE,
            15.0,
            "ETIMEDOUT",
        ),
        (
            DEFAULTS,
            TcpOptions(user_timeout_ms=3000),
            Failure.SILENT,
            ACTIVE,
            3.42,
            "ETIMEDOUT",
        ),
        (DEFAULTS, KEEPALIVE_1_1_3, Failure.SILENT, IDLE, 4.1, "ETIMEDOUT"),
        (
            DEFAULTS,
            TcpOptions(
                user_timeout_ms=3000,
                keepalive=True,
                keepalive_idle_s=1,
                keepalive_interval_s=1,
                keepalive_count=3,
            ),
            Failure.SILENT,
            IDLE,
            3.1,
            "ETIMEDOUT",
        ),
        (
            KernelSettings(tcp_retries2=5),
            TcpOptions(),
            Failure.UNREACHABLE,
            ACTIVE,
            15.1,
            "ENETUNREACH",
        ),
        (
            DEFAULTS,
            TcpOptions(recverr=True),
            Failure.UNREACHABLE,
            ACTIVE,
            0.21,
            "ENETUNREACH",
        ),
        (DEFAULTS, TcpOptions(), Failure.CLOSED, ACTIVE, 0.01, "EOF"),
        (
            DEFAULTS,
            TcpOptions(),
            Failure.SILENT,
            ACTIVE,
            939.0,
            "ETIMEDOUT",
        ),  # the field report
    ],
)
def test_predictions_contain_what_was_measured(
    kernel: KernelSettings,
    connection: TcpOptions,
    failure: Failure,
    activity: Activity,
    measured: float,
    errno: str,
) -> None:
    prediction = predict(kernel, connection, failure, activity)
    assert prediction.contains(measured), (prediction, measured)
    assert errno in prediction.errnos


def test_the_default_hang_is_about_fifteen_and_a_half_minutes() -> None:
    prediction = predict(DEFAULTS, TcpOptions(), Failure.SILENT, ACTIVE)
    assert prediction.mechanism is Mechanism.TCP_RETRIES2
    # Never before the budget plus the first retransmission's lead...
    assert prediction.low_s >= 924.6 + 0.39
    # ...and at most one capped (120 s) step after it.
    assert prediction.high_s <= 924.6 + 0.5 + 120
    assert not prediction.contains(900.0)


def test_the_user_timeout_bounds_the_hang() -> None:
    prediction = predict(DEFAULTS, TcpOptions(user_timeout_ms=30000), Failure.SILENT, ACTIVE)
    assert prediction.mechanism is Mechanism.USER_TIMEOUT
    assert 30.39 <= prediction.low_s <= prediction.high_s <= 33.0


def test_keepalive_does_nothing_while_data_is_unacknowledged() -> None:
    with_keepalive = predict(DEFAULTS, KEEPALIVE_1_1_3, Failure.SILENT, ACTIVE)
    without = predict(DEFAULTS, TcpOptions(), Failure.SILENT, ACTIVE)
    assert (with_keepalive.low_s, with_keepalive.high_s) == (without.low_s, without.high_s)
    assert with_keepalive.mechanism is Mechanism.TCP_RETRIES2


def test_only_keepalive_notices_an_idle_connection() -> None:
    for connection, deadlines in (
        (TcpOptions(), Deadlines()),
        (TcpOptions(user_timeout_ms=5000), Deadlines()),
        (TcpOptions(), Deadlines(read_timeout_s=3.0)),
        (TcpOptions(recverr=True), Deadlines()),
    ):
        for failure in (Failure.SILENT, Failure.UNREACHABLE):
            prediction = predict(DEFAULTS, connection, failure, IDLE, deadlines)
            assert prediction.never
            assert prediction.contains(None)
            assert not prediction.contains(60.0)
    keepalive = predict(DEFAULTS, KEEPALIVE_1_1_3, Failure.SILENT, IDLE)
    assert keepalive.clock == "last-data"
    assert not keepalive.contains(None)


def test_keepalive_uses_the_namespace_sysctls_for_what_the_socket_leaves_unset() -> None:
    kernel = KernelSettings(
        tcp_keepalive_time_s=10, tcp_keepalive_intvl_s=2, tcp_keepalive_probes=4
    )
    prediction = predict(kernel, TcpOptions(keepalive=True), Failure.SILENT, IDLE)
    assert prediction.low_s == 18.0  # 10 + 4 * 2


def test_the_read_timeout_wins_when_it_is_shorter() -> None:
    prediction = predict(
        DEFAULTS, TcpOptions(), Failure.SILENT, ACTIVE, Deadlines(read_timeout_s=3.0)
    )
    assert prediction.errnos == ("READ_TIMEOUT",)
    assert prediction.mechanism is Mechanism.READ_TIMEOUT
    assert prediction.contains(3.0)
    longer = predict(
        DEFAULTS,
        TcpOptions(user_timeout_ms=5000),
        Failure.SILENT,
        ACTIVE,
        Deadlines(read_timeout_s=60.0),
    )
    assert longer.mechanism is Mechanism.USER_TIMEOUT


def test_a_known_rto_of_a_fast_link_changes_nothing_and_a_slow_links_is_its_own() -> None:
    kernel = KernelSettings(tcp_retries2=5)
    assumed = predict(kernel, TcpOptions(), Failure.SILENT, ACTIVE)
    # One prediction wherever it is shown: explain knows no connection, the client and the
    # lab know theirs; for an RTO of a fast link the three must say the same.
    for rto in (0.2, FIRST_RTO_S[0], 0.208, FIRST_RTO_S[1]):
        assert predict(kernel, TcpOptions(), Failure.SILENT, ACTIVE, first_rto_s=rto) == assumed
    # A slow link's RTO is its own: every expiry comes later.
    slow = predict(kernel, TcpOptions(), Failure.SILENT, ACTIVE, first_rto_s=0.3)
    assert slow.low_s > assumed.low_s


def test_an_rto_of_exactly_200ms_costs_a_step() -> None:
    """Why the model's first RTO starts at 204 ms: 200 ms * (2 + 4 + ... + 32) = 12.4 s
    falls short of the 12.6 s budget, so unless the timers run late enough to make up the
    0.2 s the kernel waits one more (doubled) step."""
    kernel = KernelSettings(tcp_retries2=5)
    on_time, _ = give_up_after_send(kernel, 0.2, TLP_S[0], TIMER_SLACK[0])
    assert on_time > 25
    typical, _ = give_up_after_send(kernel, FIRST_RTO_S[0], TLP_S[0], TIMER_SLACK[0])
    assert typical < 14


def test_settings_come_from_sysctls_and_the_socket_options() -> None:
    sysctls = {"net.ipv4.tcp_retries2": 5, "net.ipv4.tcp_rto_max_ms": 1000}
    kernel = KernelSettings.read(sysctls.get)
    assert (kernel.tcp_retries2, kernel.tcp_rto_max_s, kernel.tcp_keepalive_probes) == (5, 1.0, 9)
    # Tuning keepalive switches it on, for the model as for the socket.
    tuned = predict(kernel, TcpOptions(keepalive_idle_s=3), Failure.SILENT, IDLE)
    assert tuned.mechanism is Mechanism.KEEPALIVE
    assert tuned.low_s == 3 + 9 * 75  # the namespace's interval and count


def test_descriptions_read_like_the_report() -> None:
    assert predict(DEFAULTS, TcpOptions(), Failure.CLOSED, ACTIVE).describe() == "< 1 s"
    assert predict(DEFAULTS, TcpOptions(), Failure.SILENT, IDLE).describe() == "never"
    assert (
        predict(DEFAULTS, TcpOptions(user_timeout_ms=3000), Failure.SILENT, ACTIVE).describe()
        == "3.39-3.93 s"
    )


# Connecting to an address that never answers (docs/kernel-facts.md, measured here on
# Linux 6.18 with tcp_syn_linear_timeouts=4): the budget is the SYN RTO series in time,
# 1 s doubling, and the kernel gives up at the first SYN timer past it.
@pytest.mark.parametrize(
    ("tcp", "measured", "mechanism"),
    [
        (TcpOptions(syn_retries=1), 3.05, Mechanism.SYN_RETRIES),
        (TcpOptions(syn_retries=2), 7.14, Mechanism.SYN_RETRIES),
        (TcpOptions(syn_retries=3), 19.45, Mechanism.SYN_RETRIES),
        (TcpOptions(syn_retries=4), 35.55, Mechanism.SYN_RETRIES),
        (TcpOptions(), 133.65, Mechanism.SYN_RETRIES),  # tcp_syn_retries=6
        (TcpOptions(user_timeout_ms=3000), 3.01, Mechanism.USER_TIMEOUT),
        (TcpOptions(user_timeout_ms=20000), 20.01, Mechanism.USER_TIMEOUT),
    ],
)
def test_connect_predictions_contain_what_was_measured(
    tcp: TcpOptions, measured: float, mechanism: Mechanism
) -> None:
    prediction = predict(DEFAULTS, tcp, Failure.SILENT, Activity.CONNECTING)
    assert prediction.contains(measured), (prediction, measured)
    assert (prediction.mechanism, prediction.errnos) == (mechanism, ("ETIMEDOUT",))


def test_the_connect_budget_does_not_depend_on_the_linear_syn_timeouts() -> None:
    """Linear SYN timeouts send more SYNs within the budget; they do not lengthen it."""
    older = KernelSettings(tcp_syn_linear_timeouts=0)
    plain = predict(older, TcpOptions(), Failure.SILENT, Activity.CONNECTING)
    assert 127.0 <= plain.low_s <= 128.0  # 1 + 2 + ... + 64, the classic figure
    deadline = Deadlines(connect_timeout_s=5.0)
    bounded = predict(DEFAULTS, TcpOptions(), Failure.SILENT, Activity.CONNECTING, deadline)
    assert (bounded.mechanism, bounded.errnos) == (Mechanism.CONNECT_TIMEOUT, ("CONNECT_TIMEOUT",))
    assert bounded.contains(5.0)


def test_a_peer_that_acknowledges_but_never_answers_is_bounded_only_by_the_read_timeout() -> None:
    # Measured (kernel facts): TCP_USER_TIMEOUT 3 s, server SIGSTOPped: nothing after 12 s.
    stalled = predict(DEFAULTS, TcpOptions(user_timeout_ms=3000), Failure.STALLED, ACTIVE)
    assert stalled.never
    assert not stalled.contains(12.0)
    bounded = predict(DEFAULTS, TcpOptions(), Failure.STALLED, ACTIVE, Deadlines(read_timeout_s=2))
    assert bounded.mechanism is Mechanism.READ_TIMEOUT
    assert bounded.contains(2.0)
    assert predict(DEFAULTS, KEEPALIVE_1_1_3, Failure.STALLED, IDLE).never  # probes are answered


def test_sysctls_a_kernel_lacks_keep_their_fixed_values() -> None:
    present = {"net.ipv4.tcp_retries2": 8, "net.ipv4.tcp_keepalive_time": 60}
    kernel = KernelSettings.read(present.get)
    assert (kernel.tcp_retries2, kernel.tcp_keepalive_time_s) == (8, 60)
    assert kernel.tcp_rto_max_s == 120.0  # TCP_RTO_MAX, fixed before tcp_rto_max_ms existed
    assert kernel.tcp_syn_linear_timeouts == 0  # without the sysctl every SYN timeout doubles
    assert "net.ipv4.tcp_rto_max_ms" in kernel.absent
    assert "net.ipv4.tcp_retries2" not in kernel.absent
    here = KernelSettings.here()  # this test's own namespace, read from /proc/sys
    assert here.sysctls()["net.ipv4.tcp_retries2"] == _read("/proc/sys/net/ipv4/tcp_retries2")


def _read(path: str) -> int:
    with open(path) as handle:
        return int(handle.read())


def _waiting(
    state: str,
    timer: str,
    expires_ms: int,
    *,
    retransmits: int = 0,
    probes: int = 0,
    backoff: int = 0,
    rto_ms: float = 204.0,
    unacked: int = 0,
    last_data_sent_ms: int = 0,
    last_data_recv_ms: int = 0,
) -> Connection:
    """A connection as the socket diagnostics list it, with these tcp_info counters."""
    info = TcpInfo(
        state=state,
        retransmits=retransmits,
        probes=probes,
        backoff=backoff,
        rto_ms=rto_ms,
        unacked=unacked,
        lost=0,
        total_retrans=retransmits,
        rtt_ms=0.1,
        rttvar_ms=0.05,
        last_data_sent_ms=last_data_sent_ms,
        last_data_recv_ms=last_data_recv_ms,
        last_ack_recv_ms=last_data_recv_ms,
    )
    return Connection(
        local="10.244.1.2:42010",
        peer="10.96.0.10:8000",
        state=state,
        inode=1,
        timer=timer,
        timer_expires_ms=expires_ms,
        send_queue=0,
        receive_queue=0,
        info=info,
        bytes_acked=0,
        bytes_received=0,
    )


def test_the_time_stuck_is_rebuilt_from_where_the_timers_stand() -> None:
    """Three RTO expiries (0.204 s doubled twice, now 1.632 s), the timer armed 0.632 s ago:
    a tail-loss probe, 0.204 * (2^3 - 1) s of steps at the model's mean slack, and the step
    the timer has run."""
    busy = _waiting(
        "ESTABLISHED",
        "on",
        1000,
        retransmits=3,
        backoff=3,
        rto_ms=1632.0,
        unacked=1,
        last_data_sent_ms=640,
    )
    assert first_rto_s(busy, DEFAULTS) == pytest.approx(0.204)
    assert stuck_for_s(busy, DEFAULTS) == pytest.approx(0.2 + 0.204 * 7 * 1.03 + 0.632)
    # A connect whose SYN went out three times: at 0 s, 1 s and 2 s (1.03 s steps).
    connecting = _waiting("SYN_SENT", "on", 400, retransmits=2, rto_ms=1000.0, unacked=1)
    assert stuck_for_s(connecting, DEFAULTS) == pytest.approx(2 * 1.03 + 0.6)
    # Keepalive probes unanswered: the idle clock, since the last data received.
    probing = _waiting("ESTABLISHED", "keepalive", 5000, probes=2, last_data_recv_ms=7300000)
    assert stuck_for_s(probing, DEFAULTS) == 7300.0


def test_a_healthy_connection_is_not_stuck_and_a_capped_rto_hides_the_first() -> None:
    assert stuck_for_s(_waiting("ESTABLISHED", "off", 0), DEFAULTS) is None
    capped = _waiting("ESTABLISHED", "on", 60000, retransmits=12, backoff=12, rto_ms=120000.0)
    assert first_rto_s(capped, DEFAULTS) is None  # 120 s over 2^12 is no RTO it began with


def test_an_orphan_is_bounded_by_tcp_orphan_retries_in_place_of_tcp_retries2() -> None:
    """The kernel's tcp_orphan_retries(): 0 stands for 8 retries while the RTO is below its
    cap (0.2 s x (2^9 - 1) = 102.2 s), and for none once it has reached it."""
    assert (orphan_retries(DEFAULTS), orphan_retries(DEFAULTS, rto_capped=True)) == (8, 0)
    assert orphan_budget(DEFAULTS) == pytest.approx(102.2)
    assert orphan_retries(KernelSettings(tcp_orphan_retries=3), rto_capped=True) == 3
    orphan = predict(DEFAULTS, TcpOptions(), Failure.SILENT, Activity.ORPHANED)
    busy = predict(DEFAULTS, TcpOptions(), Failure.SILENT, ACTIVE)
    assert orphan.mechanism is Mechanism.ORPHAN_RETRIES
    assert orphan.clock == busy.clock == "request"
    # The budget plus the lead, to the expiry past it (seen: 107-112 s after the send).
    assert 104 <= orphan.low_s <= orphan.high_s <= 116
    assert busy.low_s > 900
    # The sysctl is the namespace's; TCP_USER_TIMEOUT, set before the close, still rules.
    longer = predict(
        KernelSettings(tcp_orphan_retries=15), TcpOptions(), Failure.SILENT, Activity.ORPHANED
    )
    assert (longer.low_s, longer.high_s) == (busy.low_s, busy.high_s)
    bounded = predict(DEFAULTS, TcpOptions(user_timeout_ms=5000), Failure.SILENT, Activity.ORPHANED)
    assert bounded.mechanism is Mechanism.USER_TIMEOUT
    assert 5 < bounded.low_s < bounded.high_s < 6.5


# -- a library's own pings (gRPC's HTTP/2 PING) ---------------------------------------------------

PINGED = TcpOptions(user_timeout_ms=5000, keepalive=False)  # gRPC sets keepalive_timeout_ms


def test_a_ping_watches_an_idle_call_and_the_user_timeout_ends_it() -> None:
    """The ping goes one interval after the last read, as sent data: the user timeout on it
    ends a vanished peer's connection (measured in the cookbook: 5.50 s from the ping)."""
    ping = Ping(10.0, 60.0, without_calls=True)
    idle = predict(DEFAULTS, PINGED, Failure.SILENT, Activity.IDLE, Deadlines(ping=ping))
    busy = predict(DEFAULTS, PINGED, Failure.SILENT, Activity.ACTIVE, Deadlines(ping=ping))
    assert idle.mechanism is Mechanism.USER_TIMEOUT
    assert idle.clock == "last-data"
    assert 10 + 5.0 < idle.low_s < 10 + 5.5 < idle.high_s < 10 + 6.5
    # The ping does not change a busy connection's fate: the user timeout comes first.
    assert busy == predict(DEFAULTS, PINGED, Failure.SILENT, Activity.ACTIVE)
    without = predict(DEFAULTS, PINGED, Failure.SILENT, Activity.IDLE)
    assert without.never


def test_a_stalled_peer_is_noticed_by_the_pings_timeout_not_the_user_timeout() -> None:
    """Its kernel acknowledges the ping, its program never answers: measured with grpcio
    1.85, keepalive 1 s and grpc.http2.ping_timeout_ms 3 s, the call failed after 4.01-4.02 s
    (three runs), not at keepalive_timeout_ms."""
    ping = Ping(1.0, 3.0, without_calls=True)
    stalled = predict(DEFAULTS, PINGED, Failure.STALLED, Activity.IDLE, Deadlines(ping=ping))
    assert stalled.mechanism is Mechanism.PING_TIMEOUT
    assert stalled.contains(4.01)
    assert stalled.contains(4.02)
    busy = predict(DEFAULTS, PINGED, Failure.STALLED, Activity.ACTIVE, Deadlines(ping=ping))
    assert busy.mechanism is Mechanism.PING_TIMEOUT
    assert busy.low_s <= 3.0 < 4.0 < busy.high_s


def test_pings_that_stop_after_a_few_without_data_watch_nothing_for_long() -> None:
    """gRPC's default grpc.http2.max_pings_without_data=2: two pings, then none (seen with
    grpcio 1.85's keepalive trace while a call waited)."""
    limited = Deadlines(ping=Ping(1.0, 60.0, limit_without_data=2))
    assert predict(DEFAULTS, PINGED, Failure.SILENT, Activity.IDLE, limited).never


def test_pings_on_an_idle_pooled_connection_keep_the_middleboxs_flow() -> None:
    """Only pings that also go without calls keep an idle pooled connection's flow."""
    timeout = 350.0
    for without_calls, survives in ((True, True), (False, False)):
        ping = Ping(60.0, 60.0, without_calls=without_calls)
        after = after_idle_expiry(
            DEFAULTS,
            PINGED,
            Activity.IDLE,
            timeout,
            Traffic(next_request_s=timeout + 1),
            Deadlines(ping=ping),
        )
        assert after.survives is survives
    late = Ping(400.0, 60.0, without_calls=True)  # after the flow is forgotten
    after = after_idle_expiry(
        DEFAULTS, PINGED, Activity.IDLE, timeout, Traffic(), Deadlines(ping=late)
    )
    assert after.mechanism is Mechanism.USER_TIMEOUT
    assert 400 + 5 < after.low_s < after.high_s < 400 + 7
