"""The ``/metrics`` endpoint (``--metrics-port``): a prometheus_client registry served in the
Prometheus text format by an asyncio server on the process's own event loop.

On the loop, not in a thread: the collectors read the server's and the client's live state
(open connections, the request waiting, the kernel's counters) while nothing else runs, so
none of that state needs a lock, and the echo's hot path pays nothing until a scrape comes.
Each scrape is rendered whole with ``generate_latest``; an HTTP/1.1 GET or HEAD of
``/metrics`` (any query string) is answered 200, any other path 404, any other method 405,
and every answer closes its connection. A request head must arrive within 10 s and 8 KiB,
so a stalled or hostile peer holds nothing for long.

Imported only when a command runs with ``--metrics-port``: ``tcpecho --help`` and a run
without metrics never load prometheus_client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from tcpecho import events
from tcpecho.tcp.listen import listen
from tcpecho.tcp.names import error_name, format_address

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

PATH = "/metrics"
HEAD_LIMIT = 8 * 1024
HEAD_TIMEOUT_S = 10.0
BACKLOG = 64  # a scraper or two, not a crowd


def every_address() -> str:
    """The host that listens on every address: ``::`` with IPv4 on the same socket where the
    platform allows it, else ``0.0.0.0`` (the client has no ``--host`` of its own)."""
    return "::" if socket.has_dualstack_ipv6() else "0.0.0.0"  # noqa: S104 - scraped from the pod network


def new_registry() -> CollectorRegistry:
    """A registry of the process's own, with the process and platform collectors."""
    # Counters and histograms would each add a ``_created`` series of their start time,
    # which the text format's readers keep as one more gauge: noise, and twice the series.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


@dataclass
class MetricsEndpoint:
    """``/metrics`` being served; ``close`` stops it."""

    servers: list[asyncio.Server]
    addresses: list[str]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()


async def serve(
    registry: CollectorRegistry, host: str, port: int, log: FilteringBoundLogger
) -> MetricsEndpoint | None:
    """Serve ``registry`` on ``host:port`` and log ``metrics_started``; ``None`` after logging
    ``metrics_failed`` when the port cannot be listened on (busy, refused, no such host)."""
    try:
        sockets = listen(host, port, backlog=BACKLOG)
    except OSError as error:
        events.emit(
            log,
            events.MetricsFailed(host=host, port=port, errno=error_name(error), error=str(error)),
        )
        return None
    answer = functools.partial(_answer, registry)
    servers = []
    for sock in sockets:
        # The backlog again: the loop listens anew on a socket it is given.
        servers.append(
            await asyncio.start_server(answer, sock=sock, backlog=BACKLOG, limit=HEAD_LIMIT)
        )
    endpoint = MetricsEndpoint(servers, [format_address(s.getsockname()) for s in sockets])
    events.emit(log, events.MetricsStarted(addresses=endpoint.addresses))
    return endpoint


async def _answer(
    registry: CollectorRegistry, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Read one request head, write one answer, close."""
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(respond(registry, head))
            await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass  # a peer that left, stalled or sent too much: nothing to answer it with
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def respond(registry: CollectorRegistry, head: bytes) -> bytes:
    """The whole HTTP answer to a request head."""
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _http(400, "Bad Request", b"not an HTTP/1.x request\n")
    method, target, _ = parts
    if target.split("?", 1)[0] != PATH:
        return _http(404, "Not Found", f"tcpecho serves {PATH}\n".encode())
    if method not in ("GET", "HEAD"):
        return _http(405, "Method Not Allowed", b"GET or HEAD\n", allow="GET, HEAD")
    try:
        body = generate_latest(registry)
    except Exception as error:  # a collector's bug: the scraper sees why, the process lives on
        return _http(500, "Internal Server Error", f"collecting failed: {error!r}\n".encode())
    return _http(200, "OK", body, content_type=CONTENT_TYPE_PLAIN_0_0_4, head_only=method == "HEAD")


def _http(
    status: int,
    reason: str,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    allow: str | None = None,
    head_only: bool = False,
) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *([f"Allow: {allow}"] if allow else []),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
