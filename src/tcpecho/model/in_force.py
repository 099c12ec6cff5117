"""The timers a socket runs with: its own options where it set them, else its network
namespace's sysctls (``InForce``).

Linux falls back per option: a socket without TCP_KEEPIDLE probes after the namespace's
``tcp_keepalive_time``, one without TCP_SYNCNT retries ``tcp_syn_retries`` times. The model,
``explain``, ``watch`` and the lab all ask this one place, with the sysctls of the namespace
the socket lives in, which is not always the one asking (the lab's client namespace).
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpecho.model.kernel import KernelSettings
from tcpecho.tcp.options import TcpOptions


@dataclass(frozen=True)
class Keepalive:
    """Keepalive as it runs: idle time, interval and probe count, whichever side set them."""

    idle_s: int
    interval_s: int
    count: int
    idle_from_namespace: bool  # the socket set no TCP_KEEPIDLE: tcp_keepalive_time holds

    @property
    def probing_s(self) -> int:
        """Idle time plus every probe's interval: when the count of probes runs out."""
        return self.idle_s + self.interval_s * self.count


@dataclass(frozen=True)
class InForce:
    """What decides when a socket gives up: ``user_timeout_s`` 0 is off, ``keepalive`` None
    is off."""

    user_timeout_s: float
    keepalive: Keepalive | None
    syn_retries: int
    syn_retries_from_socket: bool  # TCP_SYNCNT, rather than the namespace's tcp_syn_retries
    recverr: bool

    @classmethod
    def of(cls, tcp: TcpOptions, kernel: KernelSettings) -> InForce:
        """``tcp``'s options over ``kernel``'s sysctls (those of the socket's namespace)."""
        keepalive = None
        if tcp.keepalive_enabled:
            keepalive = Keepalive(
                idle_s=tcp.keepalive_idle_s or kernel.tcp_keepalive_time_s,
                interval_s=tcp.keepalive_interval_s or kernel.tcp_keepalive_intvl_s,
                count=tcp.keepalive_count or kernel.tcp_keepalive_probes,
                idle_from_namespace=tcp.keepalive_idle_s is None,
            )
        return cls(
            user_timeout_s=(tcp.user_timeout_ms or 0) / 1000,
            keepalive=keepalive,
            syn_retries=tcp.syn_retries or kernel.tcp_syn_retries,
            syn_retries_from_socket=tcp.syn_retries is not None,
            recverr=bool(tcp.recverr),
        )
