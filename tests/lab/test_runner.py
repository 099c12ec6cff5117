"""The runner's plans and words, apart from running them: which sysctls a client namespace
gets, and what a case's progress line says."""

from __future__ import annotations

import math

from tcpecho.lab.runner import (
    QUICK_RETRIES2,
    QUICK_RTO_MAX_MS,
    KernelBudget,
    expectations,
    rto_max_supported,
    waiting_line,
)
from tcpecho.model import Activity, Mechanism, Prediction


def test_quick_shortens_only_the_baseline_and_gives_way_to_explicit_sysctls() -> None:
    quick = KernelBudget(quick=True)
    shortened = (
        {"net.ipv4.tcp_rto_max_ms": QUICK_RTO_MAX_MS}
        if rto_max_supported()
        else {"net.ipv4.tcp_retries2": QUICK_RETRIES2}
    )
    assert quick.shortens
    assert quick.sysctls(baseline=True) == shortened
    assert quick.sysctls(baseline=False) == {}
    # --tcp-retries2 (or --rto-max) sets every namespace, and --quick then changes nothing:
    # no case may be marked as shortened by it.
    explicit = KernelBudget(quick=True, tcp_retries2=8)
    assert not explicit.shortens
    assert explicit.sysctls(baseline=True) == {"net.ipv4.tcp_retries2": 8}
    assert explicit.sysctls(baseline=False) == {"net.ipv4.tcp_retries2": 8}
    assert not KernelBudget().shortens


BUSY = Prediction(929.0, 985.0, "request", Mechanism.TCP_RETRIES2, ("ETIMEDOUT",))
IDLE_NEVER = Prediction(math.inf, math.inf, "last-data", Mechanism.NOTHING, ())
KEEPALIVE = Prediction(11.0, 12.2, "last-data", Mechanism.KEEPALIVE_USER_TIMEOUT, ("ETIMEDOUT",))


def test_a_waiting_case_counts_on_the_clock_of_its_range() -> None:
    assert waiting_line(KEEPALIVE, 9.3, 12.3) == (
        "waiting   12.3 s since the last data (expected 11.0-12.2 s)"
    )
    assert waiting_line(BUSY, 5.0, 4.1) == (
        "waiting    4.1 s since the unanswered request (expected 929-985 s)"
    )
    # tcpecho's active client sends its next request up to a second after the fault.
    assert waiting_line(BUSY, 0.4, None) == (
        "waiting    0.4 s after the fault, for the next request (expected 929-985 s from it)"
    )
    # A program the cookbook watches for less than its range says so.
    assert waiting_line(KEEPALIVE, 9.3, 12.3, "up to 10.0 s") == (
        "waiting   12.3 s since the last data (expected 11.0-12.2 s; watched up to 10.0 s)"
    )
    assert waiting_line(IDLE_NEVER, 14.0, 16.0, "up to 15.0 s") == (
        "waiting   14.0 s after the fault (expected never: nothing notices an idle "
        "connection without keepalive; watched up to 15.0 s)"
    )


def test_a_program_not_yet_seen_busy_or_idle_is_expected_both_ways() -> None:
    assert expectations({Activity.ACTIVE: BUSY, Activity.IDLE: IDLE_NEVER}) == (
        "expected: busy 929-985 s, idle never"
    )
