"""EchoServer: the listening sockets, signal handling and graceful shutdown of the echo server.

The per-connection hot path lives in ``protocol.EchoProtocol``; this module binds the
sockets (with the TCP options applied, so accepted connections inherit them), tracks open
connections for the logs, and turns SIGTERM/SIGINT into a shutdown that stops accepting,
lets the echoes under way finish, and exits 0 within the shutdown timeout. The handlers are
installed explicitly, which is also what makes the signals work when the server is PID 1 of
a container (the kernel drops default-action signals sent to PID 1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tcpecho import events, loops
from tcpecho.logs import get_logger
from tcpecho.process import forget_stop_signals, on_stop_signals, raise_open_file_limit
from tcpecho.server.protocol import EchoProtocol
from tcpecho.settings import SettingError, check_duration, check_range
from tcpecho.tcp.info import listen_queue
from tcpecho.tcp.listen import listen, listening_socket
from tcpecho.tcp.names import error_name, format_address
from tcpecho.tcp.options import EffectiveOptions, TcpOptions, read_effective

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from tcpecho.metrics import MetricsEndpoint

MAX_WORKERS = 256
ASYNCIO_ACCEPT_BATCH = 64


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"  # noqa: S104 - an echo server in a pod listens on every address
    port: int = 8000  # 0: any free port
    tcp: TcpOptions = field(default_factory=TcpOptions)
    catch_sigterm: bool = False
    shutdown_timeout_s: float = 10.0
    # Connections the kernel completes before the server accepts them. A burst of connects
    # (or a server descheduled for a moment on a busy machine) fills a short queue, and the
    # kernel then drops SYNs: each costs the client a 1 s retransmission. Linux caps this at
    # net.core.somaxconn (4096 since 5.4); server_started logs what the kernel took.
    backlog: int = 4096
    loop: loops.LoopName = "auto"
    # Processes sharing the port through SO_REUSEPORT (server.supervisor); 1 = this one.
    workers: int = 1
    # /metrics on --host at this port (0: any free port); None: no metrics.
    metrics_port: int | None = None
    # Open connections at most; one more is closed at once (connection_rejected). None: no limit.
    max_connections: int | None = None
    # Close a connection that has echoed nothing for this long (connection_idle). None: never.
    idle_timeout_s: float | None = None

    def __post_init__(self) -> None:
        check_range("port", self.port, 0, 65535)
        check_duration("shutdown_timeout", self.shutdown_timeout_s)
        check_range("backlog", self.backlog, 1)
        check_range("workers", self.workers, 1, MAX_WORKERS)
        check_range("metrics_port", self.metrics_port, 0, 65535)
        check_range("max_connections", self.max_connections, 1)
        check_duration("idle_timeout", self.idle_timeout_s, minimum=0.001)
        if self.metrics_port is None:
            return
        if self.workers > 1:
            # Each worker has its own counters; one port cannot show them all.
            raise SettingError(
                "metrics_port",
                "cannot be used with --workers above 1: each worker counts for itself, "
                "and one port shows one process",
            )
        if self.metrics_port == self.port != 0:
            raise SettingError("metrics_port", f"must differ from --port ({self.port})")


@dataclass(slots=True)
class ServerTotals:
    """Counts that change once per connection or signal, never per message: what the
    metrics read when scraped (``server.metrics``), besides the open connections."""

    connections_accepted: int = 0
    connections_rejected: int = 0  # beyond --max-connections
    connections_idle: int = 0  # closed by --idle-timeout
    bytes_echoed_closed: int = 0  # by the connections that have closed; open ones count theirs
    signals_ignored: int = 0


@dataclass(slots=True)  # one per open connection: slots keep 10,000 of them small
class _ConnectionInfo:
    peer: str
    opened_at: float
    # For --idle-timeout: the echo count when the sweep last saw it change, and when.
    echoed_at_sweep: int = 0
    quiet_since: float = 0.0


class EchoServer:
    """Serve until a stop signal, then shut down gracefully."""

    def __init__(
        self,
        config: ServerConfig,
        sockets: list[socket.socket] | None = None,
        worker: int | None = None,
    ) -> None:
        """``sockets``: listening sockets bound already (a worker's); ``worker``: its number."""
        self.config = config
        self.log = get_logger() if worker is None else get_logger(worker=worker)
        self._bound = sockets
        self.connections: dict[EchoProtocol, _ConnectionInfo] = {}
        self.addresses: list[str] = []
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._aborted = 0  # connections cut by a second signal or the shutdown timeout
        self.totals = ServerTotals()
        self.metrics_addresses: list[str] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._descriptors = DescriptorWatch(self.log, lambda: len(self.connections))

    # -- sockets -----------------------------------------------------------------------

    def bind(self) -> list[socket.socket]:
        """Listening sockets for the configured host, options applied before listen."""
        return listen(
            self.config.host, self.config.port, backlog=self.config.backlog, prepare=self._prepare
        )

    def bind_again(self, sockets: list[socket.socket]) -> list[socket.socket]:
        """New listening sockets on exactly the addresses of ``sockets`` (SO_REUSEPORT)."""
        again: list[socket.socket] = []
        try:
            for sock in sockets:
                dual_stack = sock.family == socket.AF_INET6 and not sock.getsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
                )
                again.append(
                    listening_socket(
                        sock.family,
                        sock.getsockname(),
                        dual_stack,
                        self.config.backlog,
                        self._prepare,
                    )
                )
        except BaseException:
            for sock in again:
                sock.close()
            raise
        return again

    def _prepare(self, sock: socket.socket) -> None:
        if self.config.workers > 1:
            # Each worker listens on a socket of its own and the kernel spreads new
            # connections between them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.config.tcp.without_connect_options().apply(sock)

    # -- connection registry (called by EchoProtocol) ------------------------------------

    def opened(self, connection: EchoProtocol, options: EffectiveOptions | None = None) -> None:
        """``options``: what the accepted socket carries, read once from its listener
        (``_Listener``); None reads them from the connection's own socket."""
        transport = connection.transport
        peer = format_address(transport.get_extra_info("peername"))
        limit = self.config.max_connections
        if limit is not None and len(self.connections) >= limit:
            self._reject(connection, peer, limit)
            return
        now = time.monotonic()
        self.connections[connection] = _ConnectionInfo(peer=peer, opened_at=now, quiet_since=now)
        self.totals.connections_accepted += 1
        self._all_closed.clear()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= self._descriptors.limit - 1:
            # Descriptors are handed out lowest first: this one was the last.
            self._descriptors.exhausted()
        if options is None:
            options = read_effective(sock) if sock is not None else None
        events.emit(
            self.log,
            events.ConnectionAccepted(
                peer=peer,
                local=format_address(transport.get_extra_info("sockname")),
                options=options,
                connections=len(self.connections),
            ),
        )

    def _reject(self, connection: EchoProtocol, peer: str, limit: int) -> None:
        """Beyond --max-connections: close at once, before reading anything; never registered,
        so connection_lost finds nothing to log and the open ones are untouched."""
        connection.transport.close()
        self.totals.connections_rejected += 1
        events.emit(
            self.log,
            events.ConnectionRejected(
                peer=peer, connections=len(self.connections), max_connections=limit
            ),
        )

    def closed(self, connection: EchoProtocol, error: Exception | None) -> None:
        info = self.connections.pop(connection, None)
        if not self.connections:
            self._all_closed.set()
        self._descriptors.freed(len(self.connections))
        if info is None:
            return
        self.totals.bytes_echoed_closed += connection.bytes_echoed
        events.emit(
            self.log,
            events.ConnectionClosed(
                peer=info.peer,
                bytes_echoed=connection.bytes_echoed,
                duration_s=round(time.monotonic() - info.opened_at, 6),
                error=error_name(error) if error is not None else None,
                connections=len(self.connections),
            ),
        )

    def descriptor_bursts(self) -> int:
        """How many times the open-file limit stopped accepting (descriptors_exhausted)."""
        return self._descriptors.bursts

    def bytes_echoed(self) -> int:
        """Bytes echoed since the start: the closed connections' total and the open ones'."""
        return self.totals.bytes_echoed_closed + sum(c.bytes_echoed for c in self.connections)

    # -- lifecycle -----------------------------------------------------------------------

    async def serve(self) -> int:
        """Serve until stopped; the process exit status."""
        try:
            sockets = self._bound if self._bound is not None else self.bind()
        except OSError as error:
            events.emit(self.log, failed_to_bind(self.config, error))
            return 1
        metrics = None
        if self.config.metrics_port is not None:
            metrics = await self._serve_metrics(self.config.metrics_port)
            if metrics is None:  # metrics_failed is logged
                for sock in sockets:
                    sock.close()
                return 1
        try:
            await self._start_serving(sockets)
            await self._stop.wait()
            await self._shutdown()
        finally:
            if metrics is not None:
                await metrics.close()
        return 0

    async def _start_serving(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        self._descriptors.watch(loop)
        plain_asyncio = type(loop).__module__.startswith("asyncio")
        for sock in sockets:
            listener = _Listener(self, accepted_options(sock))
            # The backlog again: the loop listens anew on a socket it is given, with its own
            # default (100) unless told. asyncio also takes it as how many connections to
            # accept in one go, and (Python 3.11 here) keeps trying that many after EMFILE,
            # each try scheduling another retry (CPython gh-151615): at 4096 that is a
            # spinning loop. There it accepts at most ASYNCIO_ACCEPT_BATCH in one go, and the
            # kernel's backlog is set again right after (its retries do not listen again).
            server = await loop.create_server(
                functools.partial(EchoProtocol, listener),
                sock=sock,
                backlog=min(ASYNCIO_ACCEPT_BATCH, self.config.backlog)
                if plain_asyncio
                else self.config.backlog,
            )
            if plain_asyncio:
                sock.listen(self.config.backlog)
            self._servers.append(server)
            self.addresses.append(format_address(sock.getsockname()))
        on_stop_signals(loop, self._on_signal)
        if self.config.idle_timeout_s is not None:
            self._sweeper = asyncio.create_task(self._sweep_idle(self.config.idle_timeout_s))
        events.emit(
            self.log,
            events.ServerStarted(
                addresses=self.addresses,
                pid=os.getpid(),
                max_open_files=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                backlog=listen_queue(sockets[0])[1],  # what the kernel took
                loop=type(loop).__module__.split(".")[0],
                catch_sigterm=self.config.catch_sigterm,
                options=read_effective(sockets[0]),
            ),
        )
        self.started.set()

    async def _sweep_idle(self, idle_s: float) -> None:
        """Close connections that echoed nothing for ``idle_s``: a sweep of the registry a few
        times per timeout, so the echo's hot path stamps no time per message. A connection
        closes between ``idle_s`` and ``idle_s`` plus one sweep after its last byte."""
        period = min(max(idle_s / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection, info in list(self.connections.items()):
                if connection.bytes_echoed != info.echoed_at_sweep:
                    info.echoed_at_sweep = connection.bytes_echoed
                    info.quiet_since = now
                elif now - info.quiet_since >= idle_s and not connection.transport.is_closing():
                    self.totals.connections_idle += 1
                    events.emit(
                        self.log,
                        events.ConnectionIdle(
                            peer=info.peer, idle_s=round(now - info.quiet_since, 3)
                        ),
                    )
                    # close, not abort: what was received is still echoed, then FIN.
                    connection.transport.close()

    async def _serve_metrics(self, port: int) -> MetricsEndpoint | None:
        """/metrics on --host; None when it cannot listen (metrics_failed is logged).

        Imported here: a server without --metrics-port never loads prometheus_client."""
        from tcpecho import metrics
        from tcpecho.server.metrics import ServerCollector

        registry = metrics.new_registry()
        registry.register(ServerCollector(self))
        endpoint = await metrics.serve(registry, self.config.host, port, self.log)
        if endpoint is not None:
            self.metrics_addresses = endpoint.addresses
        return endpoint

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and self.config.catch_sigterm:
            self.totals.signals_ignored += 1
            events.emit(self.log, events.SignalIgnored(signal=name, reason="--catch-sigterm"))
            return
        if self._stop.is_set():
            events.emit(
                self.log, events.ShutdownForced(signal=name, connections=len(self.connections))
            )
            self._abort_all()
            return
        events.emit(
            self.log, events.ShutdownStarted(signal=name, connections=len(self.connections))
        )
        self._stop.set()

    def _abort_all(self) -> None:
        self._aborted += len(self.connections)
        for connection in list(self.connections):
            connection.transport.abort()

    async def _shutdown(self) -> None:
        started = time.monotonic()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.drain_and_close()
        if self.connections:
            try:
                async with asyncio.timeout(self.config.shutdown_timeout_s):
                    await self._all_closed.wait()
            except TimeoutError:
                self._abort_all()
                # abort() reports connection_lost on the next loop iteration.
                await asyncio.sleep(0)
        events.emit(
            self.log,
            events.ServerStopped(
                duration_s=round(time.monotonic() - started, 6),
                aborted_connections=self._aborted,
            ),
        )


class _Listener:
    """One listening socket's connections, registered with its server together with the
    options every one of them carries: read once per listener, not per connection."""

    __slots__ = ("_options", "_server")

    def __init__(self, server: EchoServer, options: EffectiveOptions) -> None:
        self._server = server
        self._options = options

    def opened(self, connection: EchoProtocol) -> None:
        self._server.opened(connection, self._options)

    def closed(self, connection: EchoProtocol, error: Exception | None) -> None:
        self._server.closed(connection, error)


def accepted_options(listening: socket.socket) -> EffectiveOptions:
    """The options of every connection ``listening`` accepts, read from the listener.

    Valid because Linux builds an accepted socket as a clone of its listener
    (``sk_clone_lock``, ``inet_csk_clone_lock``): TCP_USER_TIMEOUT, SO_KEEPALIVE,
    TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, TCP_SYNCNT and IP(V6)_RECVERR come over as they are on
    the listener, and nothing in tcpecho changes them after accept. The one exception is
    TCP_NODELAY, which uvloop and asyncio both set on every socket they accept, whatever the
    listener has. Reading them per connection cost 8 getsockopt and 9 getsockname calls
    (uvloop's socket wrapper asks for the address on every call) for each accept;
    tests/server/test_server.py checks the logged values against an accepted socket's own.
    """
    return dataclasses.replace(read_effective(listening), nodelay=True)


class DescriptorWatch:
    """Says once per burst that the open-file limit stops the server from accepting, and
    once that it accepts again.

    Neither loop stops serving or spins when ``accept`` fails with EMFILE: uvloop (libuv)
    closes the connections it cannot take, at once and silently; asyncio logs each failure
    and retries a second later. So the server notices for itself: uvloop hands out the
    lowest free descriptor, and a connection given the last one means the next cannot be
    accepted; asyncio's failures reach the loop's exception handler, which this replaces
    for them. The burst ends when the open connections fall a tenth of the way back (at
    least one), so a server that sits at the limit logs it once, not once per connection.
    """

    def __init__(self, log: FilteringBoundLogger, open_connections: Callable[[], int]) -> None:
        self.log = log
        self._open_connections = open_connections
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._since: float | None = None  # when the burst began
        self._open_then = 0
        self.bursts = 0

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take asyncio's accept failures from the loop's exception handler."""
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        default = loop.get_exception_handler()

        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            error = context.get("exception")
            if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
                self.exhausted()  # asyncio retries by itself, a second later
                return
            if default is None:
                loop.default_exception_handler(context)
            else:
                default(loop, context)

        loop.set_exception_handler(handle)

    def exhausted(self) -> None:
        if self._since is not None:
            return
        self._since = time.monotonic()
        self.bursts += 1
        connections = self._open_then = self._open_connections()
        events.emit(
            self.log,
            events.DescriptorsExhausted(max_open_files=self.limit, connections=connections),
        )

    def freed(self, connections: int) -> None:
        """A connection closed; ``connections`` are still open."""
        if self._since is None:
            return
        # asyncio reports the failure before the connections it did accept are open.
        self._open_then = max(self._open_then, connections + 1)
        if connections > self._open_then - max(1, self._open_then // 10):
            return
        events.emit(
            self.log,
            events.DescriptorsAvailable(
                connections=connections, exhausted_s=round(time.monotonic() - self._since, 3)
            ),
        )
        self._since = None


def failed_to_bind(config: ServerConfig, error: OSError) -> events.ServerFailed:
    return events.ServerFailed(
        host=config.host, port=config.port, errno=error_name(error), error=str(error)
    )


def run(config: ServerConfig) -> int:
    """Run one server process on the configured loop until it stops; the exit status."""
    raise_open_file_limit()
    return loops.run(serve_process(EchoServer(config)), config.loop)


async def serve_process(server: EchoServer) -> int:
    """Serve as the owner of the process, which exits right after.

    Once the server has stopped, stop signals are ignored: until then the loop's handlers
    take a second signal as "cut the connections now"; after, a late SIGTERM would kill the
    exiting process (status 143, not 0) and a late SIGINT would end it in a traceback.
    """
    status = await server.serve()
    forget_stop_signals(asyncio.get_running_loop(), ignore=True)
    return status
