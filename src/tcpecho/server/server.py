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
import functools
import os
import resource
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tcpecho import events, loops
from tcpecho.logs import get_logger
from tcpecho.process import forget_stop_signals, on_stop_signals, raise_open_file_limit
from tcpecho.server.protocol import EchoProtocol
from tcpecho.settings import SettingError, check_duration, check_range
from tcpecho.tcp.listen import listen, listening_socket
from tcpecho.tcp.names import error_name, format_address
from tcpecho.tcp.options import EffectiveOptions, TcpOptions, read_effective

if TYPE_CHECKING:
    from tcpecho.metrics import MetricsEndpoint

MAX_WORKERS = 256


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"  # noqa: S104 - an echo server in a pod listens on every address
    port: int = 8000  # 0: any free port
    tcp: TcpOptions = field(default_factory=TcpOptions)
    catch_sigterm: bool = False
    shutdown_timeout_s: float = 10.0
    backlog: int = 1024
    loop: loops.LoopName = "auto"
    # Processes sharing the port through SO_REUSEPORT (server.supervisor); 1 = this one.
    workers: int = 1
    # /metrics on --host at this port (0: any free port); None: no metrics.
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        check_range("port", self.port, 0, 65535)
        check_duration("shutdown_timeout", self.shutdown_timeout_s)
        check_range("backlog", self.backlog, 1)
        check_range("workers", self.workers, 1, MAX_WORKERS)
        check_range("metrics_port", self.metrics_port, 0, 65535)
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
    bytes_echoed_closed: int = 0  # by the connections that have closed; open ones count theirs
    signals_ignored: int = 0


@dataclass(slots=True)  # one per open connection: slots keep 10,000 of them small
class _ConnectionInfo:
    peer: str
    opened_at: float


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
        self.connections[connection] = _ConnectionInfo(peer=peer, opened_at=time.monotonic())
        self.totals.connections_accepted += 1
        self._all_closed.clear()
        if options is None:
            sock = transport.get_extra_info("socket")
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

    def closed(self, connection: EchoProtocol, error: Exception | None) -> None:
        info = self.connections.pop(connection, None)
        if not self.connections:
            self._all_closed.set()
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
        for sock in sockets:
            listener = _Listener(self, accepted_options(sock))
            # The backlog again: the loop listens anew on a socket it is given, with its own
            # default (100) unless told.
            server = await loop.create_server(
                functools.partial(EchoProtocol, listener),
                sock=sock,
                backlog=self.config.backlog,
            )
            self._servers.append(server)
            self.addresses.append(format_address(sock.getsockname()))
        on_stop_signals(loop, self._on_signal)
        events.emit(
            self.log,
            events.ServerStarted(
                addresses=self.addresses,
                pid=os.getpid(),
                max_open_files=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                backlog=self.config.backlog,
                loop=type(loop).__module__.split(".")[0],
                catch_sigterm=self.config.catch_sigterm,
                options=read_effective(sockets[0]),
            ),
        )
        self.started.set()

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
