"""The server's metrics, collected when scraped: nothing is added to the echo's hot path.

``EchoProtocol.data_received`` (or, for a spliced connection, its ``Splice``) already
counts each connection's bytes (the drain and ``connection_closed`` need them); the server
keeps totals that change once per connection or signal (``ServerTotals``). A scrape reads
those, and sums the bytes of the connections open now from the server's live registry: one
pass over the open connections per scrape instead of one more operation per message.

The collector knows the server only as ``LiveServer``, what a scrape reads of it; the server
module imports this one when it serves metrics, never the other way round.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tcpecho.streams import STDOUT_OUTPUT


class Totals(Protocol):
    """The server's counts that change once per connection or signal (``ServerTotals``)."""

    @property
    def connections_accepted(self) -> int: ...

    @property
    def connections_rejected(self) -> int: ...

    @property
    def connections_idle(self) -> int: ...

    @property
    def signals_ignored(self) -> int: ...


class LiveServer(Protocol):
    """What a scrape reads of a running server (``EchoServer`` is one)."""

    @property
    def totals(self) -> Totals: ...

    @property
    def connections(self) -> Sized: ...

    def bytes_echoed(self) -> int: ...

    def descriptor_bursts(self) -> int: ...


class ServerCollector(Collector):
    """``tcpecho_server_*``, read from a running server."""

    def __init__(self, server: LiveServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        totals = server.totals
        yield GaugeMetricFamily(
            "tcpecho_server_connections",
            "Connections open now.",
            value=len(server.connections),
        )
        yield CounterMetricFamily(
            "tcpecho_server_connections",
            "Connections accepted since the start.",
            value=totals.connections_accepted,
        )
        yield CounterMetricFamily(
            "tcpecho_server_bytes_echoed",
            "Bytes received, and so echoed, over every connection: those closed and those open.",
            value=server.bytes_echoed(),
        )
        yield CounterMetricFamily(
            "tcpecho_server_signals_ignored",
            "SIGTERMs ignored under --catch-sigterm (signal_ignored events).",
            value=totals.signals_ignored,
        )
        yield CounterMetricFamily(
            "tcpecho_server_connections_rejected",
            "Connections closed at once beyond --max-connections (connection_rejected events).",
            value=totals.connections_rejected,
        )
        yield CounterMetricFamily(
            "tcpecho_server_connections_idle",
            "Connections closed by --idle-timeout (connection_idle events).",
            value=totals.connections_idle,
        )
        yield CounterMetricFamily(
            "tcpecho_server_descriptors_exhausted",
            "Bursts in which the open-file limit stopped accepting (descriptors_exhausted).",
            value=server.descriptor_bursts(),
        )
        yield CounterMetricFamily(
            "tcpecho_server_log_lines_dropped",
            "Log lines stdout could not take (unread, full or closed) and that were dropped.",
            value=STDOUT_OUTPUT.dropped,
        )
