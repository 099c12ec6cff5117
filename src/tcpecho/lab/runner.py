"""Running the lab: one topology, server and client per case, all cases in parallel.

A case is a fault, a client profile and an activity (active or idle). For each, the runner
builds a fresh topology, starts the real ``tcpecho server`` in the server pod namespace and
``tcpecho client --server 10.96.0.10`` in the client pod namespace (through the node's
DNAT), waits for echoes, injects the fault and reads the client's JSON log until it reports
``connection_failed`` or the case's deadline passes. The kernel model says beforehand what
to expect; the report sets the two side by side.

Cleanup is the runner's first duty: every case tears its topology down in ``finally``
(killing what runs in it); a final sweep removes whatever carries this run's prefix; and
a run started after one that was SIGKILLed removes that run's leftovers first. A stop
signal ends the cases still waiting for their outcome, marked interrupted, and the run
returns every result, the finished cases' measurements with them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from tcpecho import events
from tcpecho.durations import format_seconds
from tcpecho.experiment import Case, Fault, FaultTiming, Profile, Result, expect
from tcpecho.lab import sidecar
from tcpecho.lab import topology as net
from tcpecho.lab.faults import follow_up, inject, prepare
from tcpecho.lab.pods import CasePods, PodMaker
from tcpecho.lab.profiles import ACTIVE_INTERVAL, FAULT_PROFILES, IDLE_INTERVAL
from tcpecho.lab.programs import (
    SEEN_LATE_S,
    Program,
    ProgramClient,
    ProgramError,
    StartupTimeouts,
    patience,
    wait_until_listening,
)
from tcpecho.model import (
    Activity,
    Clock,
    InForce,
    KernelSettings,
    Mechanism,
    Prediction,
    Traffic,
)
from tcpecho.process import alive
from tcpecho.settings import check_duration, check_range
from tcpecho.tcp.options import TcpOptions

RUN_PREFIX = f"{net.PREFIX}lab-"
QUICK_RTO_MAX_MS = 1000  # with tcp_retries2=15: ~15 s instead of ~15.5 min, 16 retransmissions
QUICK_RETRIES2 = 5  # for kernels before 6.15, which have no tcp_rto_max_ms: ~13 s
QUICK_SYN_RETRIES = 2  # a connect's budget of 7 s instead of 127 s (tcp_syn_retries=6)
# How long the node's conntrack is searched for a connect's stale entry (stale-conntrack).
STALE_ENTRY_WAIT_S = 10.0
# After a connect that failed, how long the client's next connection has to echo.
RECONNECT_WAIT_S = 10.0
# tcpecho's own server and client (programs have StartupTimeouts): a whole matrix starts
# ~100 Python processes on a small machine.
STARTUP_TIMEOUT_S = 60.0
NEVER_OBSERVED_S = 15.0  # how long a case the model says never ends is watched at least
STDERR_LINES_KEPT = 5  # a process's last words, for the case's error
WARMUP_ECHOES = {Activity.ACTIVE: 2, Activity.IDLE: 1}
# Cases set up at once (namespaces, server, client, warm-up), per CPU: enough to keep the
# CPUs busy while one waits, few enough that a warm case's fault is not held up.
SETUP_SLOTS_PER_CPU = 4
TCP_RETRIES2_MAX = 100
RTO_MAX_RANGE_S = (1.0, 120.0)  # what the kernel takes for tcp_rto_max_ms

E = TypeVar("E", bound=events.Event)


@dataclass(frozen=True)
class KernelBudget:
    """Sysctls for the client namespaces: explicit ones for all, --quick for the baseline."""

    quick: bool = False
    tcp_retries2: int | None = None
    rto_max_ms: int | None = None

    def __post_init__(self) -> None:
        check_range("tcp_retries2", self.tcp_retries2, 1, TCP_RETRIES2_MAX)
        rto_max_s = None if self.rto_max_ms is None else self.rto_max_ms / 1000
        low, high = RTO_MAX_RANGE_S
        check_duration("rto_max", rto_max_s, minimum=low, maximum=high, step=0.001)

    @property
    def shortens(self) -> bool:
        """Whether --quick changes anything: explicit sysctls take its place."""
        return self.quick and self.tcp_retries2 is None and self.rto_max_ms is None

    def sysctls(self, baseline: bool, connecting: bool = False) -> dict[str, int]:
        """For a client namespace; ``baseline``: its case may be left to the retransmission
        budget (``connecting``: the SYN's), which --quick shortens."""
        values: dict[str, int] = {}
        if self.tcp_retries2 is not None:
            values["net.ipv4.tcp_retries2"] = self.tcp_retries2
        if self.rto_max_ms is not None:
            values["net.ipv4.tcp_rto_max_ms"] = self.rto_max_ms
        if self.shortens and baseline and connecting:
            values["net.ipv4.tcp_syn_retries"] = QUICK_SYN_RETRIES
        elif self.shortens and baseline:
            if rto_max_supported():
                values["net.ipv4.tcp_rto_max_ms"] = QUICK_RTO_MAX_MS
            else:
                values["net.ipv4.tcp_retries2"] = QUICK_RETRIES2
        return values


def rto_max_supported() -> bool:
    """Whether this kernel has tcp_rto_max_ms (6.15 and later): new namespaces get it too."""
    return os.path.exists("/proc/sys/net/ipv4/tcp_rto_max_ms")


def plan(faults: Sequence[Fault], profiles: Sequence[Profile], paired: bool = False) -> list[Case]:
    """Every fault with every profile, in each of the profile's activities for the fault;
    ``paired``: a built-in profile only with the faults it can change (``FAULT_PROFILES``),
    as when no --profile names them."""
    cases: list[Case] = []
    for fault in faults:
        for profile in profiles:
            builtin = profile.command is None and profile.name in _BUILTIN_NAMES
            if paired and builtin and profile.name not in FAULT_PROFILES[fault]:
                continue
            for activity in fault.activities(profile):
                cases.append(Case(fault, profile, activity, number=len(cases)))
    return cases


_BUILTIN_NAMES = frozenset(name for names in FAULT_PROFILES.values() for name in names)


# -- leftovers ---------------------------------------------------------------------------------


def _owner_pid(namespace: str) -> int | None:
    match = re.match(rf"{re.escape(RUN_PREFIX)}(\d+)-", namespace)
    return int(match.group(1)) if match else None


def stale_namespaces() -> list[str]:
    """Namespaces of lab runs that are no longer running (SIGKILLed, say)."""
    stale = []
    for name in net.leftover_namespaces(RUN_PREFIX):
        owner = _owner_pid(name)
        if owner is None or (owner != os.getpid() and not alive(owner)):
            stale.append(name)
    return stale


def remove_stale() -> list[str]:
    """Remove earlier runs' leftovers, with the processes and rules inside them."""
    stale = stale_namespaces()
    net.remove_namespaces(stale)
    return stale


# -- one case ----------------------------------------------------------------------------------


class _Process:
    """A tcpecho subprocess in a namespace whose JSON log lines are collected.

    ``raw`` keeps each line as it was, for the report's JSON; ``logged`` holds them read
    back as events; ``errors`` the last lines of its stderr, to say why it exited."""

    def __init__(self, process: asyncio.subprocess.Process, raw: list[dict[str, object]]) -> None:
        self.process = process
        self.raw = raw
        self.logged: list[events.Logged] = []
        self.errors: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())
        self.error_reader = asyncio.create_task(self._read_errors())

    @classmethod
    async def start(cls, argv: Sequence[str], raw: list[dict[str, object]]) -> _Process:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TCPECHO_")}
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group, as a fault kills a group
        )
        return cls(process, raw)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            logged = events.parse_line(line)
            if logged is not None:
                self.raw.append(logged.raw)
                self.logged.append(logged)
                self.changed.set()
        self.changed.set()

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.errors.append(line.decode(errors="replace").rstrip())

    def named(self, kind: type[E]) -> list[tuple[E, float]]:
        """Every ``kind`` event so far, with the wall time it was logged at."""
        return [(e.event, e.timestamp) for e in self.logged if isinstance(e.event, kind)]

    async def wait_for(
        self, kind: type[E], count: int = 1, timeout: float | None = None
    ) -> tuple[E, float]:
        async with asyncio.timeout(timeout):
            while len(self.named(kind)) < count:
                if self.reader.done():
                    raise LabCaseError(await self._exit_reason(kind.name))
                self.changed.clear()
                await self.changed.wait()
        return self.named(kind)[count - 1]

    async def _exit_reason(self, awaited: str) -> str:
        """Why it ended before ``awaited``: its status and the last line of its stderr."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.error_reader), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 1.0)
        last = f": {self.errors[-1]}" if self.errors else ""
        return f"exited before {awaited!r} (status {self.process.returncode}){last}"

    async def stop(self) -> None:
        if self.process.returncode is None:
            # The whole group: a client started through a launcher (a pod's) lives on in
            # its children, which hold its output open.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        await self.reader
        await self.error_reader


class _SidecarProcess:
    """The sidecar among a case's processes: stopped with the others."""

    def __init__(self, proxy: sidecar.Sidecar) -> None:
        self.proxy = proxy

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.proxy.stop)


_Started = _Process | Program | ProgramClient | _SidecarProcess


class LabCaseError(RuntimeError):
    """A case could not be run (a process did not start, no echo came back)."""


@dataclass
class _Run:
    """What the cases of one run share."""

    prefix: str
    python: Sequence[str]
    budget: KernelBudget
    finite_pending: int
    timing: FaultTiming = field(default_factory=FaultTiming)
    server_command: str | None = None  # a program in the server pod instead of tcpecho's
    pods: PodMaker | None = None  # an engine's pods for each case, instead of processes
    # How long --client-cmd and --server-cmd programs may take to start
    program_startup: StartupTimeouts = field(default_factory=StartupTimeouts)
    finite_done: asyncio.Event = field(default_factory=asyncio.Event)
    setup_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(SETUP_SLOTS_PER_CPU * (os.cpu_count() or 1))
    )

    def finite_case_finished(self) -> None:
        self.finite_pending -= 1
        if self.finite_pending <= 0:
            self.finite_done.set()


class LabCase:
    def __init__(self, case: Case, run: _Run) -> None:
        self.case = case
        self.run = run
        self.result = Result(case)
        self.topology = net.Topology(f"{run.prefix}{case.number}")
        self.status = "building"
        self.fault_monotonic: float | None = None
        # What the progress line reads: tcpecho's client and its last echo (wall time), or
        # the program and what the model expects of it busy and idle.
        self._client: _Process | None = None
        self._last_echo_at: float | None = None
        self._program: ProgramClient | None = None
        self._predictions: dict[Activity, Prediction] | None = None
        self.cleaning_up = False  # the case has its outcome (a measurement or an error)
        self._follow_ups: list[asyncio.Task[None]] = []  # what the fault does later
        self._pods: CasePods | None = None  # the engine's, once made
        self._holding_slot = False
        profile = case.profile
        with_defaults = self._with_defaults = self._expect(KernelSettings())
        # The baseline: only the kernel's retransmission budget ends it (--quick shortens it).
        # A program's options are known only once it runs, after its namespace's sysctls are
        # written: it gets the shortened budget too, and its mark waits for its prediction.
        self.baseline = with_defaults.mechanism in _BUDGETS or bool(profile.command)
        # Cases the model says never end are watched until the finite ones are done; a
        # program's case decides its own patience, and nobody waits for it.
        self.finite = not with_defaults.never and not profile.command
        self._counted_finite = self.finite

    def progress(self) -> str:
        """The case's line in the progress report: what it is doing; while it waits, how
        long, on the clock of the range it expects (from the unanswered request, the last
        data or the fault)."""
        line = f"{self.case.name:42} {self.status}"
        expected = self._expected()
        if self.status != "waiting" or self.fault_monotonic is None:
            if expected is None and self._predictions is not None:
                return f"{line} ({expectations(self._predictions)})"
            return line
        since_fault = time.monotonic() - self.fault_monotonic
        if expected is None:  # a program's first look since the fault is still to come
            assert self._predictions is not None
            since = f"{since_fault:6.1f} s after the fault"
            return f"{self.case.name:42} waiting {since} ({expectations(self._predictions)})"
        return f"{self.case.name:42} " + waiting_line(
            expected, since_fault, self._since(expected.clock), self._watched(expected)
        )

    def interrupt(self) -> None:
        """Mark the case as ended by a stop signal before its outcome (its task is about to
        be cancelled): it keeps what it had, and how long it was watched after the fault."""
        self.result.interrupted = True
        if self.fault_monotonic is not None and self.result.observed_s is None:
            self.result.observed_s = time.monotonic() - self.fault_monotonic

    def _expected(self) -> Prediction | None:
        """The prediction the case is held to, once known: a program's only once the lab
        has seen whether it was busy or idle at the fault."""
        if self._program is not None and self._program.activity is None:
            return None
        return self.result.prediction

    def _since(self, clock: Clock) -> float | None:
        """Seconds since ``clock`` started, where that is known yet."""
        now = time.monotonic()
        if clock == "fault":
            return None if self.fault_monotonic is None else now - self.fault_monotonic
        if self._program is not None:
            start = self._program.clock_starts.get(clock)
            return None if start is None else now - start
        if clock == "last-data":
            return None if self._last_echo_at is None else time.time() - self._last_echo_at
        sent_at = None if self._client is None else _unanswered_since(self._client)
        return None if sent_at is None else time.time() - sent_at

    def _watched(self, prediction: Prediction) -> str | None:
        """How long the case is watched, when that is to be said: for one the model says
        never ends, and for a program watched less long than its range (``watch_s``)."""
        if self._program is None:
            if not prediction.never:
                return None
            return f"until the other cases end, at least {format_seconds(NEVER_OBSERVED_S)}"
        watched = patience(prediction, NEVER_OBSERVED_S, self.case.profile.watch_s)
        if not prediction.never and watched >= prediction.high_s:
            return None
        return f"up to {format_seconds(watched)}"

    def _expect(
        self,
        kernel: KernelSettings,
        activity: Activity | None = None,
        tcp: TcpOptions | None = None,
        first_rto_s: float | None = None,
        lone_segment: bool = True,
        fault_lag_s: float = 0.0,
    ) -> Prediction:
        """The model's expectation for this case (``activity``: a program's, as seen;
        ``fault_lag_s``: how long after the last echo the fault came)."""
        case, timing = self.case, self.run.timing
        activity = activity or case.activity
        # An idle tcpecho client's next request (a program's schedule is its own).
        idle = activity is Activity.IDLE and case.profile.command is None
        next_request = timing.idle_interval_s(case.fault) if idle else None
        traffic = Traffic(
            next_request_s=next_request,
            request_offset_s=_seconds(ACTIVE_INTERVAL),
            first_rto_s=first_rto_s,
            lone_segment=lone_segment,
            fault_lag_s=fault_lag_s,
        )
        return expect(case.fault, timing, kernel, case.profile, activity, tcp, traffic)

    @property
    def expected_length_s(self) -> float:
        """About how long the case runs after its fault: the longest go first, so that the
        run's length is the longest case's, not the last to start's."""
        prediction = self._with_defaults
        interval = self.run.timing.idle_interval_s(self.case.fault)
        lead = interval if interval is not None and self.case.activity is Activity.IDLE else 0.0
        return lead + (NEVER_OBSERVED_S if prediction.never else prediction.high_s)

    async def execute(self) -> Result:
        """The case, once one of the run's setup slots is free: a whole matrix starting at
        once would starve the cases already warm, and their faults would come late."""
        self.status = "waiting to start"
        try:
            await self.run.setup_slots.acquire()
        except asyncio.CancelledError:
            self._finish_finite()
            raise
        self._holding_slot = True
        try:
            return await self._execute()
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        if self._holding_slot:
            self._holding_slot = False
            self.run.setup_slots.release()

    async def _execute(self) -> Result:
        loop = asyncio.get_running_loop()
        started: list[_Started] = []
        # A stop signal may come while a thread builds the namespaces: they are removed only
        # once it is done, or it would create them after their removal.
        building = loop.run_in_executor(None, self._build)
        try:
            await asyncio.shield(building)
            self._plan_kernel()
            sysctls = self.result.sysctls
            await loop.run_in_executor(None, self._write_sysctls, sysctls)
            kernel = await loop.run_in_executor(None, self._kernel_settings)
            self.status = "preparing the fault"
            await loop.run_in_executor(
                None, prepare, self.case.fault, self.topology, self.run.timing
            )
            self.status = "starting"
            server_pid = await self._start_server(started)
            if self.case.fault is Fault.SIDECAR:
                await self._start_sidecar(started)
            if self.case.profile.command is not None:
                await self._run_program(kernel, server_pid, started)
            elif self.case.activity is Activity.CONNECTING:
                await self._run_connecting_client(kernel, server_pid, started)
            else:
                await self._run_tcpecho_client(kernel, server_pid, started)
            if self.case.fault in (Fault.FORCE_DELETE, Fault.STALE_CONNTRACK):
                self.status = "reading the node's conntrack"
                self.result.conntrack = await loop.run_in_executor(None, self.topology.conntrack)
        except (LabCaseError, ProgramError) as error:
            self.result.error = f"{self.status}: {error}"
        except TimeoutError:
            self.result.error = f"{self.status}: timed out"
        except Exception as error:  # netlink, nft, sysctl: one case's failure, not the run's
            self.result.error = f"{self.status}: {type(error).__name__}: {error}"
        finally:
            self._mark_quick()
            self.cleaning_up = True
            self.status = "cleaning up"
            for task in self._follow_ups:
                task.cancel()
            for process in reversed(started):
                await process.stop()
            await asyncio.wait({building})
            if self._pods is not None:  # before the namespaces: the engine ends its own
                await loop.run_in_executor(None, self._pods.remove)
            await loop.run_in_executor(None, self.topology.destroy)
            self._finish_finite()
        return self.result

    def _build(self) -> None:
        """The case's namespaces; with an engine's pods, the pods first, in its node."""
        maker = self.run.pods
        if maker is None:
            self.topology.build()
            return

        def adopt(node_ns: str) -> dict[str, int]:
            self._pods = pods = maker(self.case, node_ns)
            return {
                self.topology.client_ns: pods.client_netns_pid,
                self.topology.server_ns: pods.server_netns_pid,
            }

        self.topology.build(adopt)

    async def _start_server(self, started: list[_Started]) -> int:
        """tcpecho's server, or the program asked for, or the engine's server container;
        its pid (and process group)."""
        command = self.case.profile.server_command or self.run.server_command
        if self._pods is not None:
            pid = await asyncio.get_running_loop().run_in_executor(None, self._pods.start_server)
            server = await _Process.start(self._pods.server_log(), self.result.server_events)
            started.append(server)
            await server.wait_for(events.ServerStarted, timeout=STARTUP_TIMEOUT_S)
            return pid
        if command is None:
            server = await _Process.start(self._server_argv(), self.result.server_events)
            started.append(server)
            await server.wait_for(events.ServerStarted, timeout=STARTUP_TIMEOUT_S)
            return server.process.pid
        program = await Program.start(
            self.topology, self.topology.server_ns, command, net.SERVER_IP, net.SERVICE_PORT
        )
        started.append(program)
        startup = self.run.program_startup
        await wait_until_listening(program, self.topology, net.SERVICE_PORT, startup)
        return program.process.pid

    async def _run_tcpecho_client(
        self,
        kernel: KernelSettings,
        server_pid: int,
        started: list[_Started],
    ) -> None:
        if self._pods is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._pods.start_client)
        client = await _Process.start(self._client_argv(), self.result.client_events)
        started.append(client)
        self._client = client
        self.status = "warming up"
        warmup = WARMUP_ECHOES[self.case.activity]
        last_echo, last_echo_at = await client.wait_for(
            events.ResponseReceived, count=warmup, timeout=STARTUP_TIMEOUT_S
        )
        self._last_echo_at = last_echo_at
        self._predict(kernel, last_echo)
        await self._inject(server_pid)
        self._predict(kernel, last_echo)  # again, with the fault's lag after the last echo
        self._check_idle_gap(kernel, last_echo_at)
        await self._check_fault_took(server_pid)
        await self._observe(client)

    async def _run_connecting_client(
        self,
        kernel: KernelSettings,
        server_pid: int,
        started: list[_Started],
    ) -> None:
        """stale-conntrack: the client's SYN leaves while the Service has no DNAT rule; once
        the node holds its untranslated entry, the rule appears. The connect is measured,
        and then whether the client's next socket gets through."""
        if self._pods is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._pods.start_client)
        client = await _Process.start(self._client_argv(), self.result.client_events)
        started.append(client)
        self._client = client
        self.status = "waiting for the stale entry"
        await self._wait_for_stale_entry()
        self.result.prediction = self._expect(kernel)
        await self._inject(server_pid)
        self.status = "waiting"
        await self._observe(client)
        if not client.named(events.ConnectionFailed):
            return
        self.status = "waiting for the next connection's echo"
        assert self.result.fault_at is not None
        with contextlib.suppress(TimeoutError, LabCaseError):
            await asyncio.wait_for(_echo_after(client, self.result.fault_at), RECONNECT_WAIT_S)
        echoed = _echoes_after(client, self.result.fault_at)
        if echoed:
            self.result.recovered_s = round(echoed[0] - self.result.fault_at, 6)

    async def _wait_for_stale_entry(self) -> None:
        """Until the node's conntrack holds the client's SYN without translation: the fault
        takes only then (an error of the case when it does not)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + STALE_ENTRY_WAIT_S
        while time.monotonic() < deadline:
            flows = await loop.run_in_executor(None, self.topology.flows)
            stale = [
                flow
                for flow in flows
                if flow.destination == net.CLUSTER_IP and flow.state == "SYN_SENT"
            ]
            if any(flow.translated for flow in stale):
                raise LabCaseError(f"the SYN was translated already: {stale[0]}")
            if stale:
                return
            await asyncio.sleep(0.02)
        raise LabCaseError(
            f"no untranslated SYN_SENT entry in the node's conntrack within "
            f"{format_seconds(STALE_ENTRY_WAIT_S)}"
        )

    async def _start_sidecar(self, started: list[_Started]) -> None:
        """The proxy in the client's pod, listening on loopback, forwarding to the Service."""
        timeouts = sidecar.TimeoutSettings(
            client_s=self.run.timing.proxy_timeout_s, server_s=self.run.timing.proxy_timeout_s
        )
        proxy = sidecar.Sidecar(self.topology.client_ns, timeouts)
        started.append(_SidecarProcess(proxy))
        await asyncio.get_running_loop().run_in_executor(None, proxy.__enter__)

    async def _run_program(
        self,
        kernel: KernelSettings,
        server_pid: int,
        started: list[_Started],
    ) -> None:
        """A client program: watched through the kernel, not through its output."""
        command = self.case.profile.command
        assert command is not None
        client = ProgramClient(self.topology, command, self.result, self._service())
        started.append(client)
        self._program = client
        await client.start()
        profile = self.case.profile
        if self.case.activity is Activity.CONNECTING:
            await self._run_connecting_program(client, kernel, server_pid)
            return
        self.status = "warming up"
        await client.wait_until_talking(self.run.program_startup, profile.quiet_s)
        await client.read_options()
        # Busy or idle: which of the two holds is seen only after the fault (observe sets
        # the result's prediction then); until then the progress line shows both.

        def expect_of_program(
            activity: Activity, tcp: TcpOptions, first_rto_s: float | None
        ) -> Prediction:
            return self._expect(kernel, activity, tcp, first_rto_s, lone_segment=False)

        window_s = self.run.timing.window_s(self.case.fault)
        predictions = client.predictions(expect_of_program, window_s)
        self._predictions = predictions
        await self._inject(server_pid)
        await self._check_fault_took(server_pid)
        assert self.fault_monotonic is not None
        self.status = "waiting"
        await client.observe(
            self.fault_monotonic,
            predictions,
            NEVER_OBSERVED_S,
            profile.watch_s,
            window_s,
        )
        self.result.observed_s = time.monotonic() - self.fault_monotonic
        self.status = "seeing whether the program exits"
        await client.note_exit(self.fault_monotonic)

    async def _run_connecting_program(
        self, client: ProgramClient, kernel: KernelSettings, server_pid: int
    ) -> None:
        """stale-conntrack with a program: its SYN, then the rule; the connect measured from
        the first look that saw it, then whether a fresh socket of its own gets through."""
        self.status = "waiting for its SYN"
        await client.wait_until_connecting(self.run.program_startup)
        await self._wait_for_stale_entry()
        await client.read_options()
        prediction = self._expect(kernel, Activity.CONNECTING, client.tcp)
        # The lab sees the end only at its next look at the program's socket, and its clock
        # may have started before the SYN (the look before it, or the program's start).
        late = SEEN_LATE_S + client.connect_uncertainty_s
        prediction = replace(prediction, high_s=prediction.high_s + late)
        self._predictions = {Activity.CONNECTING: prediction}
        await self._inject(server_pid)
        assert self.fault_monotonic is not None
        self.status = "waiting"
        await client.observe_connect(
            self.fault_monotonic, prediction, prediction.high_s * 1.25 + RECONNECT_WAIT_S
        )
        self.result.observed_s = time.monotonic() - self.fault_monotonic
        self.status = "seeing whether the program exits"
        await client.note_exit(self.fault_monotonic)

    # -- steps ---------------------------------------------------------------------------

    def _plan_kernel(self) -> None:
        """Which sysctls this case's client namespace gets: --quick only for the baseline."""
        connecting = self.case.activity is Activity.CONNECTING
        self.result.sysctls = self.run.budget.sysctls(self.baseline, connecting)

    def _mark_quick(self) -> None:
        """``*``: the case was left to the retransmission budget, and --quick shortened it.
        A program's namespace has the shortened budget whatever it turns out to do, and its
        prediction counts it; only the budget's own cases are marked."""
        prediction = self.result.prediction
        self.result.quick = (
            self.run.budget.shortens
            and self.baseline
            and prediction is not None
            and prediction.mechanism in _BUDGETS
        )

    def _write_sysctls(self, sysctls: dict[str, int]) -> None:
        for key, value in sysctls.items():
            self.topology.sysctl(self.topology.client_ns, key, value)

    def _kernel_settings(self) -> KernelSettings:
        def read(key: str) -> int | None:
            try:
                return self.topology.read_sysctl(self.topology.client_ns, key)
            except net.LabError:
                return None  # this kernel lacks it

        return KernelSettings.read(read)

    def _server_argv(self) -> list[str]:
        args = [*self.run.python, "server", "--log-format", "json"]
        if self.case.fault.server_catches_sigterm:
            args.append("--catch-sigterm")
        return self.topology.command(self.topology.server_ns, args)

    def _client_argv(self) -> list[str]:
        if self._pods is not None:
            return list(self._pods.client_log())
        launch = self.case.profile.client_argv
        if launch is not None:
            return self.topology.command(self.topology.client_ns, launch)
        host, port = self._service()
        args = [
            *self.run.python,
            "client",
            "--server",
            host,
            "--port",
            str(port),
            "--interval",
            self._interval(),
            # After a failed connect, one more: a fresh socket shows whether a new source
            # port escapes the stale entry.
            *("--retries", "1" if self.case.activity is Activity.CONNECTING else "0"),
            *("--retry-backoff", "100ms"),
            "--log-format",
            "json",
            *self.case.profile.client_flags(),
        ]
        return self.topology.command(self.topology.client_ns, args)

    def _interval(self) -> str:
        """Busy: a request a second. Idle: one an hour, or, where the fault has a window (the
        idle timeout, the outage), the next request just after it: the one that shows
        whether the connection survived."""
        if self.case.activity is Activity.ACTIVE:
            return ACTIVE_INTERVAL
        window_interval = self.run.timing.idle_interval_s(self.case.fault)
        return IDLE_INTERVAL if window_interval is None else f"{window_interval:g}s"

    def _service(self) -> tuple[str, int]:
        """Where the client connects: the Service, or the sidecar in its own pod."""
        if self.case.fault is Fault.SIDECAR:
            return sidecar.SIDECAR_HOST, sidecar.SIDECAR_PORT
        return net.CLUSTER_IP, net.SERVICE_PORT

    def _predict(self, kernel: KernelSettings, last_echo: events.ResponseReceived) -> None:
        rto_ms = last_echo.rto_ms
        first_rto_s = None if rto_ms is None else rto_ms / 1000
        lone = self.case.profile.request_size is None
        fault_at, last_echo_at = self.result.fault_at, self._last_echo_at
        lag = 0.0 if fault_at is None or last_echo_at is None else fault_at - last_echo_at
        self.result.prediction = self._expect(
            kernel, first_rto_s=first_rto_s, lone_segment=lone, fault_lag_s=max(0.0, lag)
        )

    async def _inject(self, server_pid: int) -> None:
        self._release_slot()  # set up: the next case may start
        self.status = "injecting the fault"
        loop = asyncio.get_running_loop()
        self.fault_monotonic = time.monotonic()
        delete_pod = None if self._pods is None else self._pods.force_delete_server
        self.result.fault_at = await loop.run_in_executor(
            None, inject, self.case.fault, self.topology, server_pid, delete_pod
        )
        later = follow_up(self.case.fault, self.topology, self.run.timing)
        if later is not None:
            delay, action = later
            self._follow_ups.append(asyncio.create_task(self._after(delay, action)))

    async def _after(self, delay_s: float, action: Callable[[], None]) -> None:
        """``action`` ``delay_s`` after the fault (the heal, the new pod); a failure of it is
        the case's error, never a quiet survival."""
        assert self.fault_monotonic is not None
        await asyncio.sleep(max(0.0, self.fault_monotonic + delay_s - time.monotonic()))
        try:
            await asyncio.get_running_loop().run_in_executor(None, action)
        except Exception as error:
            self.result.error = f"after the fault: {type(error).__name__}: {error}"

    async def _check_fault_took(self, server_pid: int) -> None:
        """A fault whose mechanism did not take is the case's error, never a quiet survival
        or hang: a stalled reader must be stopped; the node forgets an idle flow only if its
        conntrack entry counts the path's idle timeout."""
        if self.case.fault is Fault.STALLED_READER and not await _stopped(server_pid):
            raise LabCaseError(f"the server (pid {server_pid}) was not stopped")
        if self.case.fault not in (Fault.IDLE_EXPIRY, Fault.IDLE_EXPIRY_RESET):
            return
        loop = asyncio.get_running_loop()
        flows = await loop.run_in_executor(None, self.topology.flows)
        limit = self.run.timing.path_idle_timeout_s + 1
        ours = [f for f in flows if f.destination_port == net.SERVICE_PORT and f.translated]
        if not ours or any(flow.timeout_s > limit for flow in ours):
            raise LabCaseError(
                f"the node's conntrack does not forget the flow after "
                f"{format_seconds(self.run.timing.path_idle_timeout_s)}: "
                + ("; ".join(map(str, ours)) or "no entry for it")
            )

    def _check_idle_gap(self, kernel: KernelSettings, last_echo_at: float) -> None:
        """An idle case needs the fault before the first keepalive probe: a probe answered
        before the fault would restart the kernel's idle clock, and the prediction with it.
        ``kernel``: the client namespace's sysctls, whose keepalive time holds where the
        profile sets none."""
        assert self.result.fault_at is not None
        keepalive = InForce.of(self.case.profile.tcp, kernel).keepalive
        if self.case.activity is not Activity.IDLE or keepalive is None:
            return
        idle = keepalive.idle_s
        gap = self.result.fault_at - last_echo_at
        if gap >= idle:
            raise LabCaseError(
                f"the fault came {gap:.2f} s after the last echo, after the first keepalive "
                f"probe ({idle} s): the machine is too busy for this case"
            )

    async def _observe(self, client: _Process) -> None:
        prediction = self.result.prediction
        assert prediction is not None
        assert self.fault_monotonic is not None
        assert self.result.fault_at is not None
        self.status = "waiting"
        failure = asyncio.create_task(client.wait_for(events.ConnectionFailed))
        window_end = self._window_end()
        outcomes: set[asyncio.Future[Any]] = {failure}
        if window_end is not None:
            outcomes.add(asyncio.create_task(_echo_after(client, window_end)))
        try:
            if prediction.never:
                await self._watch_never(outcomes)
            else:
                # Allow the active client's next request (up to one interval after the
                # fault), an idle client's next request (where the fault has a window), and
                # timers later than the model's latest.
                deadline = self._clock_starts_within() + prediction.high_s * 1.25 + 5.0
                await asyncio.wait(outcomes, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.result.observed_s = time.monotonic() - self.fault_monotonic
            for outcome in outcomes:
                outcome.cancel()
            # LabCaseError: the client exited without reporting a failure (not detected).
            await asyncio.gather(*outcomes, return_exceptions=True)
        failed = client.named(events.ConnectionFailed)
        if failed:
            event, logged_at = failed[0]
            self.result.record(event, since_fault_s=logged_at - self.result.fault_at)
        elif window_end is not None:
            echoed = _echoes_after(client, window_end)
            starts = {"fault": self.result.fault_at, "last-data": self._last_echo_at}
            start = starts.get(prediction.clock) or self.result.fault_at
            if echoed:
                self.result.recovered_s = round(echoed[0] - start, 6)
                self.result.measured_clock = prediction.clock if start is not None else "fault"

    def _window_end(self) -> float | None:
        """When the fault's window ends (wall time): the partition's heal, from the fault;
        the idle timeout, from the last echo (the flow is forgotten that long after its
        last packet)."""
        window = self.run.timing.window_s(self.case.fault)
        if window is None or self.result.fault_at is None:
            return None
        anchor = self.result.fault_at
        if self.case.fault is not Fault.PARTITION and self._last_echo_at is not None:
            anchor = self._last_echo_at
        return anchor + window

    def _clock_starts_within(self) -> float:
        """How long after the fault the prediction's clock starts at the latest: an idle
        client's next request (or its last data), where the fault has a window."""
        prediction = self.result.prediction
        interval = self.run.timing.idle_interval_s(self.case.fault)
        if self.case.activity is not Activity.IDLE or interval is None or prediction is None:
            return 0.0
        return interval if prediction.clock == "request" else 0.0

    async def _watch_never(self, outcomes: set[asyncio.Future[Any]]) -> None:
        """Watch until every finite case of the run is done, and at least a while."""
        assert self.fault_monotonic is not None
        self._finish_finite()

        async def long_enough() -> None:
            await asyncio.sleep(NEVER_OBSERVED_S)
            await self.run.finite_done.wait()

        watched = asyncio.create_task(long_enough())
        try:
            await asyncio.wait({*outcomes, watched}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watched.cancel()

    def _finish_finite(self) -> None:
        if self._counted_finite:
            self._counted_finite = False
            self.run.finite_case_finished()


CLOCK_STARTS: dict[Clock, str] = {
    "request": "the unanswered request",
    "last-data": "the last data",
    "fault": "the fault",
}


def waiting_line(
    expected: Prediction,
    since_fault_s: float,
    since_clock_s: float | None,
    watched: str | None = None,
) -> str:
    """A waiting case's progress: the time on the clock its expected range is counted on
    (``since_clock_s``, None while that clock has not started: the request after the fault
    is not sent yet), or since the fault when the model says never; and how long it is
    ``watched``, where that is to be said."""
    if expected.never:
        if expected.clock == "last-data":
            reason = "nothing notices an idle connection without keepalive"
        else:
            reason = expected.mechanism.description
        return (
            f"waiting {since_fault_s:6.1f} s after the fault "
            f"(expected never: {reason}; watched {watched})"
        )
    limit = f"; watched {watched}" if watched else ""
    if since_clock_s is None:
        return (
            f"waiting {since_fault_s:6.1f} s after the fault, for the next request "
            f"(expected {expected.describe()} from it{limit})"
        )
    start = CLOCK_STARTS[expected.clock]
    return f"waiting {since_clock_s:6.1f} s since {start} (expected {expected.describe()}{limit})"


def expectations(predictions: dict[Activity, Prediction]) -> str:
    """A program's two expectations, before the lab has seen it busy or idle."""
    busy, idle = predictions[Activity.ACTIVE], predictions[Activity.IDLE]
    return f"expected: busy {busy.describe()}, idle {idle.describe()}"


def _echoes_after(client: _Process, wall: float) -> list[float]:
    """When tcpecho's client logged each echo after ``wall`` (wall time)."""
    return [at for _, at in client.named(events.ResponseReceived) if at >= wall]


async def _echo_after(client: _Process, wall: float) -> None:
    """Until tcpecho's client logs an echo after ``wall``: the connection survived."""
    while not _echoes_after(client, wall):
        if client.reader.done():
            raise LabCaseError("the client exited")
        client.changed.clear()
        await client.changed.wait()


async def _stopped(pid: int, within_s: float = 2.0) -> bool:
    """Whether ``pid`` is stopped, within ``within_s``: SIGSTOP takes effect when the
    process is next scheduled, not when kill() returns."""
    deadline = time.monotonic() + within_s
    while _process_state(pid) not in "tT":
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _process_state(pid: int) -> str:
    """A process's state letter (``T``: stopped), or ``?`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _seconds(duration: str) -> float:
    from tcpecho.durations import parse_duration

    return parse_duration(duration)


_BUDGETS = (Mechanism.TCP_RETRIES2, Mechanism.SYN_RETRIES)  # the kernel's own budgets: hangs


def _unanswered_since(client: _Process) -> float | None:
    """When tcpecho's client sent the oldest request still unanswered (wall time)."""
    answered = {event.seq for event, _ in client.named(events.ResponseReceived)}
    for event, logged_at in client.named(events.RequestSent):
        if event.seq not in answered:
            return logged_at
    return None


# -- the whole run -----------------------------------------------------------------------------


async def run_cases(
    cases: Sequence[Case],
    budget: KernelBudget,
    progress: Callable[[list[str]], None],
    progress_every_s: float,
    server_command: str | None = None,
    program_startup: StartupTimeouts | None = None,
    stop: asyncio.Event | None = None,
    pods: PodMaker | None = None,
    timing: FaultTiming | None = None,
) -> list[Result]:
    """Run every case in parallel; cancelling this cleans every case up before it returns.

    Once ``stop`` is set (by a stop signal), the cases still waiting for their outcome are
    cancelled and marked interrupted, every case is cleaned up, and the results are
    returned: the finished cases' with their measurements."""
    prefix = f"{RUN_PREFIX}{os.getpid()}-"
    # Every case blocks a thread at times (netlink, sysctls, nft); a fault must not wait
    # in a queue behind other cases' work, or its timing would be off.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=2 * len(cases) + 4)
    )
    run = _Run(
        prefix,
        [sys.executable, "-m", "tcpecho"],
        budget,
        finite_pending=0,
        server_command=server_command,
        pods=pods,
        program_startup=program_startup or StartupTimeouts(),
        timing=timing or FaultTiming(),
    )
    lab_cases = [LabCase(case, run) for case in cases]
    run.finite_pending = sum(lab_case.finite for lab_case in lab_cases)
    if run.finite_pending == 0:
        run.finite_done.set()
    tasks = _start_longest_first(lab_cases)
    reporter = asyncio.create_task(_report_progress(lab_cases, tasks, progress, progress_every_s))
    stopping = asyncio.create_task((stop or asyncio.Event()).wait())
    try:
        everything = asyncio.gather(*tasks, return_exceptions=True)
        first: list[asyncio.Future[Any]] = [everything, stopping]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            for lab_case, task in zip(lab_cases, tasks, strict=True):
                if not task.done() and not lab_case.cleaning_up:
                    lab_case.interrupt()
                    task.cancel()
            await everything  # every case's cleanup
        return [lab_case.result for lab_case in lab_cases]
    finally:
        stopping.cancel()
        reporter.cancel()
        for task in tasks:
            task.cancel()
        # Let every case run its cleanup, even when this run is being cancelled.
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(
            None, net.remove_namespaces, net.leftover_namespaces(prefix)
        )


def _start_longest_first(lab_cases: Sequence[LabCase]) -> list[asyncio.Task[Result]]:
    """A task per case, in the cases' order, created longest first: the setup slots go to
    them first."""
    by_length = sorted(lab_cases, key=lambda lab_case: -lab_case.expected_length_s)
    created = {
        id(lab_case): asyncio.create_task(lab_case.execute(), name=lab_case.case.name)
        for lab_case in by_length
    }
    return [created[id(lab_case)] for lab_case in lab_cases]


async def _report_progress(
    cases: Sequence[LabCase],
    tasks: Sequence[asyncio.Task[Result]],
    progress: Callable[[list[str]], None],
    every_s: float,
) -> None:
    while True:
        await asyncio.sleep(every_s)
        running = [
            case.progress() for case, task in zip(cases, tasks, strict=True) if not task.done()
        ]
        if running:
            progress(running)
