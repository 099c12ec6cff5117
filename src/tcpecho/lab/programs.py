"""Any program in the lab: a client or server that is not tcpecho, started from a shell
command line in a pod's namespace, and judged by what the kernel shows of its socket.

A program's logs mean nothing to the lab, so it watches the kernel instead, through the
same socket diagnostics as ``tcpecho watch``: the client is talking once its connection to
the service is ESTABLISHED with data acknowledged both ways; the fault is noticed the
moment that connection leaves ESTABLISHED or disappears. Whether the program was busy (a
request unacknowledged) or idle when the peer vanished is seen too, and the two clocks the
model speaks of are read off ``tcp_info``: the unanswered send (``last_data_sent``, unless
it already dates a retransmission: ``SendClock``) and the last data received
(``last_data_recv``). The prediction comes from the options the
program's socket really carries, read as ``watch`` reads them.

``{host}`` and ``{port}`` in a command are the service's address (for a server: its pod
address and listen port); the same values are in ``TCPECHO_LAB_HOST`` and
``TCPECHO_LAB_PORT``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tcpecho.durations import format_duration
from tcpecho.experiment import Result
from tcpecho.lab import topology as net
from tcpecho.model import SCHEDULING_S, TIMER_SLACK, Activity, Clock, Prediction
from tcpecho.settings import check_duration
from tcpecho.tcp import diag
from tcpecho.tcp.info import TcpInfo
from tcpecho.tcp.names import format_address, normalized, parse_endpoint
from tcpecho.tcp.options import TcpOptions

HOST_ENV, PORT_ENV = "TCPECHO_LAB_HOST", "TCPECHO_LAB_PORT"
POLL_S = 0.05  # how often the kernel is asked: the measurement's resolution
# How late the lab may see a program's socket close, whatever closed it: a poll, and a
# socket dump slowed by a busy machine (every case's watch shares one process; seen: 6.16 s
# for a user timeout the kernel ended by 6.04 s).
SEEN_LATE_S = 0.25
OUTPUT_LINES_KEPT = 20
# How long a program may take to be ready (a client talking to the service, a server
# listening on its port), while it shows signs of life: a whole matrix starts ~100 processes
# on a small machine, and a server may have a database to open.
READY_S = 60.0
# And while nothing of it shows in its namespace: no TCP or UDP socket, no CPU time used. A
# program that does that connects to nothing (a wrong command, a `sleep`), and waiting
# longer will not change it; a JVM or a Python import uses CPU, a connect or listen makes a
# socket, a name lookup too.
LIFELESS_S = 10.0
VITALS_EVERY_S = 0.5
PROGRAM_TIMEOUT_RANGE_S = (1.0, 3600.0)  # what --program-timeout takes


class ProgramError(RuntimeError):
    """A program that did not start, never connected, or exited before its time."""


@dataclass(frozen=True)
class StartupTimeouts:
    """How long a program may take to be ready: ``ready_s`` in all, and ``lifeless_s``
    while nothing of it shows (``Vitals``): ``sleep 100`` fails after ``lifeless_s``."""

    ready_s: float = READY_S
    lifeless_s: float = LIFELESS_S

    @classmethod
    def given(cls, seconds: float | None) -> StartupTimeouts:
        """``--program-timeout``: one limit for both, whatever the program shows; None for
        the defaults."""
        if seconds is None:
            return cls()
        low, high = PROGRAM_TIMEOUT_RANGE_S
        check_duration("program_timeout", seconds, minimum=low, maximum=high, step=0.001)
        return cls(seconds, seconds)


@dataclass(frozen=True)
class Vitals:
    """What shows of a namespace's processes: the TCP and UDP sockets of the namespace (in
    any state: listening, connecting, closing), and the CPU time the processes and their
    reaped children have used, in clock ticks. (Unix sockets do not count: the lab's own
    pipes to a program are socket pairs under uvloop.)"""

    processes: int
    sockets: int
    cpu_ticks: int


_INET_TABLES = ("tcp", "tcp6", "udp", "udp6")


def vitals(namespace: str) -> Vitals:
    """The processes in ``namespace`` (a name under /run/netns), read from /proc."""
    wanted = os.stat(f"/run/netns/{namespace}")
    pids, ticks = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            own = os.stat(f"/proc/{entry}/ns/net")
            if (own.st_dev, own.st_ino) != (wanted.st_dev, wanted.st_ino):
                continue
            with open(f"/proc/{entry}/stat") as handle:
                # After the command's closing parenthesis: utime, stime, cutime, cstime are
                # the 12th to 15th fields (proc(5) counts them 14 to 17).
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        pids.append(entry)
        ticks += sum(int(value) for value in fields[11:15])
    sockets = 0
    for pid in pids[:1]:  # any process of the namespace sees its tables
        for table in _INET_TABLES:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as handle:
                sockets += max(0, len(handle.readlines()) - 1)  # a header line first
    return Vitals(len(pids), sockets, ticks)


class Startup:
    """A program on its way to being ready, held to its ``StartupTimeouts``: ``check``, called
    as the wait goes, raises ``ProgramError`` once nothing of it has shown for
    ``lifeless_s`` or it has not been ready for ``ready_s``."""

    def __init__(
        self, namespace: str, timeouts: StartupTimeouts, subject: str, nothing: str
    ) -> None:
        self.namespace = namespace
        self.timeouts = timeouts
        self.subject = subject  # 'socat - TCP:...', the server 'socat ...'
        self.nothing = nothing  # connects to nothing, listens on nothing
        self.started_at = time.monotonic()
        self._alive_at = self.started_at  # the last look that showed a socket or CPU used
        self._looked_at = 0.0
        self._ticks: int | None = None

    async def check(self, not_ready: str, seen: str = "") -> None:
        """Raise if the program's time is up; ``not_ready`` says what it had not done, and
        ``seen`` what it did instead, if anything."""
        now = time.monotonic()
        if now - self._looked_at >= VITALS_EVERY_S:
            self._looked_at = now
            loop = asyncio.get_running_loop()
            shown = await loop.run_in_executor(None, vitals, self.namespace)
            if shown.sockets or (self._ticks is not None and shown.cpu_ticks != self._ticks):
                self._alive_at = now
            self._ticks = shown.cpu_ticks
        lifeless = self.timeouts.lifeless_s
        if now - self._alive_at > lifeless:
            raise ProgramError(
                f"{self.subject} {self.nothing}: no socket in its namespace and no CPU time "
                f"used for {format_duration(lifeless)} (--program-timeout to wait longer)"
            )
        if now - self.started_at > self.timeouts.ready_s:
            ready = format_duration(self.timeouts.ready_s)
            raise ProgramError(f"{self.subject} {not_ready} within {ready}{seen}")


def fill(command: str, host: str, port: int) -> str:
    return command.replace("{host}", host).replace("{port}", str(port))


class Program:
    """A shell command line running in a namespace, in a session of its own (so a fault can
    kill it whole), with the last lines it wrote and how it ended."""

    def __init__(self, process: asyncio.subprocess.Process, command: str) -> None:
        self.process = process
        self.command = command
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES_KEPT)
        self.exited_at: float | None = None  # monotonic
        self.started_at = time.monotonic()  # when it was asked to start (``start`` sets it)
        self._reader = asyncio.create_task(self._read())
        self.ended = asyncio.create_task(self._wait())

    @classmethod
    async def start(
        cls, topology: net.Topology, namespace: str, command: str, host: str, port: int
    ) -> Program:
        filled = fill(command, host, port)
        env = {key: value for key, value in os.environ.items() if not key.startswith("TCPECHO_")}
        env.update({HOST_ENV: host, PORT_ENV: str(port)})
        started_at = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *topology.command(namespace, ["sh", "-c", filled]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        program = cls(process, filled)
        program.started_at = started_at
        return program

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.output.append(line.decode(errors="replace").rstrip())

    async def _wait(self) -> None:
        await self.process.wait()
        self.exited_at = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.exited_at is not None else None

    def ending(self) -> str:
        """How it ended, for a case's error: its status and its last words."""
        last = f": {self.output[-1]}" if self.output else ""
        return f"{self.command!r} exited with status {self.process.returncode}{last}"

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group, children that outlive it too
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.ended
        await self._reader


def unmapped(peer: str) -> str:
    """``10.96.0.10:8000`` also for ``[::ffff:10.96.0.10]:8000``: a dual-stack AF_INET6
    socket (gRPC's, Java's) reaches an IPv4 service through a v4-mapped address."""
    host, port = parse_endpoint(peer)
    return format_address((normalized(host), port))


@dataclass(frozen=True)
class Listing:
    """The connections to the peer as one socket dump saw them, taken between ``before``
    and ``after`` (monotonic): on a busy machine the dump itself takes a while."""

    before: float
    after: float
    connections: list[diag.Connection]


@dataclass
class SendClock:
    """When the first unanswered send after the fault left, from successive looks at the
    program's socket.

    ``tcp_info``'s ``last_data_sent`` dates the last segment that carried data, and a
    retransmission is one: once the kernel has retransmitted (a tail-loss probe comes
    2 srtt + 200 ms after a lone segment), it dates the retransmission. Then the send came
    after the last look that showed nothing in flight, which is the clock's start; the
    measurement errs late by at most the time between looks, never early."""

    sent_at: float | None = None
    _clear_at: float | None = None  # the last look with nothing unacknowledged
    _clear_retransmissions: int = 0

    def look(self, start: float, info: TcpInfo) -> None:
        """One look, taken no earlier than ``start`` (monotonic)."""
        if self.sent_at is not None:
            return
        if info.unacked == 0:
            self._clear_at, self._clear_retransmissions = start, info.total_retrans
            return
        self.sent_at = start - info.last_data_sent_ms / 1000
        if self._clear_at is not None and info.total_retrans > self._clear_retransmissions:
            self.sent_at = self._clear_at


# A busy program sends within its interval of the fault (a request a second, as the model's
# busy client), with room for a loaded machine.
BUSY_SENDS_WITHIN_S = 2.0


@dataclass
class BusyAtFault:
    """Whether the program was busy when the fault came, from successive looks: a send waits
    for its ACK (``SendClock``), or, on a path that still works (a busy program never shows
    one waiting), data it sent was ACKed within ``BUSY_SENDS_WITHIN_S`` of the fault. Data
    sent later was no request in flight at the fault but an idle program's own ping (gRPC's
    HTTP/2 PING every ``keepalive_time_ms``), which keeps a path's idle timeout at bay."""

    fault_at: float
    before: diag.Connection  # the program's connection as it was talking before the fault
    _acked: bool = False

    def look(
        self, start: float, sent_at: float | None, current: diag.Connection | None
    ) -> Activity:
        early = start - self.fault_at <= BUSY_SENDS_WITHIN_S
        if not self._acked and early and current is not None:
            self._acked = current.bytes_acked > self.before.bytes_acked
        return Activity.ACTIVE if sent_at is not None or self._acked else Activity.IDLE


@dataclass
class DataAfter:
    """Whether the peer answered after ``window_end`` (monotonic), from successive looks at
    the program's socket: more bytes received than at the last look before it, or an ACK
    received after it. An idle program waiting on a read sends nothing but keepalive
    probes, whose answers carry no data: their ACK (``last_ack_recv``) is what shows that
    the path still carries the connection."""

    window_end: float
    _received: int | None = None  # at the last look before the window's end

    def look(self, start: float, connection: diag.Connection) -> bool:
        if start < self.window_end:
            self._received = connection.bytes_received
            return False
        if self._received is None:
            return False
        if connection.bytes_received > self._received:
            return True
        info = connection.info
        return info is not None and start - info.last_ack_recv_ms / 1000 > self.window_end


def shown_survival(prediction: Prediction, window_s: float | None) -> Prediction:
    """``prediction`` as the lab can see it. The model says an idle connection whose
    keepalive probes (or pings) come more often than the path's idle timeout survives it,
    and nothing that would show it when the program sends no request (it waits on a read):
    the lab sees it in the peer's answer to a packet after the window (``DataAfter``).
    Whatever kept the flow came less than a window apart, so that answer comes within
    another window after the first, on the last data's clock (timers late by their slack)."""
    if window_s is None or not (prediction.survives and prediction.never):
        return prediction
    latest = 2 * window_s * TIMER_SLACK[1] + SCHEDULING_S  # the answer seen when scheduled
    return replace(prediction, low_s=window_s, high_s=latest, clock="last-data")


class SocketWatch:
    """A thread inside a namespace that lists, every POLL_S, the connections to one peer."""

    def __init__(self, namespace: str, peer: str) -> None:
        self.namespace = namespace
        self.peer = peer
        self.latest: tuple[float, list[diag.Connection]] = (0.0, [])
        # Listings not yet read; bounded: a minute of them, and every wait reads them all.
        self._unread: collections.deque[Listing] = collections.deque(maxlen=int(60 / POLL_S))
        self.changed = asyncio.Event()
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._poll, name=f"watch-{namespace}", daemon=True)
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _poll(self) -> None:
        from pyroute2 import netns

        try:
            netns.setns(self.namespace, flags=0)  # this thread only: setns is per thread
            while not self._stop.is_set():
                before = time.monotonic()
                found = [c for c in diag.connections() if unmapped(c.peer) == self.peer]
                listing = Listing(before, time.monotonic(), found)
                self._loop.call_soon_threadsafe(self._receive, listing)
                self._stop.wait(POLL_S)
        except BaseException as error:  # reported to the case, which ends
            self.failure = error
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                self._loop.call_soon_threadsafe(self.changed.set)

    def _receive(self, listing: Listing) -> None:
        self.latest = (listing.after, listing.connections)
        self._unread.append(listing)
        self.changed.set()

    async def next(self) -> tuple[float, list[diag.Connection]]:
        """The next listing (at most POLL_S away)."""
        latest = (await self.listings())[-1]
        return latest.after, latest.connections

    async def listings(self) -> list[Listing]:
        """Every listing since the last call, oldest first, once there is a new one: none is
        lost while the caller was busy (injecting a fault takes a while)."""
        if not self._unread:
            self.changed.clear()
            await self.changed.wait()
        if self.failure is not None:
            raise ProgramError(f"socket diagnostics in {self.namespace}: {self.failure}")
        unread = list(self._unread)
        self._unread.clear()
        return unread

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)


async def wait_until_listening(
    program: Program,
    topology: net.Topology,
    port: int,
    timeouts: StartupTimeouts = StartupTimeouts(),
) -> None:
    """Until a socket listens on ``port`` in the server's namespace."""

    def listening() -> list[int]:
        found = net.in_namespace(topology.server_ns, lambda: diag.connections(listening=True))
        return sorted({c.local_port for c in found if c.state == "LISTEN"})

    loop = asyncio.get_running_loop()
    subject = f"the server {program.command!r}"
    startup = Startup(topology.server_ns, timeouts, subject, "listens on nothing")
    while port not in (ports := await loop.run_in_executor(None, listening)):
        if program.returncode is not None:
            raise ProgramError(f"the server {program.ending()}")
        elsewhere = f" (it listens on {', '.join(map(str, ports))})" if ports else ""
        await startup.check(f"listened on no port {port}", elsewhere)
        await asyncio.sleep(0.1)


@dataclass
class Talking:
    """The program's connection once it is talking, and what it was at the fault."""

    connection: diag.Connection
    seen_at: float  # monotonic


def patience(
    prediction: Prediction, watch_never_s: float, watch_at_most_s: float | None = None
) -> float:
    """How long after the fault a program's case is watched: ``watch_never_s`` when the
    model says never, else well past the model's latest time; ``watch_at_most_s`` at most."""
    # Past the model's latest: room for the program's next request (up to a few seconds
    # after the fault) and for timers later than it.
    watched = watch_never_s if prediction.never else prediction.high_s * 1.25 + 10.0
    return watched if watch_at_most_s is None else min(watched, watch_at_most_s)


class ProgramClient:
    """A client program in the lab: started, watched through the kernel, and measured."""

    def __init__(
        self,
        topology: net.Topology,
        command: str,
        result: Result,
        service: tuple[str, int] = (net.CLUSTER_IP, net.SERVICE_PORT),
    ) -> None:
        self.topology = topology
        self.command = command
        self.result = result
        self.service = service  # where it connects: {host} and {port}
        self.program: Program | None = None
        self.watch: SocketWatch | None = None
        self.talking: Talking | None = None
        self.tcp = TcpOptions()
        # What observe has seen since the fault, for the progress line: busy or idle (None
        # before its first look), and when each of the model's clocks started (monotonic).
        self.activity: Activity | None = None
        self.clock_starts: dict[Clock, float | None] = {}
        self.connect_uncertainty_s = 0.0  # wait_until_connecting's start, at most this early

    async def start(self) -> None:
        host, port = self.service
        self.program = await Program.start(
            self.topology, self.topology.client_ns, self.command, host, port
        )
        peer = f"{host}:{port}"
        self.watch = SocketWatch(self.topology.client_ns, peer)
        self.watch.start()

    async def wait_until_talking(
        self,
        timeouts: StartupTimeouts = StartupTimeouts(),
        quiet_s: float = 0.0,
    ) -> None:
        """Until the program's connection is ESTABLISHED with data acknowledged both ways,
        and, with ``quiet_s``, has carried nothing new for that long: an idle program's
        setup (a handshake, its last request) is over, so the fault finds it idle."""
        assert self.program is not None
        assert self.watch is not None
        namespace = self.topology.client_ns
        startup = Startup(namespace, timeouts, repr(self.command), "connects to nothing")
        quiet = f", then quiet for {quiet_s:g} s," if quiet_s else ""
        while True:
            at, found = await self.watch.next()
            for connection in found:
                # bytes_acked counts the SYN: more than 1 is data.
                both_ways = connection.bytes_acked > 1 and connection.bytes_received > 0
                if connection.state != "ESTABLISHED" or not both_ways:
                    continue
                talking = self.talking
                moved = talking is None or (
                    (talking.connection.inode, talking.connection.bytes_acked)
                    != (connection.inode, connection.bytes_acked)
                    or talking.connection.bytes_received != connection.bytes_received
                )
                if moved:
                    self.talking = Talking(connection, at)
                else:
                    assert talking is not None
                    talking.connection = connection  # its latest tcp_info
                assert self.talking is not None
                if at - self.talking.seen_at >= quiet_s:
                    return
            if self.program.returncode is not None:
                raise ProgramError(f"{self.program.ending()}, before it talked to the service")
            await startup.check(f"had no connection to the service with data both ways{quiet}")

    async def read_options(self) -> None:
        """The options the program's socket really carries (root reads them)."""
        assert self.talking is not None
        inode = self.talking.connection.inode
        loop = asyncio.get_running_loop()
        owners = await loop.run_in_executor(None, diag.owners, {inode})
        owner = owners.get(inode)
        options = None if owner is None else diag.socket_options(owner)
        if options is not None:
            self.result.options = options.as_dict()
            self.tcp = options

    def predictions(
        self, expect: Expectation, window_s: float | None = None
    ) -> dict[Activity, Prediction]:
        """What the model expects, busy and idle, from the options read (``expect`` adds the
        fault, the kernel and the program's own deadlines, where its profile declares them:
        the kernel cannot show those; ``window_s``: the fault's window, if it has one)."""
        info = self.talking.connection.info if self.talking else None
        first_rto_s = None if info is None else info.rto_ms / 1000
        predictions = {}
        for activity in (Activity.ACTIVE, Activity.IDLE):
            prediction = shown_survival(expect(activity, self.tcp, first_rto_s), window_s)
            if not prediction.never:
                # The lab sees the end only at its next look at the program's socket.
                prediction = replace(prediction, high_s=prediction.high_s + SEEN_LATE_S)
            predictions[activity] = prediction
        return predictions

    async def observe(
        self,
        fault_at: float,
        predictions: dict[Activity, Prediction],
        watch_never_s: float,
        watch_at_most_s: float | None = None,
        window_s: float | None = None,
    ) -> None:
        """Until the connection leaves ESTABLISHED, or the expected time has long passed
        (or ``watch_at_most_s`` has, when given), or, with ``window_s``, data came back
        after the fault's window: the connection survived it.

        Every listing since the fault counts, also those taken while the fault was being
        injected: the first one with unacknowledged data holds the clock of the send."""
        assert self.watch is not None
        assert self.talking is not None
        before = self.talking.connection
        last_data_at: float | None = None
        send = SendClock()
        busy = BusyAtFault(fault_at, before)
        after = None if window_s is None else DataAfter(fault_at + window_s)
        while True:
            for listing in await self.watch.listings():
                if listing.before < fault_at:
                    continue
                # A clock starts at the earliest the dump can have been taken, and the
                # detection is the latest: the measurement can only err late, not early.
                start, at = listing.before, listing.after
                found = listing.connections
                current = next((c for c in found if c.inode == before.inode), None)
                info = current.info if current is not None else None
                if info is not None:
                    if last_data_at is None:
                        # The idle clock: nothing arrives once the peer is gone, so the first
                        # look after the fault still shows the last data received before it.
                        last_data_at = start - info.last_data_recv_ms / 1000
                    # The first unanswered send after the fault (or the one in flight at it).
                    send.look(start, info)
                    # The last look before the socket went holds the count.
                    self.result.retransmissions = info.total_retrans
                sent_at = send.sent_at
                activity = busy.look(start, sent_at, current)
                prediction = predictions[activity]
                self.result.prediction = prediction  # what the progress line expects now
                self.activity = activity
                self.clock_starts = {
                    "request": sent_at,
                    "last-data": last_data_at,
                    "fault": fault_at,
                }
                if current is None or current.state != "ESTABLISHED":
                    self._record(at, fault_at, sent_at, last_data_at, activity, prediction)
                    return
                if after is not None and after.look(start, current):
                    self._record(None, fault_at, sent_at, last_data_at, activity, prediction)
                    self._record_echo(at, fault_at, prediction)
                    return
                if at - fault_at > patience(prediction, watch_never_s, watch_at_most_s):
                    self._record(None, fault_at, sent_at, last_data_at, activity, prediction)
                    return

    def _record_echo(self, at: float, fault_at: float, prediction: Prediction) -> None:
        """Data came back after the fault's window: the connection survived it."""
        clock_start = self.clock_starts.get(prediction.clock) or fault_at
        self.result.recovered_s = round(at - clock_start, 6)
        self.result.measured_clock = prediction.clock

    def _record(
        self,
        detected_at: float | None,
        fault_at: float,
        sent_at: float | None,
        last_data_at: float | None,
        activity: Activity,
        prediction: Prediction,
    ) -> None:
        result = self.result
        result.observed_activity = activity
        result.prediction = prediction
        if detected_at is None:
            return
        clocks: dict[Clock, float | None] = {
            "request": sent_at,
            "last-data": last_data_at,
            "fault": fault_at,
        }
        start = clocks[prediction.clock]
        result.measured_clock = prediction.clock if start is not None else "fault"
        result.measured_s = round(detected_at - (start if start is not None else fault_at), 6)

    async def note_exit(self, fault_at: float, grace_s: float = 2.0) -> None:
        """The program's own end, when it comes during the case or just after its socket
        failed (a program usually exits on the error; the lab gives it a moment)."""
        program = self.program
        if program is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(program.ended), grace_s)
        if program.exited_at is not None:
            self.result.exit_status = program.returncode
            self.result.exited_after_s = round(program.exited_at - fault_at, 6)

    async def stop(self) -> None:
        if self.watch is not None:
            await self.watch.stop()
        if self.program is not None:
            await self.program.stop()

    async def observe_connect(
        self, fault_at: float, prediction: Prediction, waited_s: float
    ) -> None:
        """A connect caught by a stale conntrack entry: until the program's SYN-SENT socket
        goes (it gave up), then until a connection of its own carries data back (a fresh
        socket got through), or ``waited_s`` after the fault."""
        assert self.watch is not None
        assert self.talking is not None
        syn = self.talking.connection.inode
        self.result.prediction = prediction
        self.result.observed_activity = Activity.CONNECTING
        self.activity = Activity.CONNECTING
        self.clock_starts = {"request": self.talking.seen_at, "fault": fault_at}
        while True:
            for listing in await self.watch.listings():
                at = listing.after
                pending = any(c.inode == syn for c in listing.connections)
                if not pending and self.result.measured_s is None:
                    self.result.measured_clock = "request"
                    self.result.measured_s = round(at - self.talking.seen_at, 6)
                talking = [
                    c
                    for c in listing.connections
                    if c.state == "ESTABLISHED" and c.bytes_received > 0 and c.inode != syn
                ]
                if talking and self.result.measured_s is not None:
                    self.result.recovered_s = round(at - fault_at, 6)
                    return
                if at - fault_at > waited_s:
                    return

    async def wait_until_connecting(self, timeouts: StartupTimeouts = StartupTimeouts()) -> None:
        """Until the program's SYN is out (its socket in SYN-SENT). The connect's clock
        starts at the last look that saw no SYN, or, when the first look saw it already, at
        the program's start: the measurement errs late, never early."""
        assert self.program is not None
        assert self.watch is not None
        startup = Startup(
            self.topology.client_ns, timeouts, repr(self.command), "connects to nothing"
        )
        cleared_at: float | None = None  # the last look that saw no SYN
        while True:
            for listing in await self.watch.listings():
                connecting = [c for c in listing.connections if c.state == "SYN_SENT"]
                if connecting:
                    start = cleared_at if cleared_at is not None else self.program.started_at
                    self.talking = Talking(connecting[0], start)
                    # How much earlier than the SYN the clock may have started.
                    self.connect_uncertainty_s = listing.after - start
                    return
                cleared_at = listing.before
            if self.program.returncode is not None:
                raise ProgramError(f"{self.program.ending()}, before it connected")
            await startup.check("sent no SYN to the service")


Expectation = Callable[[Activity, TcpOptions, "float | None"], Prediction]


def program_names(commands: Sequence[str]) -> list[tuple[str, str]]:
    """(name, command) for each ``--client-cmd``: ``NAME=CMD``, or the command shortened."""
    named = []
    for command in commands:
        head, equals, rest = command.partition("=")
        if equals and head and " " not in head and rest.strip():
            named.append((head, rest))
        else:
            short = " ".join(command.split())
            named.append((short if len(short) <= 24 else short[:23] + "~", command))
    return named
