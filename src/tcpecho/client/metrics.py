"""The client's metrics: counted from the events it logs, and read from it when scraped.

The client as an in-cluster canary. What it has done is counted from the same events its
log lines come from (``ClientMetrics.observe``), so a scrape and the logs cannot disagree:
requests, echoes, failures by errno and phase, reconnects, the round trips and the
detection times, and the socket options the kernel took. What it is doing now is read when
scraped (``_LiveCollector``): how long the request in flight has waited, the kernel's
retransmissions on the connection in use (``TCP_INFO`` through the client's duplicate of
its descriptor), whether it is connected, and when the kernel model expects an unanswered
request to fail. A hang shows as ``waiting_seconds`` climbing past
``expected_detection_seconds`` while ``retransmits`` rises.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tcpecho import events
from tcpecho.tcp.info import TcpInfo

# From a fast failure (an ICMP unreachable with --recverr, ~0.2 s) to the kernel's own budget
# (tcp_retries2 = 15: ~929-994 s after the send), with a bound between each mitigation's
# usual figure: read timeouts of seconds, keepalive and user timeouts of tens of seconds.
DETECTION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 45, 60, 120, 300, 600, 900, 1000)
# From loopback (~0.1 ms) through a cluster's network (~1 ms) to a retransmitted request
# (the first RTO: 0.2 s and more).
RTT_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    *(0.25, 0.5, 1, 2.5, 5, 10),
)


class LiveClient(Protocol):
    """What the client tells a scrape about now (``EchoClient`` is one)."""

    def waiting_s(self) -> float: ...

    def connection_tcp_info(self) -> TcpInfo | None: ...

    def is_connected(self) -> bool: ...

    def expected_detection_s(self) -> float | None: ...


class ClientMetrics:
    """``tcpecho_client_*`` in ``registry``: ``observe`` takes every event the client logs."""

    def __init__(self, client: LiveClient, registry: CollectorRegistry) -> None:
        self._requests = Counter(
            "tcpecho_client_requests", "Requests sent (request_sent).", registry=registry
        )
        self._responses = Counter(
            "tcpecho_client_responses",
            "Echoes received and matched (response_received).",
            registry=registry,
        )
        self._failures = Counter(
            "tcpecho_client_failures",
            "Failures (connection_failed), by errno name and phase.",
            ["errno", "phase"],
            registry=registry,
        )
        self._reconnects = Counter(
            "tcpecho_client_reconnects", "Reconnect attempts (reconnecting).", registry=registry
        )
        self._detection = Histogram(
            "tcpecho_client_detection_seconds",
            "From sending the request never answered (or starting the connect) to the failure "
            "(connection_failed.detection_s).",
            buckets=DETECTION_BUCKETS,
            registry=registry,
        )
        self._rtt = Histogram(
            "tcpecho_client_rtt_seconds",
            "From a request's send to its whole echo (response_received.rtt_ms).",
            buckets=RTT_BUCKETS,
            registry=registry,
        )
        self._options = Info(
            "tcpecho_client_socket_options",
            "The TCP options the last connection carried, as the kernel reports them "
            "(connected.options).",
            registry=registry,
        )
        registry.register(_LiveCollector(client))

    def observe(self, event: events.Event) -> None:
        match event:
            case events.RequestSent():
                self._requests.inc()
            case events.ResponseReceived(rtt_ms=rtt_ms):
                self._responses.inc()
                self._rtt.observe(rtt_ms / 1000)
            case events.ConnectionFailed(errno=errno, phase=phase, detection_s=detection_s):
                self._failures.labels(errno=errno, phase=phase).inc()
                if detection_s is not None:
                    self._detection.observe(detection_s)
            case events.Reconnecting():
                self._reconnects.inc()
            case events.Connected(options=options):
                self._options.info({key: _label(value) for key, value in options.as_dict().items()})


def _label(value: int | bool | None) -> str:
    """A label value written as the logs write it: ``true``, ``30000``; empty for unknown."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class _LiveCollector(Collector):
    """The client's state at the moment of the scrape."""

    def __init__(self, client: LiveClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        client = self._client
        yield GaugeMetricFamily(
            "tcpecho_client_waiting_seconds",
            "How long the request in flight has waited for its echo; 0 when none is waiting.",
            value=round(client.waiting_s(), 6),
        )
        info = client.connection_tcp_info()
        yield GaugeMetricFamily(
            "tcpecho_client_retransmits",
            "The kernel's retransmissions over the connection in use (tcp_info.total_retrans); "
            "0 without a connection.",
            value=0 if info is None else info.total_retrans,
        )
        yield GaugeMetricFamily(
            "tcpecho_client_connected",
            "1 while a connection is up and in use, 0 while connecting or backing off.",
            value=1 if client.is_connected() else 0,
        )
        expected = client.expected_detection_s()
        if expected is not None:
            yield GaugeMetricFamily(
                "tcpecho_client_expected_detection_seconds",
                "The latest the kernel model expects a request sent now and never answered to "
                "fail, from its send (connected.expected_busy.high_s); absent without a "
                "connection.",
                value=expected,
            )
