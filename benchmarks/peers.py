"""The servers under test and the load clients: how each is built, started, measured, stopped.

Every process is started in a session of its own (its own process group) and pinned with
``taskset`` when the machine has a core for it; ``stop`` ends the whole group, children
included (socat forks one per connection), so nothing outlives a run, whether it passed,
failed or was interrupted. CPU time and RSS come from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# User and system CPU seconds, by pid.
CpuTimes = dict[int, tuple[float, float]]


@dataclass(frozen=True)
class Peer:
    """An echo server under test."""

    name: str  # key in the results
    label: str  # for tables and the chart
    argv: Callable[[int], list[str]]
    # Why it is left out of the 10,000 idle connections, when it is.
    skips_idle: str | None = None
    forks_children: bool = False  # its CPU time is spread over child processes


@dataclass(frozen=True)
class Tools:
    tcpecho: str
    echoload: str
    epollecho: str  # the C floor: the least an echo server can do per request
    go_echo: str | None
    socat: str | None


def build_tools(build_dir: Path, log: Callable[[str], None]) -> tuple[Tools, list[str]]:
    """Compile the C load client and the C floor and (when Go is installed) the Go server;
    notes on gaps. The load client's bulk-threads mode needs ``-pthread``."""
    build_dir = build_dir.resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("bench: a C compiler is needed for the load client (apt-get install gcc)")
    built = {}
    for program in ("echoload", "epollecho"):
        built[program] = build_dir / program
        source = ROOT / "benchmarks" / f"{program}.c"
        argv = [compiler, "-O2", "-Wall", "-pthread", "-o", str(built[program]), str(source)]
        subprocess.run(argv, check=True)
    go_echo: str | None = None
    go = shutil.which("go")
    if go is None:
        notes.append("go is not installed (apt-get install golang-go): the Go peer was skipped")
    else:
        target = build_dir / "go-echo"
        env = {
            **os.environ,
            "GOCACHE": str(build_dir / "gocache"),
            "GOPATH": str(build_dir / "gopath"),
            "GOFLAGS": "-mod=mod",
            "GOPROXY": "off",
            "CGO_ENABLED": "0",
        }
        subprocess.run(
            [go, "build", "-o", str(target), "."],
            cwd=ROOT / "benchmarks" / "go",
            env=env,
            check=True,
        )
        version = subprocess.run([go, "version"], capture_output=True, text=True, check=True)
        log(f"built the Go peer with {version.stdout.strip()}")
        go_echo = str(target)
    socat = shutil.which("socat")
    if socat is None:
        notes.append("socat is not installed: the socat peer was skipped")
    tcpecho = shutil.which("tcpecho")
    if tcpecho is None:
        raise SystemExit("bench: the tcpecho console script is not on PATH")
    tools = Tools(
        tcpecho=tcpecho,
        echoload=str(built["echoload"]),
        epollecho=str(built["epollecho"]),
        go_echo=go_echo,
        socat=socat,
    )
    return tools, notes


def peers(tools: Tools) -> list[Peer]:
    """Every server under test that can run here, tcpecho on uvloop first."""

    def tcpecho(loop: str) -> Callable[[int], list[str]]:
        return lambda port: [
            tools.tcpecho, "server", "--host", "127.0.0.1", "--port", str(port),
            "--loop", loop, "--log-format", "json",
        ]  # fmt: skip

    found = [
        Peer("tcpecho-uvloop", "tcpecho (uvloop)", tcpecho("uvloop")),
        Peer("tcpecho-asyncio", "tcpecho (asyncio)", tcpecho("asyncio")),
        Peer(
            "asyncio-streams",
            "asyncio streams",
            lambda port: [sys.executable, "-m", "benchmarks.streams_echo", str(port)],
        ),
        Peer(
            "uvloop-plain",
            "plain uvloop Protocol",
            lambda port: [sys.executable, "-m", "benchmarks.uvloop_echo", str(port)],
        ),
    ]
    if tools.socat is not None:
        socat = tools.socat
        found.append(
            Peer(
                "socat",
                "socat PIPE",
                lambda port: [
                    socat,
                    f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024",
                    "PIPE",
                ],
                skips_idle="one process per connection",
                forks_children=True,
            )
        )
    if tools.go_echo is not None:
        go_echo = tools.go_echo
        found.append(Peer("go", "Go io.Copy", lambda port: [go_echo, "-addr", f"127.0.0.1:{port}"]))
    epollecho = tools.epollecho
    found.append(
        Peer("c-epoll", "C epoll (floor)", lambda port: [epollecho, "127.0.0.1", str(port)])
    )
    # The bulk floor: the same C server, splicing as tcpecho's bulk path does.
    found.append(
        Peer(
            "c-splice",
            "C splice (bulk floor)",
            lambda port: [epollecho, "127.0.0.1", str(port), "splice"],
            skips_idle="a pipe per connection (three descriptors)",
        )
    )
    return found


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """A running server under test, in a process group of its own."""

    def __init__(self, peer: Peer, cpu: int | None, log_file: IO[bytes], *extra: str) -> None:
        self.peer = peer
        self.port = free_port()
        self.proc = subprocess.Popen(
            pinned(cpu, [*peer.argv(self.port), *extra]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        self._wait_listening()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited with {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.peer.name} did not listen on {self.port} in {timeout} s")

    def cpu_seconds(self) -> CpuTimes:
        """User and system CPU time of the server and (socat) each of its children, by pid."""
        pids = [self.pid]
        if self.peer.forks_children:
            pids += children_of(self.pid)
        return cpu_times(pids)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def open_files_limit(self) -> int:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise RuntimeError("no open-file limit")

    def stop(self) -> None:
        stop_group(self.proc)


def cpu_times(pids: list[int]) -> CpuTimes:
    """User and system CPU time of each process (all its threads), by pid; a process that
    has gone is left out."""
    times: CpuTimes = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            times[pid] = (int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)
    return times


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
    return found


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, SIGKILL what is left after 5 s."""
    for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            # socat's children may still be closing after the listener exited.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return


@contextlib.contextmanager
def servers(
    chosen: list[Peer], cpu: int | None, log_dir: Path, *extra: str
) -> Iterator[dict[str, Server]]:
    """Start every peer; stop them all on the way out, whatever happened."""
    log_dir.mkdir(parents=True, exist_ok=True)
    running: dict[str, Server] = {}
    logs: list[IO[bytes]] = []
    try:
        for peer in chosen:
            log_file: IO[bytes] = open(log_dir / f"{peer.name}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log_file)
            running[peer.name] = Server(peer, cpu, log_file, *extra)
        yield running
    finally:
        for server in running.values():
            server.stop()
        for log_file in logs:
            log_file.close()


@dataclass
class LoadResult:
    per_second: float  # requests/s (ping-pong), bytes/s (bulk), connections/s (connect)
    requests: int  # or bytes, or connections
    errors: int
    cpu_user_s: float = 0.0  # the server's, over the measured window
    cpu_system_s: float = 0.0
    # The load client's own CPU (user and system, every thread) over the same window, and
    # the window: a client core busy all of it means the client, not the server, set the pace.
    client_cpu_s: float = 0.0
    seconds: float = 0.0


def echoload(
    tools: Tools,
    cpu: int | None,
    port: int,
    mode: str,
    connections: int,
    size: int,
    warmup_s: float,
    duration_s: float,
    server: Server | None = None,
) -> LoadResult:
    """Run the C load client; read the server's CPU time when the window opens and closes."""
    argv = [tools.echoload, "127.0.0.1", str(port), mode, str(connections), str(size)]
    argv += [str(warmup_s), str(duration_s)]
    if server is not None:
        argv.append("hold")  # keep the connections (and socat's children) until we read
    proc = subprocess.Popen(
        pinned(cpu, argv),
        stdin=subprocess.PIPE if server is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        # The server's CPU times and the client's (taskset execs it) as the window opens, closes.
        readings: dict[str, tuple[CpuTimes, CpuTimes]] = {}
        result: dict[str, Any] = {}
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] in ("measure_start", "measure_end") and server is not None:
                readings[event["event"]] = (server.cpu_seconds(), cpu_times([proc.pid]))
                if event["event"] == "measure_end":
                    assert proc.stdin is not None
                    proc.stdin.close()  # let it close its connections and report
            elif event["event"] == "result":
                result = event
        proc.wait(timeout=warmup_s + duration_s + 30)
    finally:
        stop_group(proc)
        if proc.stdin is not None:
            proc.stdin.close()
    if not result:
        stderr = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"echoload gave no result (exit {proc.returncode}): {stderr}")
    done = int(result.get("requests", result.get("bytes", result.get("accepted", 0))))
    before, client_before = readings.get("measure_start", ({}, {}))
    after, client_after = readings.get("measure_end", ({}, {}))
    user, system = window_cpu(before, after)
    return LoadResult(
        per_second=float(result["per_second"]),
        requests=done,
        errors=int(result["errors"]),
        cpu_user_s=user,
        cpu_system_s=system,
        client_cpu_s=sum(window_cpu(client_before, client_after)),
        seconds=float(result["seconds"]),
    )


def window_cpu(before: CpuTimes, after: CpuTimes) -> tuple[float, float]:
    """User and system CPU time used between two readings, summed over the processes.

    Processes still there at the end count from their time at the start (or from zero when
    forked inside the window); socat children of earlier connections that exited during
    the window were idle, and their totals would otherwise come off as negative time.
    """
    user = sum(times[0] - before.get(pid, (0.0, 0.0))[0] for pid, times in after.items())
    system = sum(times[1] - before.get(pid, (0.0, 0.0))[1] for pid, times in after.items())
    return user, system


def tcpecho_bench(
    tools: Tools,
    cpu: int | None,
    port: int,
    connections: int,
    size: int,
    warmup_s: float,
    duration_s: float,
) -> LoadResult:
    """Run ``tcpecho bench`` (ping-pong) as users would, and read its JSON report."""
    argv = [
        tools.tcpecho, "bench", "--port", str(port), "--connections", str(connections),
        "--size", str(size), "--warmup", f"{warmup_s}s", "--duration", f"{duration_s}s",
        "--json", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(
        pinned(cpu, argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=warmup_s + duration_s + 30)
    finally:
        stop_group(proc)
    if not out.strip():
        raise RuntimeError(f"tcpecho bench gave no report (exit {proc.returncode}): {err}")
    report = json.loads(out)
    return LoadResult(
        per_second=float(report["requests_per_second"]),
        requests=int(report["requests"]),
        errors=int(report["errors"]["total"]),
    )
