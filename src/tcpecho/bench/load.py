"""One process's share of a ``tcpecho bench`` run: its connections, their protocols, its window.

Each connection slot keeps one connection open for the whole run and opens a new one after a
failure, so the load stays at ``--connections`` and every failure is counted by name
(ECONNREFUSED, ECONNRESET, EOF, MISMATCH, TIMEOUT, ...). The protocols are plain
``asyncio.Protocol`` callbacks, which on uvloop cost the least per request: a ping-pong
request is one ``write``, one ``data_received`` whose bytes are compared with those sent
(an echo in pieces is checked piece by piece with ``bytes.startswith``, no copy), one
clock read and one histogram increment, which also counts it.

A run has phases: connect every slot, wait for the start time (shared by every process of
the run through the monotonic clock), warm up, measure, stop. A ping-pong request counts when
its echo completes inside the measured window (with ``--requests``, only requests also sent
inside it, so exactly that many count); a bulk byte counts when it is received inside it.
"""

from __future__ import annotations

import abc
import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Literal, cast

from tcpecho.bench.histogram import SUB_BUCKET_BITS, LatencyHistogram, bucket_index
from tcpecho.process import forget_stop_signals, on_stop_signals
from tcpecho.tcp.connect import connect
from tcpecho.tcp.names import error_name
from tcpecho.tcp.options import TcpOptions

Mode = Literal["pingpong", "bulk"]
StoppedBy = Literal["duration", "requests", "interrupted"]

# Pause before a failed slot connects again: keeps a refused or crashing server from being
# hammered with connects, and keeps the load generator's own CPU for the load.
RECONNECT_DELAY_S = 0.1
_SUB_BUCKETS = 1 << SUB_BUCKET_BITS
_HALF_BITS = SUB_BUCKET_BITS - 1
# uvloop and asyncio both read at most this much per data_received.
_MAX_READ = 256 * 1024


class Phase:
    """Phase numbers, published for the progress line."""

    CONNECTING = 0
    WARMUP = 1
    MEASURING = 2
    DONE = 3

    NAMES = ("connect", "warmup", "measure", "done")


@dataclass(frozen=True)
class LoadShare:
    """What one process does: its connections and (with ``--requests``) its request quota."""

    host: str
    port: int
    mode: Mode
    connections: int
    size: int
    warmup_s: float
    duration_s: float
    requests: int | None
    timeout_s: float
    tcp: TcpOptions = field(default_factory=TcpOptions)


@dataclass
class ProcessResult:
    """One process's counts for the measured window (picklable: it crosses process pipes)."""

    window_s: float
    completed: int
    failed: int
    bytes_sent: int
    bytes_received: int
    errors: dict[str, int]
    histogram: LatencyHistogram
    stopped_by: StoppedBy


@dataclass
class Progress:
    """A snapshot for the progress line; counts include the warm-up."""

    phase: int = Phase.CONNECTING
    completed: int = 0
    bytes_received: int = 0
    errors: int = 0
    connected: int = 0


class RunState:
    """What all connections of one process share: the phase, the counters, the histograms.

    Ping-pong latencies go into ``counts``, which is the warm-up's histogram, then the
    measured window's, then a discarded one: switching phase is switching that list, and
    recording a request is one increment, which also counts it.
    """

    __slots__ = (
        "all_requests_done",
        "bytes_received",
        "bytes_sent",
        "connected",
        "counts",
        "errors",
        "failed",
        "finished",
        "measured_counts",
        "measuring",
        "outstanding",
        "progress_bytes",
        "quota",
        "running",
        "tickets",
        "warmup_counts",
    )

    def __init__(self, requests: int | None) -> None:
        self.running = False  # connections send while True
        self.finished = False  # after the run: closing connections is no failure then
        self.measuring = False  # inside the measured window
        # --requests: measured requests still to be sent, and those sent but not answered.
        self.quota = requests is not None
        self.tickets = requests or 0
        self.outstanding = 0
        self.all_requests_done = asyncio.Event()
        self.failed = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.progress_bytes = 0
        self.connected = 0
        self.errors: Counter[str] = Counter()
        self.warmup_counts = LatencyHistogram.empty().counts
        self.measured_counts = LatencyHistogram.empty().counts
        self.counts = self.warmup_counts

    def measure(self) -> None:
        self.counts = self.measured_counts
        self.measuring = True

    def stop(self) -> None:
        self.counts = LatencyHistogram.empty().counts  # answers after the window: not counted
        self.measuring = False
        self.running = False

    @property
    def completed(self) -> int:
        return sum(self.measured_counts)

    @property
    def progress_completed(self) -> int:
        return sum(self.warmup_counts) + sum(self.measured_counts)

    def ticketed_request_ended(self) -> None:
        self.outstanding -= 1
        if self.tickets == 0 and self.outstanding == 0:
            self.all_requests_done.set()


class _Connection(asyncio.Protocol, abc.ABC):
    """What both modes share: the transport, failure accounting, the end of the connection."""

    __slots__ = ("_failed", "_state", "closed", "transport")

    transport: asyncio.Transport

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._failed = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._state.connected += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connected -= 1
        if not self._state.finished and not self._failed:
            self.fail(error_name(exc) if exc is not None else "EOF")
        if not self.closed.done():
            self.closed.set_result(None)

    def eof_received(self) -> bool:
        return False  # close; connection_lost counts the EOF

    def fail(self, kind: str) -> None:
        """Count this connection's failure once and cut it; its slot reconnects."""
        if self._failed:
            return
        self._failed = True
        self._state.errors[kind] += 1
        self._abandon_request()
        self.transport.abort()

    def _abandon_request(self) -> None:
        """Account for work in flight that will never complete."""

    @abc.abstractmethod
    def start(self) -> None:
        """Begin this connection's traffic once the measured run may start."""

    @abc.abstractmethod
    def check_timeout(self, now_ns: int, timeout_ns: int) -> None:
        """Count and cut the connection if its request has waited longer than allowed."""


class PingPongConnection(_Connection):
    """Send ``size`` bytes, wait for exactly those bytes back, send again."""

    __slots__ = ("_expected", "_next", "_received", "_sent_at", "_ticketed")

    def __init__(self, state: RunState, payloads: tuple[bytes, bytes]) -> None:
        super().__init__(state)
        # Two payloads that differ, sent in turn: a server that answers with a stale or
        # repeated echo is caught, not only one that changes bytes.
        self._next = payloads[0]
        self._expected: bytes | None = payloads[1]  # the request in flight, None when idle
        self._received = 0
        self._sent_at = 0
        self._ticketed = False  # --requests: this request counts against the quota

    def start(self) -> None:
        self._send(perf_counter_ns())

    def data_received(self, data: bytes) -> None:
        # The hot path of the load generator, kept to the fewest operations: the common
        # case is the whole echo in one read, checked with one comparison; the histogram's
        # bucket_index is written out inline, and the clock read that ends a request
        # starts the next.
        if self._received == 0 and data == self._expected:
            now = perf_counter_ns()
            state = self._state
            if state.quota:
                self._complete_with_quota(now)
                return
            latency = now - self._sent_at
            if latency >= _SUB_BUCKETS:
                shift = latency.bit_length() - SUB_BUCKET_BITS
                latency = (shift << _HALF_BITS) + (latency >> shift)
            state.counts[latency] += 1
            if state.running:
                expected = self._next
                self._next = self._expected
                self._expected = expected
                self._sent_at = now
                self.transport.write(expected)
            else:
                self._expected = None
            return
        self._piece_received(data)

    def _piece_received(self, data: bytes) -> None:
        """Part of an echo, or bytes that are no echo of the request in flight."""
        expected = self._expected
        # startswith compares in place; it is False when data runs past the request.
        if expected is None or not expected.startswith(data, self._received):
            self.fail("MISMATCH")
            return
        received = self._received + len(data)
        if received < len(expected):
            self._received = received
            return
        self._received = 0
        self._complete(perf_counter_ns())

    def _complete(self, now_ns: int) -> None:
        """What data_received's fast path does inline, for an echo that came in pieces."""
        state = self._state
        if state.quota:
            self._complete_with_quota(now_ns)
            return
        state.counts[bucket_index(now_ns - self._sent_at)] += 1
        self._send(now_ns)

    def _send(self, now_ns: int) -> None:
        state = self._state
        if not state.running:
            self._expected = None
            return
        self._ticketed = False
        if state.quota and state.measuring:
            if state.tickets == 0:
                self._expected = None
                return
            state.tickets -= 1
            state.outstanding += 1
            self._ticketed = True
        expected, previous = self._next, self._expected
        if previous is not None:
            self._next = previous
        self._expected = expected
        self._sent_at = now_ns
        self.transport.write(expected)

    def _complete_with_quota(self, now_ns: int) -> None:
        """--requests: only requests sent inside the window count, and exactly N of them."""
        state = self._state
        latency = now_ns - self._sent_at
        counts = state.measured_counts if self._ticketed else state.warmup_counts
        counts[bucket_index(latency)] += 1
        if self._ticketed:
            state.ticketed_request_ended()
        self._send(now_ns)

    def _abandon_request(self) -> None:
        state = self._state
        if self._expected is not None:
            if state.quota:
                if self._ticketed:
                    state.failed += 1
                    state.ticketed_request_ended()
            elif state.measuring:
                state.failed += 1
        self._expected = None

    def check_timeout(self, now_ns: int, timeout_ns: int) -> None:
        if self._expected is not None and now_ns - self._sent_at > timeout_ns:
            self.fail("TIMEOUT")


class BulkConnection(_Connection):
    """Write ``size``-byte chunks whenever the transport takes them; check what comes back."""

    __slots__ = ("_chunk", "_last_progress", "_offset", "_pattern", "_paused", "_size")

    def __init__(self, state: RunState, chunk: bytes) -> None:
        super().__init__(state)
        self._chunk = chunk
        self._size = len(chunk)
        # The echo of a stream of identical chunks, long enough that any single read starting
        # anywhere in a chunk can be checked with one startswith.
        self._pattern = chunk * (2 + _MAX_READ // len(chunk))
        self._offset = 0  # where in the chunk the next echoed byte belongs
        self._paused = False
        self._last_progress = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Room for a few chunks: the kernel's buffers do the rest.
        self.transport.set_write_buffer_limits(high=4 * self._size)

    def start(self) -> None:
        self._last_progress = perf_counter_ns()
        self._pump()

    def _pump(self) -> None:
        state = self._state
        write = self.transport.write
        chunk = self._chunk
        while state.running and not self._paused and not self._failed:
            write(chunk)
            if state.measuring:
                state.bytes_sent += self._size

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        offset = self._offset
        if len(data) <= len(self._pattern) - offset:
            matches = self._pattern.startswith(data, offset)
        else:
            matches = self._check_long(data, offset)
        if not matches:
            self.fail("MISMATCH")
            return
        self._offset = (offset + len(data)) % self._size
        state = self._state
        state.progress_bytes += len(data)
        if state.measuring:
            state.bytes_received += len(data)
        self._last_progress = perf_counter_ns()

    def _check_long(self, data: bytes, offset: int) -> bool:
        view = memoryview(data)
        step = len(self._pattern) - self._size
        for start in range(0, len(data), step):
            piece = bytes(view[start : start + step])
            if not self._pattern.startswith(piece, (offset + start) % self._size):
                return False
        return True

    def check_timeout(self, now_ns: int, timeout_ns: int) -> None:
        # Only a stream that has something outstanding can be late.
        if now_ns - self._last_progress > timeout_ns and not self._failed:
            self.fail("TIMEOUT")


def payloads_for(slot: int, size: int) -> tuple[bytes, bytes]:
    """Two different requests of ``size`` bytes for connection slot ``slot``."""
    base = bytes((slot * 7 + i) % 251 for i in range(251))
    first = (base * (size // len(base) + 1))[:size]
    second = bytes(b ^ 0x55 for b in first)
    return first, second


def bulk_chunk(size: int) -> bytes:
    # 251 is prime: the pattern does not line up with power-of-two chunk and read sizes.
    return (bytes(range(251)) * (size // 251 + 1))[:size]


ConnectionFactory = Callable[[int, RunState], _Connection]


def _factory(share: LoadShare) -> ConnectionFactory:
    if share.mode == "pingpong":
        payloads = [payloads_for(slot, share.size) for slot in range(min(share.connections, 64))]
        return lambda slot, state: PingPongConnection(state, payloads[slot % len(payloads)])
    chunk = bulk_chunk(share.size)
    return lambda slot, state: BulkConnection(state, chunk)


class Control(abc.ABC):
    """How one process talks to the run: the start barrier and progress publishing."""

    @abc.abstractmethod
    async def ready(self) -> float:
        """Every slot has made its first attempt; the monotonic time at which to start."""

    @abc.abstractmethod
    def publish(self, progress: Progress) -> None:
        """Make this process's progress visible to whoever reports it."""


async def _open(share: LoadShare, make: Callable[[], _Connection]) -> _Connection:
    sock = await connect(share.host, share.port, share.tcp)
    try:
        _, protocol = await asyncio.get_running_loop().create_connection(make, sock=sock)
    except BaseException:
        sock.close()
        raise
    return protocol


async def _keep_connected(
    slot: int,
    share: LoadShare,
    state: RunState,
    make: ConnectionFactory,
    started: asyncio.Event,
    attempted: asyncio.Event,
    live: dict[int, _Connection],
) -> None:
    """Hold one connection open for the run; count each failure and connect again."""
    while True:
        try:
            async with asyncio.timeout(share.timeout_s):
                connection = await _open(share, lambda: make(slot, state))
        except TimeoutError:
            state.errors["CONNECT_TIMEOUT"] += 1
        except OSError as error:
            state.errors[error_name(error)] += 1
        else:
            live[slot] = connection
            attempted.set()
            await started.wait()
            if state.running and not connection.closed.done():
                connection.start()
            await connection.closed
            del live[slot]
        attempted.set()
        await started.wait()
        if not state.running:
            return
        await asyncio.sleep(RECONNECT_DELAY_S)


class _StopRequest:
    """A stop signal: ends whichever phase is running, and marks the run interrupted."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.interrupted = False

    def on_signal(self, signum: int) -> None:
        self.interrupted = True
        self.event.set()


class _Slots:
    """Every connection slot's task, and the connections open right now."""

    def __init__(self, share: LoadShare, state: RunState, make: ConnectionFactory) -> None:
        self.started = asyncio.Event()  # the run has started: connections begin their traffic
        self.live: dict[int, _Connection] = {}
        self._attempts = [asyncio.Event() for _ in range(share.connections)]
        self.tasks = [
            asyncio.create_task(
                _keep_connected(
                    slot, share, state, make, self.started, self._attempts[slot], self.live
                )
            )
            for slot in range(share.connections)
        ]

    async def all_attempted(self) -> None:
        """Wait until every slot has made its first connection attempt."""
        await asyncio.gather(*(attempt.wait() for attempt in self._attempts))


class _ProgressPublisher:
    """Publishes this process's progress, and cuts connections whose request is overdue."""

    def __init__(self, state: RunState, control: Control) -> None:
        self._state = state
        self._control = control
        self._progress = Progress()

    def publish(self, phase: int) -> None:
        state, progress = self._state, self._progress
        progress.phase = phase
        progress.completed = state.progress_completed
        progress.bytes_received = state.progress_bytes
        progress.errors = sum(state.errors.values())
        progress.connected = state.connected
        self._control.publish(progress)

    async def publish_and_sweep(self, timeout_s: float, live: dict[int, _Connection]) -> None:
        state = self._state
        timeout_ns = round(timeout_s * 1e9)
        while True:
            await asyncio.sleep(0.1)
            if state.running:
                now = time.perf_counter_ns()
                for connection in list(live.values()):
                    connection.check_timeout(now, timeout_ns)
            self.publish(Phase.MEASURING if state.measuring else self._progress.phase)


@dataclass(frozen=True)
class _Window:
    """The measured window, on the monotonic clock, and what ended it."""

    start: float
    end: float
    stopped_by: StoppedBy


async def drive(share: LoadShare, control: Control) -> ProcessResult:
    """Run this process's share of the load and return its counts for the window."""
    loop = asyncio.get_running_loop()
    state = RunState(share.requests)
    make = _factory(share)
    stop = _StopRequest()
    on_stop_signals(loop, stop.on_signal)
    slots = _Slots(share, state, make)
    progress = _ProgressPublisher(state, control)
    publisher = asyncio.create_task(progress.publish_and_sweep(share.timeout_s, slots.live))
    # The hot path makes no reference cycles; the collector's passes over what it allocates
    # would be pure overhead, so it is off for the (bounded) run.
    collecting = gc.isenabled()
    gc.disable()
    try:
        window = await _run_phases(share, control, state, slots, stop, progress)
    finally:
        if collecting:
            gc.enable()
        await _tear_down(state, publisher, slots)
        forget_stop_signals(loop)
    return _result(state, window)


async def _run_phases(
    share: LoadShare,
    control: Control,
    state: RunState,
    slots: _Slots,
    stop: _StopRequest,
    progress: _ProgressPublisher,
) -> _Window:
    """Connect every slot, wait for the start time, warm up, measure, stop."""
    await slots.all_attempted()
    start_at = await control.ready()
    await _wait_until(start_at, stop.event)
    state.running = True
    slots.started.set()
    progress.publish(Phase.WARMUP)
    await _wait_until(start_at + share.warmup_s, stop.event)
    window_start = time.monotonic()
    state.measure()
    progress.publish(Phase.MEASURING)
    await _wait_for_window_end(window_start + share.duration_s, state, stop.event)
    window_end = time.monotonic()
    stopped_by: StoppedBy = "duration"
    if stop.interrupted:
        stopped_by = "interrupted"
    elif state.all_requests_done.is_set():
        stopped_by = "requests"
    state.stop()
    progress.publish(Phase.DONE)
    return _Window(window_start, window_end, stopped_by)


async def _wait_for_window_end(deadline: float, state: RunState, stop: asyncio.Event) -> None:
    """Wait until the monotonic ``deadline``, the last ``--requests`` answer, or ``stop``."""
    ends = [
        asyncio.create_task(stop.wait()),
        asyncio.create_task(state.all_requests_done.wait()),
    ]
    if not stop.is_set():
        await asyncio.wait(
            ends,
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    for end in ends:
        end.cancel()


async def _tear_down(state: RunState, publisher: asyncio.Task[None], slots: _Slots) -> None:
    """Stop the publisher and every slot, and cut the connections still open."""
    state.running = False
    state.finished = True
    publisher.cancel()
    for task in slots.tasks:
        task.cancel()
    for connection in list(slots.live.values()):
        connection.transport.abort()
    await asyncio.gather(publisher, *slots.tasks, return_exceptions=True)


def _result(state: RunState, window: _Window) -> ProcessResult:
    return ProcessResult(
        window_s=max(window.end - window.start, 0.0),
        completed=state.completed,
        failed=state.failed,
        bytes_sent=state.bytes_sent,
        bytes_received=state.bytes_received,
        errors=dict(state.errors),
        histogram=LatencyHistogram.from_counts(state.measured_counts),
        stopped_by=window.stopped_by,
    )


async def _wait_until(moment: float, stop: asyncio.Event) -> None:
    """Sleep until the monotonic time ``moment``, or until ``stop`` is set."""
    delay = moment - time.monotonic()
    if delay <= 0 or stop.is_set():
        return
    try:
        async with asyncio.timeout(delay):
            await stop.wait()
    except TimeoutError:
        pass
