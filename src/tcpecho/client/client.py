"""EchoClient: the periodic request/verify loop, its deadlines and retries, and detection timing.

The client sends a numbered request every ``interval``, reads back exactly the bytes it
sent and compares them. Between requests it keeps watching the connection, so a failure
on an idle connection (keepalive giving up, a FIN, a reset) is noticed when it happens
rather than at the next request. Each failure is logged once, as ``connection_failed``,
with the errno name and two clocks users compare across settings:

- ``detection_s``: from sending the request that was never answered (or from starting
  the connect) to the moment the failure surfaced; ``None`` when the connection was idle;
- ``since_last_response_s``: from the last echo received to the failure.

Both are measured with the monotonic clock around the exact send and the exact failure.
``tcp_info`` adds the kernel's counters at that moment (retransmissions, backoff, RTO).

While a request waits longer than ``tcp_info_interval``, the client logs
``waiting_for_response`` every interval: the kernel's counters now, and when the kernel
model (this namespace's sysctls, this socket's options) expects the wait to end.
``connected`` says the same beforehand, for a busy and for an idle connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from tcpecho import events, loops
from tcpecho.events import CONNECT_TIMEOUT, MISMATCH, READ_TIMEOUT, UNEXPECTED_DATA, Phase
from tcpecho.logs import get_logger
from tcpecho.model import Activity, Failure, KernelSettings, Prediction, predict
from tcpecho.process import forget_stop_signals, on_stop_signals
from tcpecho.settings import Deadlines, SettingError, check_duration, check_range
from tcpecho.sizes import format_size
from tcpecho.tcp.connect import connect
from tcpecho.tcp.info import TcpInfo, read_tcp_info
from tcpecho.tcp.names import EOF, error_name, format_address
from tcpecho.tcp.options import TcpOptions, read_effective

if TYPE_CHECKING:
    from tcpecho.metrics import MetricsEndpoint

FOREVER = -1  # --retries value that never gives up, like the original reproduction's client


# --request-size: at most 1 GiB, since the client holds the request and its echo in memory
# (about three times the size at the peak); 16 MiB already fills the windows of a peer that
# stopped reading under Linux's default buffer limits.
MAX_REQUEST_SIZE = 1024**3
# A sized request keeps this many digits free for its number, so that every request of the
# run, however long it goes on (2**64 - 1 has 20 digits), fits the size.
SEQ_DIGITS = 20
# What pads a sized request, repeated: printable, a space after the message, then letters and
# digits. Its period (63 bytes) is not a power of two, so a lost, doubled or shifted chunk of
# the echo does not line up with the bytes it replaces.
_PADDING = (" " + string.ascii_letters + string.digits).encode()


def encode_request(seq: int, message: str, size: int | None = None) -> bytes:
    """The bytes sent for request ``seq``: ``"<seq> <message>\\n"``. Any RFC 862 server sends
    them back unchanged, and the echo must match them exactly.

    With ``size``, exactly ``size`` bytes: the same ``"<seq> <message>"``, padded with
    ``_PADDING`` repeated, then ``"\\n"``; ``ValueError`` when they do not fit."""
    if size is None:
        return f"{seq} {message}\n".encode()
    prefix = f"{seq} {message}".encode()
    padding = size - len(prefix) - 1
    if padding < 0:
        raise ValueError(f"request {seq} needs {len(prefix) + 1} bytes, more than {size}")
    repeated = _PADDING * (padding // len(_PADDING) + 1)
    return b"".join((prefix, memoryview(repeated)[:padding], b"\n"))


def smallest_request_size(message: str) -> int:
    """The least ``--request-size`` that holds every request with ``message``: its number
    (up to ``SEQ_DIGITS`` digits), a space, the message and the newline."""
    return SEQ_DIGITS + 1 + len(message.encode()) + 1


@dataclass(frozen=True)
class ClientConfig:
    server: str = "server"
    port: int = 8000
    interval_s: float = 5.0
    count: int = 0  # 0: forever
    message: str = "ping"
    tcp: TcpOptions = field(default_factory=TcpOptions)
    deadlines: Deadlines = field(default_factory=Deadlines)
    retries: int = 0  # reconnect attempts after a failure; FOREVER never gives up
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    tcp_info_interval_s: float = 1.0  # waiting_for_response's pace; 0: none
    loop: loops.LoopName = "auto"
    metrics_port: int | None = None  # /metrics on every address (0: any free port); None: off
    request_size: int | None = None  # bytes in each request, padded; None: "<seq> <message>\n"

    def __post_init__(self) -> None:
        check_range("port", self.port, 1, 65535)
        check_duration("interval", self.interval_s)
        check_range("count", self.count, 0)
        check_range("retries", self.retries, FOREVER)
        check_duration("retry_backoff", self.retry_backoff_s, minimum=0.001)
        check_duration("retry_backoff_max", self.retry_backoff_max_s, minimum=0.001)
        check_duration("tcp_info_interval", self.tcp_info_interval_s)
        check_range("metrics_port", self.metrics_port, 0, 65535)
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise SettingError("retry_backoff_max", "must not be shorter than --retry-backoff")
        self._check_request_size()

    def _check_request_size(self) -> None:
        size = self.request_size
        if size is None:
            return
        smallest = smallest_request_size(self.message)
        if size < smallest:
            raise SettingError(
                "request_size",
                f"{format_size(size)} is below the minimum of {smallest} bytes: a request holds "
                f"its number (room for {SEQ_DIGITS} digits), a space, the message "
                f"({len(self.message.encode())} bytes) and a newline",
            )
        if size > MAX_REQUEST_SIZE:
            raise SettingError(
                "request_size",
                f"{format_size(size)} is above the maximum of {format_size(MAX_REQUEST_SIZE)}",
            )


def describe_mismatch(request: bytes, echo: bytes) -> str:
    """What came back instead of ``request``: both whole when short, else where they part."""
    if len(request) <= 200:
        return f"sent {request!r}, got back {echo!r}"
    at = _first_difference(request, echo)
    return (
        f"the echo of {len(request)} bytes first differs at byte {at}: sent "
        f"{request[at : at + 32]!r}..., got back {echo[at : at + 32]!r}..."
    )


def _first_difference(one: bytes, other: bytes, chunk: int = 65536) -> int:
    """The offset of the first byte where ``one`` and ``other`` differ (chunk by chunk: a
    sized request may be a gigabyte)."""
    shortest = min(len(one), len(other))
    for start in range(0, shortest, chunk):
        end = min(start + chunk, shortest)
        if one[start:end] != other[start:end]:
            return next(i for i in range(start, end) if one[i] != other[i])
    return shortest


@dataclass
class Summary:
    sent: int = 0
    received: int = 0
    failures: int = 0
    reconnects: int = 0
    longest_detection_s: float | None = None


class ConnectionFailedError(Exception):
    """A failure of the connection or of the echo, named the way the logs name it."""

    def __init__(
        self,
        name: str,
        error: str,
        *,
        phase: Phase,
        unanswered_since: float | None,
        seq: int | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(f"{name}: {error}")
        self.name = name
        self.error = error
        self.phase = phase
        self.unanswered_since = unanswered_since
        self.seq = seq
        self.fatal = fatal  # retrying cannot help (the echo did not match)
        self.detected_at = time.monotonic()


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # A duplicate descriptor of the same kernel socket: it outlives the event loop's own
    # descriptor, so TCP_INFO can still be read after the loop has closed the connection.
    kernel_view: socket.socket | None = None
    # The options the socket really carries, and the RTO a lost request would wait first.
    tcp: TcpOptions = field(default_factory=TcpOptions)
    rto_ms: float | None = None
    echoed: int = 0

    def last_tcp_info(self) -> TcpInfo | None:
        """The kernel's counters for this connection, then release the duplicate."""
        if self.kernel_view is None:
            return None
        try:
            return read_tcp_info(self.kernel_view)
        except OSError:
            return None
        finally:
            self.release()

    def tcp_info(self) -> TcpInfo | None:
        """The kernel's counters for this connection now."""
        if self.kernel_view is None:
            return None
        return read_tcp_info(self.kernel_view)

    def note_rto(self) -> float | None:
        """Read the RTO now (after an echo: what the next lost request would wait first)."""
        info = self.tcp_info()
        self.rto_ms = None if info is None else info.rto_ms
        return self.rto_ms

    def release(self) -> None:
        if self.kernel_view is not None:
            self.kernel_view.close()
            self.kernel_view = None


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": a delay in [d/2, d], d = min(cap, base * 2^(n-1)).

    Half the delay is fixed, so retries keep backing off; half is random, so many clients
    that lost the same server do not come back in lockstep.
    """
    nominal = min(cap_s, base_s * 2.0 ** (attempt - 1))
    return nominal / 2 + rng.uniform(0, nominal / 2)


class EchoClient:
    """Run the echo loop until ``count`` echoes, a failure beyond the retries, or a signal."""

    def __init__(self, config: ClientConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.summary = Summary()
        self.log = get_logger()
        self._rng = rng or random.Random()
        self._seq = 0
        self._connection_number = 0
        self._last_response_at: float | None = None
        self._failure_outstanding = False
        self._stopped_by: str | None = None
        self._unanswered: tuple[int, float] | None = None  # (seq, sent at) of the request waiting
        self._kernel = KernelSettings()  # this namespace's, read when the client runs
        self._connection: _Connection | None = None  # the one in use, for the metrics
        self._observe: Callable[[events.Event], None] | None = None  # the metrics, when on
        self.metrics_addresses: list[str] = []

    async def run(self) -> int:
        """The exit status: 0 when the echoes were answered, 1 on a failure left standing."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._kernel = KernelSettings.here()
        config = self.config
        metrics = None
        if config.metrics_port is not None:
            metrics = await self._serve_metrics(config.metrics_port)
            if metrics is None:
                return 1  # metrics_failed is logged; the client never started
        on_stop_signals(loop, lambda signum: self._on_signal(signum, task))
        self._emit(
            events.ClientStarted(
                server=config.server,
                port=config.port,
                interval_s=config.interval_s,
                count=config.count,
                retries=config.retries,
                loop=type(loop).__module__.split(".")[0],
            ),
        )
        try:
            status = await self._run()
        except asyncio.CancelledError:
            if self._stopped_by is None:
                raise
            task.uncancel()
            status = 1 if self._failure_outstanding else 0
        finally:
            forget_stop_signals(loop)
            structlog.contextvars.unbind_contextvars("connection")
            if metrics is not None:
                await metrics.close()
        self._emit_summary(status)
        return status

    def _emit(self, event: events.Event) -> None:
        """Log ``event``; the metrics, when on, count what the logs say."""
        events.emit(self.log, event)
        if self._observe is not None:
            self._observe(event)

    async def _serve_metrics(self, port: int) -> MetricsEndpoint | None:
        """/metrics on every address; None when it cannot listen (metrics_failed is logged).

        Imported here: a client without --metrics-port never loads prometheus_client."""
        from tcpecho import metrics
        from tcpecho.client.metrics import ClientMetrics

        registry = metrics.new_registry()
        self._observe = ClientMetrics(self, registry).observe
        endpoint = await metrics.serve(registry, metrics.every_address(), port, self.log)
        if endpoint is not None:
            self.metrics_addresses = endpoint.addresses
        return endpoint

    # -- what the metrics read when scraped -------------------------------------------------

    def waiting_s(self) -> float:
        """How long the request now waiting has been unanswered; 0 when none is."""
        if self._unanswered is None:
            return 0.0
        return time.monotonic() - self._unanswered[1]

    def connection_tcp_info(self) -> TcpInfo | None:
        """The kernel's counters for the connection in use now; None without one."""
        connection = self._connection
        if connection is None:
            return None
        try:
            return connection.tcp_info()
        except OSError:
            return None  # being torn down: its failure is being reported

    def is_connected(self) -> bool:
        return self._connection is not None

    def expected_detection_s(self) -> float | None:
        """The latest the kernel model expects a request sent now and never answered to
        fail (``connected.expected_busy.high_s``); None without a connection, or never."""
        if self._connection is None:
            return None
        prediction = self._busy_prediction(self._connection)
        return None if prediction.never else round(prediction.high_s, 3)

    def _emit_summary(self, status: int) -> None:
        summary = self.summary
        unanswered_seq = unanswered_for_s = None
        if self._unanswered is not None:
            unanswered_seq, sent_at = self._unanswered
            unanswered_for_s = round(time.monotonic() - sent_at, 6)
        self._emit(
            events.Summary(
                sent=summary.sent,
                received=summary.received,
                failures=summary.failures,
                reconnects=summary.reconnects,
                longest_detection_s=summary.longest_detection_s,
                unanswered_seq=unanswered_seq,
                unanswered_for_s=unanswered_for_s,
                stopped_by=self._stopped_by,
                exit_code=status,
            ),
        )

    def _on_signal(self, signum: int, task: asyncio.Task[int]) -> None:
        self._stopped_by = signal.Signals(signum).name
        self._emit(events.Stopping(signal=self._stopped_by))
        task.cancel()

    async def _run(self) -> int:
        attempt = 0
        while True:
            connection: _Connection | None = None
            try:
                connection = await self._connect(attempt)
                await self._exchange(connection)
                await self._close(connection)
                return 0
            except ConnectionFailedError as failure:
                self._connection = None
                tcp_info = None
                if connection is not None:
                    connection.writer.transport.abort()
                    tcp_info = connection.last_tcp_info()
                    if connection.echoed:
                        attempt = 0  # the connection worked: count retries afresh
                self._report(failure, tcp_info)
                if failure.fatal:
                    return 1
                if self.config.retries != FOREVER and attempt >= self.config.retries:
                    return 1
                attempt += 1
                await self._back_off(attempt)
            except BaseException:
                self._connection = None
                if connection is not None:
                    connection.writer.transport.abort()
                    connection.release()
                raise

    async def _back_off(self, attempt: int) -> None:
        config = self.config
        delay = backoff_delay(
            attempt, config.retry_backoff_s, config.retry_backoff_max_s, self._rng
        )
        self._emit(
            events.Reconnecting(attempt=attempt, retries=config.retries, delay_s=round(delay, 6)),
        )
        self.summary.reconnects += 1
        await asyncio.sleep(delay)

    # -- connecting ----------------------------------------------------------------------

    async def _connect(self, attempt: int) -> _Connection:
        self._connection_number += 1
        structlog.contextvars.bind_contextvars(connection=self._connection_number)
        config = self.config
        self._emit(events.Connecting(server=config.server, port=config.port, attempt=attempt))
        started = time.monotonic()
        timeout = config.deadlines.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                sock = await self._open_socket(started)
        except TimeoutError:
            raise ConnectionFailedError(
                CONNECT_TIMEOUT,
                f"no connection within {timeout}s",
                phase="connect",
                unanswered_since=started,
            ) from None
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        connection_socket = writer.get_extra_info("socket")
        kernel_view = socket.socket(fileno=os.dup(connection_socket.fileno()))
        effective = read_effective(connection_socket)
        connection = _Connection(reader, writer, kernel_view, tcp=effective)
        connection.note_rto()
        self._connection = connection
        self._emit(
            events.Connected(
                local=format_address(writer.get_extra_info("sockname")),
                peer=format_address(writer.get_extra_info("peername")),
                connect_s=round(time.monotonic() - started, 6),
                options=effective,
                expected_busy=events.Expected.of(self._busy_prediction(connection)),
                expected_idle=events.Expected.of(
                    predict(self._kernel, connection.tcp, Failure.SILENT, Activity.IDLE)
                ),
            ),
        )
        return connection

    def _busy_prediction(self, connection: _Connection) -> Prediction:
        """When a request sent now and never answered would end in a failure."""
        rto_ms = connection.rto_ms
        return predict(
            self._kernel,
            connection.tcp,
            Failure.SILENT,
            Activity.ACTIVE,
            self.config.deadlines,
            first_rto_s=None if rto_ms is None else rto_ms / 1000,
        )

    async def _open_socket(self, started: float) -> socket.socket:
        """A connected socket, options applied before connect; failures as ConnectionFailedError."""
        try:
            return await connect(self.config.server, self.config.port, self.config.tcp)
        except socket.gaierror as error:
            # Nothing was waiting for an answer: no detection time (it is not a vanished peer).
            raise ConnectionFailedError(
                error_name(error), str(error), phase="resolve", unanswered_since=None
            ) from None
        except OSError as error:
            raise ConnectionFailedError(
                error_name(error), str(error), phase="connect", unanswered_since=started
            ) from None

    async def _close(self, connection: _Connection) -> None:
        self._connection = None
        connection.release()
        connection.writer.close()
        with contextlib.suppress(OSError):
            # The echoes are all in; how the peer takes the close does not matter.
            await connection.writer.wait_closed()

    # -- exchanging ----------------------------------------------------------------------

    async def _exchange(self, connection: _Connection) -> None:
        count = self.config.count
        while count == 0 or self.summary.received < count:
            self._seq += 1
            seq = self._seq
            request = encode_request(seq, self.config.message, self.config.request_size)
            sent_at = time.monotonic()
            connection.writer.write(request)
            self.summary.sent += 1
            self._unanswered = (seq, sent_at)
            self._emit(events.RequestSent(seq=seq, bytes=len(request)))
            echo = await self._await_echo(connection, len(request), seq, sent_at)
            received_at = time.monotonic()
            self._unanswered = None
            if echo != request:
                raise ConnectionFailedError(
                    MISMATCH,
                    describe_mismatch(request, echo),
                    phase="request",
                    unanswered_since=sent_at,
                    seq=seq,
                    fatal=True,
                )
            self.summary.received += 1
            connection.echoed += 1
            self._last_response_at = received_at
            self._failure_outstanding = False
            self._emit(
                events.ResponseReceived(
                    seq=seq,
                    rtt_ms=round((received_at - sent_at) * 1000, 3),
                    rto_ms=connection.note_rto(),
                ),
            )
            if count and self.summary.received >= count:
                return
            await self._idle(connection, self.config.interval_s)

    async def _await_echo(
        self, connection: _Connection, size: int, seq: int, sent_at: float
    ) -> bytes:
        timeout = self.config.deadlines.read_timeout_s
        watcher = None
        if self.config.tcp_info_interval_s > 0:
            watcher = asyncio.create_task(self._report_waiting(connection, seq, sent_at))
        try:
            async with asyncio.timeout(timeout):
                return await self._read_echo(connection, size, seq, sent_at)
        except TimeoutError:
            raise ConnectionFailedError(
                READ_TIMEOUT,
                f"no echo within {timeout}s",
                phase="request",
                unanswered_since=sent_at,
                seq=seq,
            ) from None
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _report_waiting(self, connection: _Connection, seq: int, sent_at: float) -> None:
        """Every interval the request stays unanswered: the kernel's counters, and when the
        model expects the wait to end (the live view of a hang)."""
        interval = self.config.tcp_info_interval_s
        await asyncio.sleep(interval)
        # Only now, for the rare request that waits: the RTO it began with has not changed.
        prediction = self._busy_prediction(connection)
        gives_up_after = None if prediction.never else round(prediction.low_s, 3)
        while True:
            try:
                info = connection.tcp_info()
            except OSError:
                return  # the connection is being torn down: its failure is reported
            if info is None:
                return
            waiting = time.monotonic() - sent_at
            self._emit(
                events.WaitingForResponse(
                    seq=seq,
                    waiting_s=round(waiting, 3),
                    tcp_info=info,
                    gives_up_after_s=gives_up_after,
                    gives_up_in_s=(
                        None
                        if gives_up_after is None
                        else round(max(0.0, gives_up_after - waiting), 3)
                    ),
                    limited_by=str(prediction.mechanism),
                ),
            )
            await asyncio.sleep(interval)

    async def _read_echo(
        self, connection: _Connection, size: int, seq: int, sent_at: float
    ) -> bytes:
        """The echo, read while the request is still being written.

        A request larger than the socket buffers comes back before it is all sent: a client
        that read only after writing would fill its own receive buffer, the server would stop
        reading (it does not read what it cannot echo), and both would wait forever. The first
        failure of either side ends the exchange, and both sides are finished on the way out.
        """
        reading = asyncio.ensure_future(connection.reader.readexactly(size))
        writing = asyncio.ensure_future(connection.writer.drain())
        try:
            await asyncio.wait((reading, writing), return_when=asyncio.FIRST_EXCEPTION)
            # The reader's account first: the transport hands a kernel error to both sides,
            # and a FIN reaches only the reader while the writer may still be waiting.
            for side in (reading, writing):
                if side.done() and not side.cancelled() and (failed := side.exception()):
                    raise failed
            return reading.result()
        except (OSError, asyncio.IncompleteReadError) as error:
            raise ConnectionFailedError(
                error_name(error),
                str(error) or "connection closed by peer",
                phase="request",
                unanswered_since=sent_at,
                seq=seq,
            ) from None
        finally:
            for side in (reading, writing):
                side.cancel()
            await asyncio.gather(reading, writing, return_exceptions=True)

    async def _idle(self, connection: _Connection, seconds: float) -> None:
        """Wait ``seconds`` while watching the idle connection for a close or an error."""
        try:
            async with asyncio.timeout(seconds):
                await self._watch_idle(connection)
        except TimeoutError:
            return  # the interval passed and the connection is still up

    async def _watch_idle(self, connection: _Connection) -> None:
        try:
            unexpected = await connection.reader.read(1)
        except OSError as error:
            raise ConnectionFailedError(
                error_name(error), str(error), phase="idle", unanswered_since=None
            ) from None
        if not unexpected:
            raise ConnectionFailedError(
                EOF, "connection closed by peer", phase="idle", unanswered_since=None
            )
        raise ConnectionFailedError(
            UNEXPECTED_DATA,
            f"the server sent {unexpected!r} that no request asked for",
            phase="idle",
            unanswered_since=None,
            fatal=True,
        )

    # -- reporting -----------------------------------------------------------------------

    def _report(self, failure: ConnectionFailedError, tcp_info: TcpInfo | None) -> None:
        self.summary.failures += 1
        self._failure_outstanding = True
        self._unanswered = None  # no longer waiting: it failed
        detection_s = None
        if failure.unanswered_since is not None:
            detection_s = round(failure.detected_at - failure.unanswered_since, 6)
            longest = self.summary.longest_detection_s
            self.summary.longest_detection_s = (
                detection_s if longest is None else max(longest, detection_s)
            )
        since_last_response_s = None
        if self._last_response_at is not None:
            since_last_response_s = round(failure.detected_at - self._last_response_at, 6)
        self._emit(
            events.ConnectionFailed(
                phase=failure.phase,
                errno=failure.name,
                error=failure.error,
                seq=failure.seq,
                detection_s=detection_s,
                since_last_response_s=since_last_response_s,
                tcp_info=tcp_info,
            ),
        )


def run(config: ClientConfig) -> int:
    """Run the client on the configured loop; the exit status."""

    async def main() -> int:
        return await EchoClient(config).run()

    return loops.run(main(), config.loop)
