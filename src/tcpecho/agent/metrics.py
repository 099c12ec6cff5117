"""The node agent's metrics, ``tcpecho_node_*``: what the last snapshot of the node showed, per
pod, and what the agent has done since it started (``NodeCollector``).

A scrape reads, it never looks: probes hit ``/metrics`` every few seconds, while a snapshot
of the node may take seconds. ``record`` takes each snapshot once, as it arrives, and builds
from it every gauge the scrapes serve until the next one: connections by state, stuck ones,
the longest stuck time and the soonest give-up, connections at risk by code and by peer
(a Service's address, or other). It adds the snapshot's skipped and failed counts to the
counters and its duration to the histogram. A snapshot that failed whole
(``record_failure``) leaves the last one's gauges in place and is counted.

Per pod, never per connection, so the series stay bounded by what runs on the node: its pods
and namespaces, TCP's states, explain's trap codes, two kinds of peer. A process in no pod
(the host's, or a socket no process holds) is ``namespace=""`` and ``pod=""``; a pod whose
names no kubelet log directory gives is ``namespace=""`` and its UID as ``pod``. Label values
are other people's text and are kept as read: the exposition format escapes them.

Each part of the gauges is built on its own, as node_exporter runs each collector on its
own: a part that fails (a snapshot with a value no part expected) is missing from the
scrapes and counted in ``tcpecho_node_errors_total{source="metrics:PART"}``; the others
are served.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from tcpecho.settings import SettingError
from tcpecho.tcp import names
from tcpecho.watch.look import NodeSnapshot, Watched
from tcpecho.watch.pods import PodIdentity

# ss's short names for TCP's states, as the watch table shows them: one map, one home.
from tcpecho.watch.render import SS_STATES as SS_STATES

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PodKey = tuple[str, str]  # (namespace, pod) as labelled

# From a few namespaces on an idle node (~10 ms) to tens of thousands of sockets over
# dozens of namespaces (seconds), and a snapshot long enough to miss its interval.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)
# What a snapshot counts as skipped, each shown from the start (0 until the first).
SKIPPED_KINDS = ("namespace", "process", "socket")
SNAPSHOT_SOURCE = "snapshot"  # errors_total's source for a snapshot that failed whole
SERVICE_PEER, OTHER_PEER = "service", "other"
# Every family the collector serves, for the manifests' queries to be checked against.
METRIC_NAMES = (
    "tcpecho_node_connections",
    "tcpecho_node_stuck_connections",
    "tcpecho_node_longest_stuck_seconds",
    "tcpecho_node_soonest_give_up_seconds",
    "tcpecho_node_at_risk_connections",
    "tcpecho_node_namespaces",
    "tcpecho_node_snapshot_duration_seconds",
    "tcpecho_node_skipped_total",
    "tcpecho_node_errors_total",
)
_POD = ["namespace", "pod"]


def service_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The Services' address ranges (``--service-cidr 10.96.0.0/16``); ``SettingError`` on
    ``service_cidr`` for one that is no network (host bits set are refused, as a typo)."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip()))
        except ValueError as error:
            raise SettingError("service_cidr", f"{cidr!r} is no address range: {error}") from None
    return tuple(networks)


def pod_key(pod: PodIdentity | None) -> PodKey:
    """A connection's (namespace, pod) labels: empty for the host's; a pod the kubelet's logs
    do not name, by its UID."""
    if pod is None:
        return ("", "")
    return (pod.namespace or "", pod.pod if pod.pod is not None else pod.uid)


def peer_kind(host: str, networks: Sequence[IPNetwork]) -> str:
    """``service`` when a peer's address is in a Service range, else ``other``."""
    try:
        address = ipaddress.ip_address(names.normalized(host))
    except ValueError:
        return OTHER_PEER
    return SERVICE_PEER if any(address in network for network in networks) else OTHER_PEER


class NodeCollector:
    """``tcpecho_node_*``: the gauges of the last snapshot ``record`` took, and the agent's
    counters and histogram. Called on one thread (the agent's event loop): no lock."""

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self._networks = tuple(networks)
        self._gauges: list[Metric] = []
        # Not in any registry: this collector serves them, after the gauges.
        self._duration = Histogram(
            "tcpecho_node_snapshot_duration_seconds",
            "Wall time of each snapshot of the node's network namespaces.",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self._skipped = Counter(
            "tcpecho_node_skipped",
            "What snapshots skipped (gone or unreadable), by kind: namespace, process, socket.",
            ["what"],
            registry=None,
        )
        self._errors = Counter(
            "tcpecho_node_errors",
            "Sources that failed: a snapshot's own (by its source), a whole snapshot "
            "(snapshot), a part of the metrics (metrics:PART).",
            ["source"],
            registry=None,
        )
        for kind in SKIPPED_KINDS:
            self._skipped.labels(what=kind)
        self._errors.labels(source=SNAPSHOT_SOURCE)

    def collect(self) -> Iterator[Metric]:
        yield from self._gauges
        yield from self._duration.collect()
        yield from self._skipped.collect()
        yield from self._errors.collect()

    def record(self, snapshot: NodeSnapshot) -> dict[str, Exception]:
        """Take ``snapshot`` as the one the scrapes show, and count what it skipped and what
        failed in it; the parts of the gauges that could not be built, by part."""
        self._duration.observe(max(0.0, snapshot.duration_s))
        _add(self._skipped, "what", snapshot.skipped)
        _add(self._errors, "source", snapshot.errors)
        gauges: list[Metric] = []
        failed: dict[str, Exception] = {}
        for part, build in self._parts().items():
            try:
                gauges.extend(build(snapshot))
            except Exception as error:  # a part's failure must not take the others with it
                failed[part] = error
                self._errors.labels(source=f"metrics:{part}").inc()
        self._gauges = gauges
        return failed

    def record_failure(self) -> None:
        """A snapshot that failed whole: counted; the last one's gauges stay."""
        self._errors.labels(source=SNAPSHOT_SOURCE).inc()

    def _parts(self) -> dict[str, Callable[[NodeSnapshot], list[Metric]]]:
        return {
            "namespaces": _namespaces,
            "connections": _connections,
            "stuck": _stuck,
            "at_risk": self._at_risk,
        }

    def _at_risk(self, snapshot: NodeSnapshot) -> list[Metric]:
        tally: Tally[tuple[str, str, str, str]] = Tally()
        # Many connections share a peer (a Service's address): each is parsed once.
        kinds: dict[str, str] = {}
        for watched in snapshot.watched:
            if not watched.at_risk:
                continue
            host = watched.connection.peer_host
            peer = kinds.get(host) or kinds.setdefault(host, peer_kind(host, self._networks))
            for code in sorted({risk.code for risk in watched.at_risk}):
                tally[(*pod_key(watched.pod), code, peer)] += 1
        family = GaugeMetricFamily(
            "tcpecho_node_at_risk_connections",
            "Connections at risk from their own options in their state, by risk code "
            "(watch's at_risk), and whether the peer is a Service (service) or not (other).",
            labels=[*_POD, "code", "peer"],
        )
        for labels, count in sorted(tally.items()):
            family.add_metric(list(labels), count)
        return [family]


def _add(counter: Counter, label: str, counts: Mapping[str, int]) -> None:
    for value, count in sorted(counts.items()):
        if count > 0:
            counter.labels(**{label: value}).inc(count)


def _namespaces(snapshot: NodeSnapshot) -> list[Metric]:
    return [
        GaugeMetricFamily(
            "tcpecho_node_namespaces",
            "Network namespaces the last snapshot read.",
            value=snapshot.namespaces,
        )
    ]


def _connections(snapshot: NodeSnapshot) -> list[Metric]:
    tally: Tally[tuple[str, str, str]] = Tally()
    for watched in snapshot.watched:
        state = watched.connection.state
        tally[(*pod_key(watched.pod), SS_STATES.get(state, state))] += 1
    family = GaugeMetricFamily(
        "tcpecho_node_connections",
        "TCP connections by pod and state (ss's names: ESTAB, SYN-SENT, CLOSE-WAIT, ...).",
        labels=[*_POD, "state"],
    )
    for labels, count in sorted(tally.items()):
        family.add_metric(list(labels), count)
    return [family]


@dataclass
class _PodStuck:
    count: int = 0
    longest_s: float | None = None
    soonest_s: float | None = None  # math.inf: every stuck one waits for nothing to end it


def _stuck(snapshot: NodeSnapshot) -> list[Metric]:
    pods: dict[PodKey, _PodStuck] = {}
    for watched in snapshot.watched:
        pod = pods.setdefault(pod_key(watched.pod), _PodStuck())
        if not watched.connection.stuck:
            continue
        pod.count += 1
        if watched.stuck_for_s is not None:
            pod.longest_s = max(pod.longest_s or 0.0, watched.stuck_for_s)
        left = _left_s(watched)
        if left is not None:
            pod.soonest_s = left if pod.soonest_s is None else min(pod.soonest_s, left)
    count = GaugeMetricFamily(
        "tcpecho_node_stuck_connections",
        "Connections the kernel is retransmitting on, or probing without an answer.",
        labels=_POD,
    )
    longest = GaugeMetricFamily(
        "tcpecho_node_longest_stuck_seconds",
        "How long the pod's longest stuck connection has been stuck.",
        labels=_POD,
    )
    soonest = GaugeMetricFamily(
        "tcpecho_node_soonest_give_up_seconds",
        "When the kernel will give up on the first of the pod's stuck connections, from now "
        "(+Inf: never).",
        labels=_POD,
    )
    for key, pod in sorted(pods.items()):
        count.add_metric(list(key), pod.count)
        if pod.longest_s is not None:
            longest.add_metric(list(key), pod.longest_s)
        if pod.soonest_s is not None:
            soonest.add_metric(list(key), pod.soonest_s)
    return [count, longest, soonest]


def _left_s(watched: Watched) -> float | None:
    """What is left of a stuck connection's wait: +Inf when the model says the kernel never
    ends it; None when nothing models it (no prediction, or no time stuck)."""
    if watched.prediction is not None and watched.prediction.never:
        return math.inf
    return watched.gives_up_in_s
