"""The runner's plans, apart from running them: which sysctls a client namespace gets."""

from __future__ import annotations

from tcpecho.lab.runner import QUICK_RETRIES2, QUICK_RTO_MAX_MS, KernelBudget, rto_max_supported


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
