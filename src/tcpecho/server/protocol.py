"""The echo itself (RFC 862): every byte goes back exactly as it arrived, with no framing, so
``nc``, ``socat`` and any other echo client work against the server.

``EchoProtocol`` is the server's hot path: ``data_received`` writes the bytes straight
back. Backpressure comes from the transport's write buffer: when a peer stops reading and
the buffer passes its high-water mark, reading from that peer pauses until it drains, so
a slow or hostile peer costs at most the buffer, not unbounded memory.
"""

from __future__ import annotations

import asyncio
from typing import Protocol as TypingProtocol
from typing import cast

# Per-connection write buffer: enough to keep a fast peer's pipe full, small enough that
# 10,000 stalled peers stay within memory.
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_LOW = 16 * 1024

# During shutdown a connection is closed once it has been quiet (nothing received and
# nothing left to send) for this long, so an echo that is under way is finished first,
# even from a sender that pauses briefly; idle connections still close well within 1 s.
DRAIN_QUIET_S = 0.25


class ConnectionRegistry(TypingProtocol):
    """The server side that keeps track of open connections (for logs and shutdown)."""

    def opened(self, connection: EchoProtocol) -> None: ...

    def closed(self, connection: EchoProtocol, error: Exception | None) -> None: ...


class EchoProtocol(asyncio.Protocol):
    """Echo everything back; pause reading while the peer is not reading our writes."""

    __slots__ = (
        "_drain_handle",
        "_echoed_at_last_check",
        "_registry",
        "_write",
        "bytes_echoed",
        "transport",
    )

    transport: asyncio.Transport

    def __init__(self, registry: ConnectionRegistry) -> None:
        self._registry = registry
        self._drain_handle: asyncio.TimerHandle | None = None
        self._echoed_at_last_check = 0
        self.bytes_echoed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # The bound method, looked up once: data_received is the server's hot path.
        self._write = self.transport.write
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        self._registry.opened(self)

    def data_received(self, data: bytes) -> None:
        # Nothing else per message: the byte count also tells the drain whether data came.
        self._write(data)
        self.bytes_echoed += len(data)

    def eof_received(self) -> bool:
        # The peer has sent all it will; everything it sent is already queued for writing,
        # and returning False closes our side once that queue is flushed.
        return False

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        self._registry.closed(self, exc)

    def drain_and_close(self) -> None:
        """Close once quiet: finish the echo under way, accept no new work after it."""
        # Wait one quiet period even when idle now: bytes may be in the kernel's receive
        # buffer that the loop has not handed to data_received yet.
        self._echoed_at_last_check = self.bytes_echoed
        self._drain_handle = asyncio.get_running_loop().call_later(DRAIN_QUIET_S, self._check_quiet)

    def _check_quiet(self) -> None:
        if self.transport.is_closing():
            return
        data_came = self.bytes_echoed != self._echoed_at_last_check
        if data_came or self.transport.get_write_buffer_size() > 0:
            self._echoed_at_last_check = self.bytes_echoed
            loop = asyncio.get_running_loop()
            self._drain_handle = loop.call_later(DRAIN_QUIET_S, self._check_quiet)
            return
        self.transport.close()
