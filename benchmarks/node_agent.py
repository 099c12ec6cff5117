"""The node agent benchmark: ``tcpecho watch --all-namespaces`` over many network namespaces,
against ``ss -tinp`` for the same namespaces in the same run, and what the agent costs when
it keeps looking.

    python -m benchmarks.node_agent [--namespaces 50] [--connections 200] [--rounds 3]
                                    [--interval 5] [--duration 60] [--child-ehash-entries N]

Root only. Creates the namespaces (``tprfD-agent-PID-N``), each with one process holding its
connections over its own loopback (both ends in the namespace: two sockets listed per
connection, as ``benchmarks/namespaces.py`` holds them), then measures, in the same run:

- ``ss -tinp`` run in each namespace in turn (``nsenter --net=...`` and ``ip netns exec``):
  the wall time for all of them, in alternating order with the next;
- one ``tcpecho watch -A --once --json``, the installed command (the ``tcpecho`` on PATH) in
  a fresh process: its wall time, CPU time and peak RSS (``wait4``, from a small launcher:
  ``LAUNCHER``), and the connections it printed. It looks at every namespace of the host,
  not only those made here;
- the agent: a fresh process that keeps the agent's ``NodeWatcher`` and takes a snapshot
  every ``--interval`` seconds for ``--duration``, as ``watch -A --metrics-port`` at that
  interval does: its first snapshot (which reads every socket's options), then, over the
  window after it (an interval's sleep before each of the ``duration / interval``
  snapshots), its CPU time as a share of one core, each snapshot's wall and CPU time, the
  options it read (none, once every socket's are known), and its peak RSS (its own
  ``VmHWM``). The holders' connections are idle, so the agent lists again only the
  namespaces whose turn it is (``watch/changes.py``); then the same with a watcher that
  lists every namespace at every snapshot, what a node whose every pod sends costs.

``--child-ehash-entries N`` makes the namespaces with ``net.ipv4.tcp_child_ehash_entries``
set to N (each gets a table of established sockets of its own, so listing one walks its own
sockets only, not the node's), and sets the host's value back after.

Every namespace and process is removed at the end, whether the run passed, failed or was
interrupted; the holders also exit when this process dies (their stdin closes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.namespaces import (
    MAX_CONNECTIONS,
    MAX_NAMESPACES,
    _held_namespaces,
    _ip_netns_exec,
    _nsenter,
    _remove_abandoned,
    _ss,
)
from tcpecho.agent import node_watcher
from tcpecho.process import die_with_parent
from tcpecho.watch.config import WatchConfig
from tcpecho.watch.look import NodeWatcher

PREFIX = "tprfD-agent-"
CHILD_EHASH = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")
# The agent's two ways of looking, measured in turn (see ``_agent``).
AGENT_LISTS = {
    "changed": "the namespaces that may have changed (its own)",
    "every": "every namespace at every snapshot (every pod busy)",
}
MAX_DURATION_S = 600
# Runs a command in a child forked from this small process, and writes that child's cost,
# as the kernel accounts it (wait4), to the file named first. Not measured from this
# benchmark's own process: a child it spawns (vfork, then exec) inherits its peak RSS in
# ru_maxrss, the large answers it parsed included; forked from here it inherits only this
# process's few MiB, the floor of the figure.
LAUNCHER = r"""
import json, os, sys
child = os.fork()
if child == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(child, 0)
with open(sys.argv[1], "w") as report:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime,
               usage.ru_maxrss], report)
"""


@dataclass(frozen=True)
class Run:
    """One fresh process's cost: wall time, CPU time (user and system) and peak RSS."""

    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    connections: int


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.node_agent")
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--connections", type=int, default=200, help="per namespace")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=5.0, help="the agent's, seconds")
    parser.add_argument("--duration", type=float, default=60.0, help="the agent's, seconds")
    parser.add_argument(
        "--child-ehash-entries",
        type=int,
        help="net.ipv4.tcp_child_ehash_entries while the namespaces are made: each gets a "
        "table of established sockets of its own (the kernel's default, 0, shares the host's)",
    )
    parser.add_argument("--agent", choices=("changed", "every"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if not 1 <= arguments.namespaces <= MAX_NAMESPACES:
        parser.error(f"--namespaces must be 1 to {MAX_NAMESPACES}")
    if not 1 <= arguments.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be 1 to {MAX_CONNECTIONS}")
    if not 1 <= arguments.rounds <= 20:
        parser.error("--rounds must be 1 to 20")
    if not 0.1 <= arguments.interval <= arguments.duration <= MAX_DURATION_S:
        parser.error(f"need 0.1 <= --interval <= --duration <= {MAX_DURATION_S}")
    if arguments.child_ehash_entries is not None and not (
        arguments.child_ehash_entries == 0 or 128 <= arguments.child_ehash_entries <= 2**24
    ):
        parser.error("--child-ehash-entries must be 0 or 128 to 16777216 (the kernel's range)")
    if os.geteuid() != 0:
        parser.error("needs root: it creates network namespaces and enters them")
    return arguments


@contextlib.contextmanager
def _child_ehash_entries(entries: int | None) -> Iterator[None]:
    """The host's ``tcp_child_ehash_entries`` set to ``entries`` while namespaces are made
    (each made meanwhile keeps its own table), and set back after."""
    if entries is None:
        yield
        return
    before = CHILD_EHASH.read_text()
    CHILD_EHASH.write_text(str(entries))
    try:
        yield
    finally:
        CHILD_EHASH.write_text(before)


def _measured(argv: list[str]) -> tuple[Run, str]:
    """``argv`` run to its end in a fresh process: its cost, from the kernel's own account of
    that one child (``wait4``, in ``LAUNCHER``), and what it printed."""
    with tempfile.TemporaryDirectory(prefix=PREFIX) as folder:
        report = Path(folder) / "cost.json"
        started = time.perf_counter()
        printed = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(report), *argv],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout
        seconds = time.perf_counter() - started
        status, cpu_seconds, peak_rss_kib = json.loads(report.read_text())
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} exited with status {status}")
    return Run(seconds, cpu_seconds, peak_rss_kib / 1024, 0), printed


def _watch_once(tcpecho: str) -> Run:
    run, printed = _measured([tcpecho, "watch", "-A", "--once", "--json"])
    connections = len(json.loads(printed)["connections"])
    return Run(run.seconds, run.cpu_seconds, run.peak_rss_mib, connections)


def _rounds(names: list[str], rounds: int, tcpecho: str) -> dict[str, list[Run]]:
    def ss(enter: Callable[[str], list[str]]) -> Run:
        look = _ss(names, enter)
        return Run(look.seconds, 0.0, 0.0, look.sockets)

    ways: dict[str, Callable[[], Run]] = {
        "nsenter --net=NAME ss -tinp, each": lambda: ss(_nsenter),
        "ip netns exec NAME ss -tinp, each": lambda: ss(_ip_netns_exec),
        "tcpecho watch -A --once --json": lambda: _watch_once(tcpecho),
    }
    runs: dict[str, list[Run]] = {way: [] for way in ways}
    for index in range(rounds):
        for way in list(ways) if index % 2 == 0 else list(reversed(ways)):
            runs[way].append(ways[way]())
    return runs


def _agent(interval_s: float, duration_s: float, lists: str) -> None:
    """The agent's loop, in this (fresh) process: one JSON line of what it cost. ``lists``
    ``changed``: the agent's own watcher, which lists a namespace again when it may have
    changed (and each at least every ``RELIST_EVERY`` snapshots); ``every``: every
    namespace at every snapshot, what a node whose every pod sends at every interval costs."""
    die_with_parent(signal.SIGKILL)  # an interrupted run leaves no agent behind
    config = WatchConfig(all_namespaces=True)
    watcher = node_watcher(config) if lists == "changed" else NodeWatcher(config)
    first = _timed(watcher.snapshot)
    first_reads = watcher.options_read
    window_cpu, window_started = time.process_time(), time.perf_counter()
    snapshots = []
    for _ in range(int(duration_s / interval_s + 1e-9)):
        time.sleep(interval_s)  # as watch's loop: the interval after each snapshot
        snapshots.append(_timed(watcher.snapshot))
    window_s = time.perf_counter() - window_started
    print(
        json.dumps(
            {
                "first": first,
                "first_reads": first_reads,
                "snapshots": snapshots,
                "later_reads": watcher.options_read - first_reads,
                "kept_options": watcher.options_kept,
                "window_s": window_s,
                "window_cpu_s": time.process_time() - window_cpu,
                "peak_rss_mib": _status_mib("VmHWM"),  # since its exec: its own
                "rss_mib": _status_mib("VmRSS"),
            }
        )
    )


def _timed(snapshot: Callable[[], Any]) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    taken = snapshot()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "connections": len(taken.watched),
        "namespaces": taken.namespaces,
    }


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _agent_run(interval_s: float, duration_s: float, lists: str) -> tuple[Run, dict[str, Any]]:
    argv = [sys.executable, "-m", "benchmarks.node_agent", "--agent", lists]
    argv += ["--interval", str(interval_s), "--duration", str(duration_s)]
    run, printed = _measured(argv)
    return run, json.loads(printed)


def _report(
    arguments: argparse.Namespace,
    runs: dict[str, list[Run]],
    agents: dict[str, tuple[Run, dict[str, Any]]],
) -> None:
    total = arguments.namespaces * arguments.connections
    tables = arguments.child_ehash_entries or 0
    print(
        f"{arguments.namespaces} namespaces x {arguments.connections} connections "
        f"({total:,} connections, {2 * total:,} sockets), {arguments.rounds} rounds, "
        f"tcp_child_ehash_entries {tables}, medians:"
    )
    for way, measured in runs.items():
        seconds = statistics.median(run.seconds for run in measured)
        last = measured[-1]
        cost = (
            f", {statistics.median(run.cpu_seconds for run in measured):.2f} s CPU, "
            f"peak RSS {max(run.peak_rss_mib for run in measured):.0f} MiB"
            if last.cpu_seconds
            else ""
        )
        print(f"  {way:36} {seconds:7.3f} s{cost}   {last.connections:,} sockets listed")
    for lists, (process, seen) in agents.items():
        first, later = seen["first"], seen["snapshots"]
        share = seen["window_cpu_s"] / seen["window_s"] * 100
        print(
            f"the agent, listing {AGENT_LISTS[lists]} (every {arguments.interval:g} s for "
            f"{arguments.duration:g} s, {first['connections']:,} sockets in "
            f"{first['namespaces']} namespaces):\n"
            f"  first snapshot {first['seconds']:.3f} s, {first['cpu_seconds']:.3f} s CPU, "
            f"{seen['first_reads']:,} sockets' options read\n"
            f"  then {len(later)} snapshots: median {_median(later, 'seconds'):.3f} s, "
            f"{_median(later, 'cpu_seconds'):.3f} s CPU each, {seen['later_reads']:,} options "
            f"read, {seen['kept_options']:,} kept\n"
            f"  {share:.2f} % of one core over the {seen['window_s']:.0f} s after the first; "
            f"peak RSS {seen['peak_rss_mib']:.0f} MiB (RSS at the end {seen['rss_mib']:.0f} "
            f"MiB; its whole run, {process.cpu_seconds:.1f} s CPU in {process.seconds:.0f} s)"
        )


def _median(snapshots: list[dict[str, float]], key: str) -> float:
    return statistics.median(snapshot[key] for snapshot in snapshots) if snapshots else 0.0


def main() -> None:
    arguments = _arguments()
    if arguments.agent:
        _agent(arguments.interval, arguments.duration, arguments.agent)
        return
    tcpecho = shutil.which("tcpecho")
    if tcpecho is None:
        raise SystemExit("the tcpecho command is not on PATH: pip install the project")
    # A TERM ends the run through the cleanup in finally, as an interrupt does.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    _remove_abandoned(PREFIX)
    with contextlib.ExitStack() as held:
        with _child_ehash_entries(arguments.child_ehash_entries):
            names = held.enter_context(
                _held_namespaces(arguments.namespaces, arguments.connections, PREFIX)
            )
        runs = _rounds(names, arguments.rounds, tcpecho)
        agents = {
            lists: _agent_run(arguments.interval, arguments.duration, lists)
            for lists in AGENT_LISTS
        }
    _report(arguments, runs, agents)


if __name__ == "__main__":
    main()
