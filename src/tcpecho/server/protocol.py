"""The echo itself (RFC 862): every byte goes back exactly as it arrived, with no framing, so
``nc``, ``socat`` and any other echo client work against the server.

``EchoProtocol`` is the server's hot path: ``data_received`` writes the bytes straight
back. Backpressure comes from the transport's write buffer: when a peer stops reading and
the buffer passes its high-water mark, reading from that peer pauses until it drains, so
a slow or hostile peer costs at most the buffer, not unbounded memory.

A connection that sends in bulk (one read of ``SPLICE_FROM`` bytes or more) is moved off
the transport to ``Splice``: from then on its bytes go socket -> pipe -> the same socket
with splice(2), never copied into Python, the way Go's ``io.Copy`` moves them. The pipe is
the write buffer then: reading stops while it holds bytes the peer has not taken, so the
bound is one read into the pipe (``SPLICE_READ``, 256 KiB: what the transport may hold at
worst).
"""

from __future__ import annotations

import asyncio
import os
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

# One read this large means a bulk sender: splicing it saves two copies of every byte and
# a bytes object per read, and costs a pipe (two descriptors) and a dup of the socket.
SPLICE_FROM = 64 * 1024
# The most one splice moves into the pipe, and so the most that waits for a peer that does
# not read: what the transport may hold at worst (its 64 KiB high-water mark passed by one
# read of up to 256 KB). The pipe keeps Linux's default size, as Go's does: 16 buffers, each
# a fragment of a received skb, so one call moves up to about 256 KiB either way. Enlarged
# to 256 KiB (64 buffers) it measured worse: 4 bulk connections ran at 0.6-0.7x Go, the
# server spending 44-52 us per 64 KiB echoed against Go's 28-31 (docs/performance.md).
SPLICE_READ = 256 * 1024
# Read-and-write rounds per readiness callback. After the pipe is written out the socket
# is read again at once, as Go's io.Copy does: under load more has arrived, and a round in
# the same callback saves a pass through the loop; 16 rounds took server CPU per 64 KiB
# from 34 to 28 us at 4 connections. Bounded, so that one bulk sender cannot keep the
# loop from everything else for long (16 reads of at most 256 KiB).
SPLICE_ROUNDS = 16
CAN_SPLICE = hasattr(os, "splice")  # Linux, Python 3.10+
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


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
        "_splice",
        "_write",
        "bytes_echoed",
        "transport",
    )

    transport: asyncio.Transport

    def __init__(self, registry: ConnectionRegistry) -> None:
        self._registry = registry
        self._drain_handle: asyncio.TimerHandle | None = None
        self._echoed_at_last_check = 0
        self._splice: Splice | None = None
        self.bytes_echoed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # The bound method, looked up once: data_received is the server's hot path.
        self._write = self.transport.write
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        self._registry.opened(self)

    def data_received(self, data: bytes) -> None:
        # Nothing else per message: the byte count also tells the drain whether data came,
        # and the size whether the peer sends in bulk.
        self._write(data)
        size = len(data)
        self.bytes_echoed += size
        if size >= SPLICE_FROM:
            self._start_splicing()

    def _start_splicing(self) -> None:
        """Move this connection to ``Splice``, when nothing waits in the transport (the
        spliced bytes must follow the written ones) and the platform can."""
        transport = self.transport
        if not CAN_SPLICE or self._splice is not None or transport.get_write_buffer_size():
            return
        sock = transport.get_extra_info("socket")
        if sock is None or transport.is_closing():
            return
        try:
            self._splice = Splice(self, sock.fileno())
        except OSError:
            return  # out of descriptors, say: the transport goes on as it was
        transport.pause_reading()

    def eof_received(self) -> bool:
        # The peer has sent all it will; everything it sent is already queued for writing,
        # and returning False closes our side once that queue is flushed.
        return False

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._splice is None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        if self._splice is not None:
            self._splice.close()
            exc = exc or self._splice.error
        self._registry.closed(self, exc)

    @property
    def spliced(self) -> bool:
        """Whether the connection's bytes go through splice(2) rather than the transport."""
        return self._splice is not None

    def is_reading(self) -> bool:
        """Whether the server takes more from the peer now (False: paused by backpressure)."""
        if self._splice is not None:
            return self._splice.reading
        return self.transport.is_reading()

    def unsent(self) -> int:
        """Bytes received and not yet sent back: in the transport's buffer, or the pipe."""
        pipe = self._splice.unsent if self._splice is not None else 0
        return self.transport.get_write_buffer_size() + pipe

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
        if data_came or self.unsent() > 0:
            self._echoed_at_last_check = self.bytes_echoed
            loop = asyncio.get_running_loop()
            self._drain_handle = loop.call_later(DRAIN_QUIET_S, self._check_quiet)
            return
        self.transport.close()


class Splice:
    """One connection's echo through splice(2): socket -> pipe -> the same socket.

    Driven by the loop's readiness callbacks on a duplicate of the transport's descriptor
    (the transport keeps its own, paused, and closes it when the connection ends): read
    into the pipe when the socket is readable and the pipe empty, write the pipe out at
    once and read again, up to ``SPLICE_ROUNDS`` times; when the peer does not take it
    all, stop reading until the socket is writable and the pipe has been emptied.
    """

    __slots__ = ("_fd", "_loop", "_owner", "_pipe_r", "_pipe_w", "_writing", "eof", "error",
                 "reading", "unsent")  # fmt: skip

    def __init__(self, owner: EchoProtocol, fd: int) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            # Our own descriptor: the loop watches one descriptor for one owner, and the
            # transport still has the other. Non-blocking already: the flag is the socket's.
            self._fd = os.dup(fd)
        except OSError:
            os.close(self._pipe_r)
            os.close(self._pipe_w)
            raise
        self.unsent = 0  # bytes in the pipe
        self.eof = False
        self.error: OSError | None = None
        self._writing = False
        self.reading = True
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(SPLICE_ROUNDS):
            try:
                size = os.splice(self._fd, self._pipe_w, SPLICE_READ, flags=SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError as error:
                self._fail(error)
                return
            if size == 0:  # the peer's FIN: echo what is left, then close
                self.eof = True
                self._stop_reading()
                self._flush()
                return
            self._owner.bytes_echoed += size
            self.unsent += size
            self._flush()
            if self.unsent or not self.reading:  # the peer is not taking it, or it failed
                return

    def _on_writable(self) -> None:
        self._flush()

    def _flush(self) -> None:
        while self.unsent:
            try:
                self.unsent -= os.splice(self._pipe_r, self._fd, self.unsent, flags=SPLICE_FLAGS)
            except BlockingIOError:
                # The peer is not taking our writes: the pipe holds the rest, and nothing
                # more is read from the peer until it is out.
                self._stop_reading()
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._fd, self._on_writable)
                return
            except OSError as error:
                self._fail(error)
                return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        if self.eof:
            self._owner.transport.close()  # connection_lost closes this side
        elif not self.reading:
            self.reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._loop.remove_reader(self._fd)

    def _fail(self, error: OSError) -> None:
        """A reset or another socket error: cut the connection, reported with ``error``."""
        self.error = error
        self._stop_reading()
        self._owner.transport.abort()

    def close(self) -> None:
        """Stop watching, and close the pipe and our descriptor (idempotent)."""
        if self._fd < 0:
            return
        self._stop_reading()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        for fd in (self._fd, self._pipe_r, self._pipe_w):
            os.close(fd)
        self._fd = -1
