"""A ``tcpecho bench`` run end to end: split the load, start the processes, show progress, report.

With ``--processes 1`` the load runs in this process. With more, the connections (and any
``--requests`` quota) are split between forked worker processes; each connects, reports
ready over a pipe and waits for a start time on the monotonic clock, which Linux shares
between processes, so every worker warms up and measures over the same window. Workers
publish progress into shared memory (no system call per update) and send their counts back
when done. Any worker that dies or does not answer in time is reported as an error, and is
killed: a run is bounded by its duration plus the timeouts, whatever the server does.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tcpecho import loops
from tcpecho.bench.load import (
    Control,
    LoadShare,
    Mode,
    Phase,
    ProcessResult,
    Progress,
    drive,
)
from tcpecho.bench.report import BenchReport, RunDescription
from tcpecho.process import die_with_parent, raise_open_file_limit
from tcpecho.settings import SettingError, check_duration, check_range
from tcpecho.sizes import format_size
from tcpecho.streams import STDERR, Output, write_stdout
from tcpecho.tcp.names import format_address
from tcpecho.tcp.options import TcpOptions

MAX_SIZE = 16 * 1024 * 1024
MAX_CONNECTIONS = 100_000
MAX_PROCESSES = 256
# Slack on top of the configured times before a silent worker is given up on.
_WORKER_GRACE_S = 10.0
_PROGRESS_FIELDS = 5


@dataclass(frozen=True)
class BenchConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    mode: Mode = "pingpong"
    connections: int = 10
    size: int = 1024
    duration_s: float = 10.0
    requests: int | None = None
    warmup_s: float = 1.0
    timeout_s: float = 5.0
    processes: int = 1
    json_output: bool = False
    progress: bool = True
    tcp: TcpOptions = field(default_factory=TcpOptions)
    loop: loops.LoopName = "auto"

    def __post_init__(self) -> None:
        check_range("port", self.port, 1, 65535)
        check_range("connections", self.connections, 1, MAX_CONNECTIONS)
        if self.size < 1:
            raise SettingError("size", f"{self.size} is below the minimum of 1 byte")
        if self.size > MAX_SIZE:
            maximum = format_size(MAX_SIZE)
            raise SettingError(
                "size", f"{format_size(self.size)} is above the maximum of {maximum}"
            )
        check_duration("duration", self.duration_s, minimum=0.001)
        check_duration("warmup", self.warmup_s)
        check_duration("timeout", self.timeout_s, minimum=0.001)
        check_range("requests", self.requests, 1)
        if self.requests is not None and self.mode != "pingpong":
            raise SettingError("requests", "counts ping-pong requests only: use --duration")
        check_range("processes", self.processes, 1, MAX_PROCESSES)
        if self.processes > self.connections:
            raise SettingError(
                "processes",
                f"{self.processes} processes need at least as many --connections "
                f"({self.connections})",
            )

    def shares(self) -> list[LoadShare]:
        """Each process's connections and request quota: as even as whole numbers allow."""
        return [
            LoadShare(
                host=self.host,
                port=self.port,
                mode=self.mode,
                connections=_split(self.connections, self.processes, index),
                size=self.size,
                warmup_s=self.warmup_s,
                duration_s=self.duration_s,
                requests=None
                if self.requests is None
                else _split(self.requests, self.processes, index),
                timeout_s=self.timeout_s,
                tcp=self.tcp,
            )
            for index in range(self.processes)
        ]

    def describe(self) -> RunDescription:
        return RunDescription(
            target=format_address((self.host, self.port)),
            mode=self.mode,
            connections=self.connections,
            size=self.size,
            processes=self.processes,
            warmup_s=self.warmup_s,
            duration_s=self.duration_s,
            requests=self.requests,
            timeout_s=self.timeout_s,
            loop=loops.resolve(self.loop),
        )


def _split(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` split in ``parts``: the first ones take the remainder."""
    return total // parts + (1 if index < total % parts else 0)


def run(config: BenchConfig) -> int:
    """Run the benchmark, print the report; the exit status (1 when anything failed)."""
    raise_open_file_limit()
    progress = ProgressLine(Output(STDERR), config) if config.progress else None
    failures: dict[str, int] = {}
    if config.processes == 1:
        results = [_run_here(config, progress)]
    else:
        results, failures = _run_workers(config, progress)
    if progress is not None:
        progress.finish()
    report = BenchReport.merge(config.describe(), results, failures)
    if config.json_output:
        import json

        write_stdout(json.dumps(report.as_json()))
    else:
        write_stdout(report.as_text())
    return 1 if report.error_count else 0


# -- progress ----------------------------------------------------------------------------


class ProgressLine:
    """One line on stderr, once a second: phase, count, rate, errors, open connections.

    On a terminal the line is rewritten in place; elsewhere (CI logs, files) each update is
    a line of its own.
    """

    def __init__(self, output: Output, config: BenchConfig) -> None:
        self.output = output
        self.config = config
        self._last_count = 0
        self._last_time = time.monotonic()
        self._started = self._last_time

    def show(self, snapshots: Sequence[Progress]) -> None:
        now = time.monotonic()
        phase = min(snapshot.phase for snapshot in snapshots)
        bulk = self.config.mode == "bulk"
        count = sum(s.bytes_received if bulk else s.completed for s in snapshots)
        rate = (count - self._last_count) / max(now - self._last_time, 1e-9)
        self._last_count, self._last_time = count, now
        errors = sum(s.errors for s in snapshots)
        connected = sum(s.connected for s in snapshots)
        amount = (
            f"{count / 1e6:,.1f} MB, {rate / 1e6:,.1f} MB/s"
            if bulk
            else f"{count:,} requests, {rate:,.0f} req/s"
        )
        line = (
            f"[{Phase.NAMES[phase]} {now - self._started:5.1f}s] {amount}, "
            f"{errors} errors, {connected}/{self.config.connections} connected"
        )
        self.output.status(line)

    def finish(self) -> None:
        self.output.end_status()


# -- in this process ---------------------------------------------------------------------


class LocalControl(Control):
    """The control of a run in this process: start at once, keep the latest progress."""

    def __init__(self) -> None:
        self.latest = Progress()

    async def ready(self) -> float:
        return time.monotonic()

    def publish(self, progress: Progress) -> None:
        self.latest = progress


def _run_here(config: BenchConfig, progress: ProgressLine | None) -> ProcessResult:
    import asyncio

    control = LocalControl()

    async def main() -> ProcessResult:
        shown = asyncio.create_task(_show_every_second(control, progress))
        try:
            return await drive(config.shares()[0], control)
        finally:
            shown.cancel()
            if progress is not None:
                progress.show([control.latest])  # the last word, however short the run

    return loops.run(main(), config.loop)


async def _show_every_second(control: LocalControl, progress: ProgressLine | None) -> None:
    import asyncio

    if progress is None:
        return
    while True:
        await asyncio.sleep(1.0)
        progress.show([control.latest])


# -- in worker processes -----------------------------------------------------------------


class _WorkerControl(Control):
    def __init__(self, pipe: multiprocessing.connection.Connection, slots: Any, index: int):
        self.pipe = pipe
        self.slots = slots
        self.base = index * _PROGRESS_FIELDS

    async def ready(self) -> float:
        import asyncio

        self.pipe.send(("ready", None))
        loop = asyncio.get_running_loop()
        start_at: float = await loop.run_in_executor(None, self.pipe.recv)
        return start_at

    def publish(self, progress: Progress) -> None:
        base = self.base
        self.slots[base] = progress.phase
        self.slots[base + 1] = progress.completed
        self.slots[base + 2] = progress.bytes_received
        self.slots[base + 3] = progress.errors
        self.slots[base + 4] = progress.connected


def _worker_main(
    share: LoadShare,
    loop_name: loops.LoopName,
    pipe: multiprocessing.connection.Connection,
    slots: Any,
    index: int,
) -> None:
    die_with_parent(signal.SIGTERM)
    result = loops.run(drive(share, _WorkerControl(pipe, slots, index)), loop_name)
    pipe.send(("result", result))


def _progress_from(slots: Any, index: int) -> Progress:
    base = index * _PROGRESS_FIELDS
    return Progress(
        phase=int(slots[base]),
        completed=int(slots[base + 1]),
        bytes_received=int(slots[base + 2]),
        errors=int(slots[base + 3]),
        connected=int(slots[base + 4]),
    )


class _WorkerPool:
    """The forked worker processes and this process's ends of their pipes."""

    def __init__(self) -> None:
        self.processes: list[multiprocessing.context.ForkProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []

    def start(
        self,
        context: multiprocessing.context.ForkContext,
        config: BenchConfig,
        shares: Sequence[LoadShare],
        slots: Any,
    ) -> None:
        for index, share in enumerate(shares):
            ours, theirs = context.Pipe()
            worker = context.Process(
                target=_worker_main,
                args=(share, config.loop, theirs, slots, index),
                name=f"tcpecho-bench-{index}",
                daemon=True,
            )
            worker.start()
            theirs.close()
            self.processes.append(worker)
            self.pipes.append(ours)

    def forward_stop(self, signum: int, frame: object) -> None:
        """A signal handler: pass a stop on to every worker still running."""
        for worker in self.processes:
            if worker.pid is not None and worker.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    def reap(self) -> None:
        """Wait a moment for each worker to exit, kill those that do not, close the pipes."""
        for worker in self.processes:
            worker.join(timeout=0.5)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()


def _run_workers(
    config: BenchConfig, progress: ProgressLine | None
) -> tuple[list[ProcessResult], dict[str, int]]:
    context = multiprocessing.get_context("fork")
    shares = config.shares()
    slots = context.RawArray(ctypes.c_double, len(shares) * _PROGRESS_FIELDS)
    pool = _WorkerPool()
    failures: dict[str, int] = {}
    previous = {
        signum: signal.signal(signum, pool.forward_stop)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        pool.start(context, config, shares, slots)
        pipes = pool.pipes
        ready = _receive_all(pipes, "ready", time.monotonic() + config.timeout_s + _WORKER_GRACE_S)
        start_at = time.monotonic() + 0.05
        for index in ready:
            pipes[index].send(start_at)
        deadline = (
            start_at + config.warmup_s + config.duration_s + config.timeout_s + _WORKER_GRACE_S
        )
        waiting = {index: pipes[index] for index in ready}
        results = _collect_results(waiting, deadline, slots, len(shares), progress)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        pool.reap()
    lost = len(shares) - len(results)
    if lost:
        failures["WORKER_FAILED"] = lost
    return [results[index] for index in sorted(results)], failures


def _collect_results(
    waiting: dict[int, multiprocessing.connection.Connection],
    deadline: float,
    slots: Any,
    workers: int,
    progress: ProgressLine | None,
) -> dict[int, ProcessResult]:
    """The results of the ``waiting`` workers that send one by the deadline, by worker index;
    the progress line shows every second meanwhile."""
    results: dict[int, ProcessResult] = {}
    next_show = time.monotonic() + 1.0
    while waiting and time.monotonic() < deadline:
        ready_pipes = multiprocessing.connection.wait(
            list(waiting.values()),
            timeout=max(0.0, min(next_show, deadline) - time.monotonic()),
        )
        for index, pipe in list(waiting.items()):
            if pipe not in ready_pipes:
                continue
            del waiting[index]
            with contextlib.suppress(EOFError, OSError):
                kind, payload = pipe.recv()
                if kind == "result":
                    results[index] = payload
        if progress is not None and time.monotonic() >= next_show:
            progress.show(_all_progress(slots, workers))
            next_show += 1.0
    if progress is not None:
        progress.show(_all_progress(slots, workers))
    return results


def _all_progress(slots: Any, workers: int) -> list[Progress]:
    return [_progress_from(slots, index) for index in range(workers)]


def _receive_all(
    pipes: list[multiprocessing.connection.Connection], expected: str, deadline: float
) -> list[int]:
    """Indexes of the workers that sent ``expected`` before the deadline."""
    pending = dict(enumerate(pipes))
    arrived: list[int] = []
    while pending and time.monotonic() < deadline:
        ready = multiprocessing.connection.wait(
            list(pending.values()), timeout=max(0.0, deadline - time.monotonic())
        )
        for index, pipe in list(pending.items()):
            if pipe in ready:
                del pending[index]
                with contextlib.suppress(EOFError, OSError):
                    kind, _ = pipe.recv()
                    if kind == expected:
                        arrived.append(index)
    return sorted(arrived)
