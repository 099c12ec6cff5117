"""How long a connection has been waiting, rebuilt from the kernel's timers: the time since
its first unacknowledged send (or its connect, or the last data received), and the RTO its
wait began with.

The kernel does not say when a wait began, only where its timers are now (``tcp_info``'s
``backoff``, ``retransmits``, ``rto``, ``last_data_sent``, and the timer's expiry as the
socket diagnostics report it). Linux retransmits to a silent peer on the fixed schedule
``kernel`` describes, so running that schedule forward to where the timers stand gives the
time back; ``watch`` shows it next to the prediction, on the same clock.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING

from tcpecho.model.kernel import (
    FIRST_RTO_S,
    TIMER_SLACK,
    TLP_S,
    KernelSettings,
    retransmission_expiries,
    syn_expiries,
)

if TYPE_CHECKING:  # only the type: the model's users need not load the diagnostics
    from tcpecho.tcp.diag import Connection

# The middle of the model's ranges, for reconstructing the past rather than bounding it.
_TLP_MID_S = sum(TLP_S) / 2
_FIRST_RTO_MID_S = sum(FIRST_RTO_S) / 2
_SLACK_MID = sum(TIMER_SLACK) / 2


def first_rto_s(connection: Connection, kernel: KernelSettings) -> float | None:
    """The RTO the current wait started with: the RTO doubles at each expiry and tcp_info's
    ``backoff`` counts the doublings, so the RTO now over 2^backoff. None once the doubling
    has reached ``tcp_rto_max`` (the division no longer undoes it) or when unknown."""
    info = connection.info
    if info is None or info.rto_ms <= 0:
        return None
    rto_s = info.rto_ms / 1000
    if info.backoff > 0 and rto_s >= kernel.tcp_rto_max_s:
        return None
    return rto_s / (1 << info.backoff)


def stuck_for_s(connection: Connection, kernel: KernelSettings) -> float | None:
    """How long the connection has been stuck, on its prediction's clock; None when it is not.

    The kernel does not say when the unacknowledged data left, only where its timers are;
    see ``_retransmitting_for_s`` for how that time is rebuilt."""
    info = connection.info
    if info is None or not connection.stuck:
        return None
    if connection.state == "SYN_SENT":
        return _connecting_for_s(connection, kernel)
    if info.unacked > 0:
        return _retransmitting_for_s(connection, kernel)
    if connection.timer == "persist":
        return info.last_ack_recv_ms / 1000  # zero-window probes: since the peer last answered
    return info.last_data_recv_ms / 1000  # keepalive probes: the idle clock, as the model's


def _retransmitting_for_s(connection: Connection, kernel: KernelSettings) -> float:
    """Seconds since the first unacknowledged send, rebuilt from the kernel's state.

    For a silent peer Linux retransmits on a fixed schedule (docs/kernel-facts.md): a
    tail-loss probe ~0.2 s after the send, the first RTO retransmission r0 after that, and
    each later one after a doubled RTO, capped at tcp_rto_max. tcp_info's ``backoff`` b
    counts the RTO expiries so far, so the last retransmission left about
    TLP + r0 (2^b - 1) after the send (capped steps counted at tcp_rto_max): the model's
    ``retransmission_expiries``, whose b-th expiry it is. The time since then is what the
    current step has run: tcp_info's ``last_data_sent``, or the current RTO minus what is
    left on the timer; the smaller, since TCP_USER_TIMEOUT arms the last timer shorter than
    the RTO.

    The approximation: each past expiry fired late by a part of its timer-wheel granularity
    (up to 1/8 of the step: 4, 32 and 256 ms for timers under 0.26, 2 and 16 s at HZ=250),
    which is taken at the model's mean slack, 3 %. By 20 s (b = 6) that stays within about
    0.3 s; later, as the steps reach 26 s and beyond, it grows to a few percent of the time.
    ICMP errors that undo backoffs (RFC 6069) make it undercount.
    """
    info = connection.info
    assert info is not None
    r0 = first_rto_s(connection, kernel) or _FIRST_RTO_MID_S
    if info.backoff == 0:
        last_retransmission_at = _TLP_MID_S
    else:
        expiries = retransmission_expiries(kernel, r0, _TLP_MID_S, _SLACK_MID)
        last_retransmission_at = next(islice(expiries, info.backoff - 1, None))
    return last_retransmission_at + _current_step_s(connection)


def _connecting_for_s(connection: Connection, kernel: KernelSettings) -> float:
    """Seconds since the connect: the SYN timer fires on its own schedule (1 s steps, then
    doubling) and ``retransmits`` counts the SYNs resent."""
    info = connection.info
    assert info is not None
    if info.retransmits == 0:
        return _current_step_s(connection)
    expiries = syn_expiries(kernel, _SLACK_MID)
    return next(islice(expiries, info.retransmits - 1, None)) + _current_step_s(connection)


def _current_step_s(connection: Connection) -> float:
    """How long the retransmission timer has run since it was last armed."""
    info = connection.info
    assert info is not None
    since_armed = max(0.0, info.rto_ms - connection.timer_expires_ms) / 1000
    if connection.state == "SYN_SENT":
        return since_armed  # a SYN carries no data: last_data_sent does not move
    since_sent = info.last_data_sent_ms / 1000
    return min(since_sent, since_armed) if connection.timer == "on" else since_sent
