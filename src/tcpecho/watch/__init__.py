"""``tcpecho watch``: every TCP connection of this network namespace, what the kernel is doing
about it, and when the kernel will give up on it.

The question it answers is a user's: "is my program stuck in the 15-minute hang right now,
and when will the kernel give up?". Its parts: the settings (``config``: ``WatchConfig``),
one look at the connections with the kernel model's answer for each (``look``:
``snapshot``, ``Watched``, with what each connection is at risk from), and the ways a
snapshot is shown (``render``: a table, or one JSON object per line). This module is the loop
that repeats them (``run``), and its exit status; ``WatchConfig`` and ``run`` are the
package's interface.
"""

from __future__ import annotations

import datetime
import os

from tcpecho.model import KernelSettings
from tcpecho.process import stop_signals_held
from tcpecho.streams import STDOUT, Output
from tcpecho.watch.config import WatchConfig
from tcpecho.watch.look import NodeWatcher, Watched, snapshot
from tcpecho.watch.render import render_json, render_table

__all__ = ["WatchConfig", "run"]


def run(config: WatchConfig) -> int:
    """Show snapshots until told to stop (SIGINT, SIGTERM), or one with ``once``; the exit
    status: 0, but 1 for ``once`` with ``stuck`` or ``at_risk`` when a connection matched.

    On a terminal each snapshot replaces the last; elsewhere each is printed in turn. The
    watch also stops when its output is gone (``tcpecho watch --json | head -1``)."""
    output = Output(STDOUT)
    # Kept between snapshots: each socket's options are read once, not every interval.
    node = NodeWatcher(config) if config.all_namespaces else None
    with stop_signals_held() as stop_signal_within:
        while True:
            at = datetime.datetime.now().astimezone()
            kernel = KernelSettings.here()  # a sysctl changed meanwhile counts from now
            if node is not None:
                watched = list(node.snapshot().watched)
            else:
                watched = snapshot(config, kernel)
            output.line(_frame(config, watched, kernel, at, output.tty))
            if config.once:
                return _once_status(config, watched)
            if output.dropped or stop_signal_within(config.interval_s):
                return 0


def _once_status(config: WatchConfig, watched: list[Watched]) -> int:
    """``--once``'s exit status, for scripts, probes and CI: 1 when ``--stuck`` or
    ``--at-risk`` matched a connection, as a failed check; 0 otherwise."""
    return 1 if (config.stuck or config.at_risk) and watched else 0


def _frame(
    config: WatchConfig,
    watched: list[Watched],
    kernel: KernelSettings,
    at: datetime.datetime,
    terminal: bool,
) -> str:
    if config.json:
        return render_json(watched, at)
    if not terminal:
        return render_table(watched, kernel, at, pods=config.all_namespaces) + "\n"
    try:
        columns = os.get_terminal_size(STDOUT).columns
    except OSError:  # the terminal went away: the frame is dropped anyway
        columns = 0
    width = columns if columns > 0 else None  # a pseudo-terminal may say 0: cut nothing
    # Home and clear, then the table: one write, so the redraw does not flicker line by line.
    return "\x1b[H\x1b[J" + render_table(watched, kernel, at, width, config.all_namespaces)
