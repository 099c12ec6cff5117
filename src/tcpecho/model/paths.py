"""The middleboxes users meet on a path (``PATHS``): how long each keeps an idle TCP flow, and
whether it then drops the flow's packets silently or answers them with RST.

Each value is the vendor's default, with the page that states it (``docs/explain.md`` lists
them); a middlebox whose value could not be sourced is not here. The model takes the
shortest idle timeout on the path (``model.field.after_idle_expiry``); ``explain`` and
``watch`` take it from ``--path NAME`` or ``--path-idle-timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PathPreset:
    """A middlebox that forgets idle flows: its default idle timeout and what it does with
    a forgotten flow's next packet."""

    name: str
    description: str
    idle_timeout_s: float
    resets: bool  # answers a forgotten flow's packets with RST (else drops them silently)
    source: str  # the vendor's page that states the value


PATHS = {
    preset.name: preset
    for preset in (
        PathPreset(
            "aws-nlb",
            "AWS Network Load Balancer, TCP listener (60-6000 s configurable)",
            350.0,
            False,
            "https://docs.aws.amazon.com/elasticloadbalancing/latest/network/update-idle-timeout.html",
        ),
        PathPreset(
            "azure-lb",
            "Azure Load Balancer rule, TCP reset off (the default; 4-100 min configurable)",
            240.0,
            False,
            "https://learn.microsoft.com/azure/load-balancer/load-balancer-tcp-reset",
        ),
        PathPreset(
            "azure-lb-reset",
            "Azure Load Balancer rule with TCP reset on idle enabled",
            240.0,
            True,
            "https://learn.microsoft.com/azure/load-balancer/load-balancer-tcp-reset",
        ),
        PathPreset(
            "gcp-cloud-nat",
            "Google Cloud NAT, established TCP connections (tcpEstablishedIdleTimeoutSec)",
            1200.0,
            False,
            "https://cloud.google.com/compute/docs/reference/rest/v1/routers",
        ),
        PathPreset(
            "kube-proxy-ipvs",
            "kube-proxy in IPVS mode: the kernel's IPVS TCP timeout (ipvsadm -L --timeout)",
            900.0,
            False,
            "https://github.com/torvalds/linux/blob/master/net/netfilter/ipvs/ip_vs_proto_tcp.c",
        ),
        PathPreset(
            "nf-conntrack",
            "a Linux node's conntrack (kube-proxy iptables or nftables mode): "
            "nf_conntrack_tcp_timeout_established",
            432000.0,
            False,
            "https://docs.kernel.org/networking/nf_conntrack-sysctl.html",
        ),
    )
}
PATH_NAMES = tuple(PATHS)
