"""The node agent (``tcpecho watch --all-namespaces --metrics-port``): a snapshot of the node's
network namespaces at every interval, and ``/metrics`` serving the last one (``run``).

A snapshot reads thousands of sockets and may take seconds, blocking as it goes; the scrapes
must stay cheap. So each snapshot runs in a worker thread of its own while the event loop
serves ``/metrics`` (``tcpecho.metrics``), and its result comes back to the loop, which hands
it to the collector (``metrics.NodeCollector``): the collector's state changes only on the
loop, where the scrapes read it, and needs no lock. One snapshot at a time: the next starts
an interval after the last one started, or at once if that one ran longer. A snapshot that
raises is counted (``errors_total{source="snapshot"}``) and logged, and the agent goes on
with the next; the metrics keep the last snapshot that worked.

SIGINT and SIGTERM stop the agent at once: a snapshot in flight only reads, so its thread
(a daemon) is left to the process's exit rather than waited for. The agent logs events only
(``agent_started``, ``snapshot_failed``, ...), never a table per snapshot: a DaemonSet's
stdout fills the node's ``/var/log/pods``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tcpecho import events, loops
from tcpecho.agent.metrics import IPNetwork, NodeCollector, service_networks
from tcpecho.logs import get_logger
from tcpecho.metrics import new_registry, serve
from tcpecho.process import forget_stop_signals, on_stop_signals
from tcpecho.settings import check_duration
from tcpecho.watch.config import MIN_INTERVAL_S, WatchConfig
from tcpecho.watch.look import NodeSnapshot, NodeWatcher

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["RELIST_EVERY", "TakeSnapshot", "node_watcher", "run", "service_networks"]

TakeSnapshot = Callable[[], NodeSnapshot]
T = TypeVar("T")
# A namespace nothing can have changed in (watch/changes.py) is listed again at least every
# 24th snapshot, two minutes at the DaemonSet's 5 s interval: the bound on how long what no
# counter shows (a socket passed to another process, a sysctl changed) goes unseen. Each
# snapshot lists a 24th of the quiet namespaces: with 50 pods and 20,000 sockets, 0.05 s
# of CPU where listing all of them takes 0.6 s (docs/performance.md).
RELIST_EVERY = 24


def node_watcher(config: WatchConfig) -> NodeWatcher:
    """The agent's watcher: each namespace listed again only when it may have changed, and
    at least every ``RELIST_EVERY`` snapshots."""
    return NodeWatcher(config, relist_every=RELIST_EVERY)


def run(
    take_snapshot: TakeSnapshot,
    interval_s: float,
    port: int,
    host: str,
    service_cidrs: Iterable[str],
) -> int:
    """Serve the node's metrics on ``host:port`` from a snapshot taken every ``interval_s``
    until SIGINT or SIGTERM; the exit status: 0 after the signal, 1 when ``/metrics`` cannot
    be served (``metrics_failed`` is logged). Logging must be configured (``logs.configure``).

    A bad ``service_cidrs`` or ``interval_s`` raises ``SettingError`` (on ``service_cidr``,
    ``interval``) before anything starts."""
    networks = service_networks(service_cidrs)
    check_duration("interval", interval_s, minimum=MIN_INTERVAL_S, step=0.001)
    return loops.run(_serve_node(take_snapshot, interval_s, port, host, networks), "auto")


async def _serve_node(
    take_snapshot: TakeSnapshot,
    interval_s: float,
    port: int,
    host: str,
    networks: tuple[IPNetwork, ...],
) -> int:
    log = get_logger()
    collector = NodeCollector(networks)
    registry = new_registry()
    registry.register(collector)
    endpoint = await serve(registry, host, port, log)
    if endpoint is None:  # metrics_failed is logged
        return 1
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()
    on_stop_signals(loop, lambda signum: None if stopped.done() else stopped.set_result(signum))
    started = time.monotonic()
    events.emit(
        log,
        events.AgentStarted(
            pid=os.getpid(),
            interval_s=interval_s,
            service_cidrs=[str(network) for network in networks],
            loop=type(loop).__module__.split(".")[0],
        ),
    )
    snapshots = _Snapshots(take_snapshot, collector, log)
    try:
        await snapshots.until(stopped, interval_s)
    finally:
        # The process exits next: a late signal must not turn its status into 143.
        forget_stop_signals(loop, ignore=True)
        await endpoint.close()
    events.emit(
        log,
        events.AgentStopped(
            signal=signal.Signals(stopped.result()).name,
            snapshots=snapshots.taken,
            failures=snapshots.failures,
            duration_s=round(time.monotonic() - started, 3),
        ),
    )
    return 0


@dataclass(frozen=True)
class _Taken:
    """One call of the snapshot function: its snapshot, or what it raised."""

    snapshot: NodeSnapshot | None
    error: Exception | None
    started: float  # time.monotonic()
    duration_s: float


def _take(take_snapshot: TakeSnapshot) -> _Taken:
    started = time.monotonic()
    try:
        snapshot = take_snapshot()
    except Exception as error:  # whatever it was, the agent goes on: counted and logged
        return _Taken(None, error, started, time.monotonic() - started)
    return _Taken(snapshot, None, started, time.monotonic() - started)


class _Snapshots:
    """Takes the snapshots, one at a time, and hands each to the collector on the loop."""

    def __init__(
        self, take_snapshot: TakeSnapshot, collector: NodeCollector, log: FilteringBoundLogger
    ) -> None:
        self._take_snapshot = take_snapshot
        self._collector = collector
        self._log = log
        self.taken = 0  # whole snapshots
        self.failures = 0  # snapshots that raised
        self._in_a_row = 0  # failures since the last whole snapshot
        self._failing_since = 0.0
        self._parts_said: set[str] = set()  # parts whose failure was logged

    async def until(self, stopped: asyncio.Future[int], interval_s: float) -> None:
        """Take snapshots until ``stopped`` is done: never two at once, each started an
        interval after the last one started, or at once when that one ran longer."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval_s
            taking = _in_daemon_thread(lambda: _take(self._take_snapshot))
            either: list[asyncio.Future[Any]] = [taking, stopped]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if stopped.done():
                return
            self._record(taking.result())
            del taking, either  # the snapshot's objects go before the next is built
            await asyncio.wait([stopped], timeout=max(0.0, due - loop.time()))
            if stopped.done():
                return

    def _record(self, taken: _Taken) -> None:
        if taken.snapshot is None:
            self._record_failure(taken)
            return
        self.taken += 1
        if self._in_a_row:
            failing_s = round(time.monotonic() - self._failing_since, 3)
            events.emit(
                self._log,
                events.SnapshotRecovered(failures=self._in_a_row, failing_s=failing_s),
            )
            self._in_a_row = 0
        for part, error in self._collector.record(taken.snapshot).items():
            if part not in self._parts_said:
                self._parts_said.add(part)
                events.emit(self._log, events.MetricsPartFailed(part=part, error=repr(error)))

    def _record_failure(self, taken: _Taken) -> None:
        self.failures += 1
        self._in_a_row += 1
        if self._in_a_row == 1:
            self._failing_since = taken.started
        self._collector.record_failure()
        if self._in_a_row & (self._in_a_row - 1) == 0:  # 1, 2, 4, 8...: a lasting one is quiet
            events.emit(
                self._log,
                events.SnapshotFailed(
                    error=repr(taken.error),
                    failures=self._in_a_row,
                    duration_s=round(taken.duration_s, 3),
                ),
            )


def _in_daemon_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """``work()`` in a daemon thread of its own, its result a future of the running loop.
    ``work`` must not raise. A daemon, so that a stop never waits for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T) -> None:
        if not future.done():
            future.set_result(result)

    def body() -> None:
        result = work()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=body, name="tcpecho-snapshot", daemon=True).start()
    return future
