"""``tcpecho server --workers N``: N server processes sharing one port through SO_REUSEPORT.

The command chooses between this and one process (``server.run``); the server itself knows
nothing of its supervisor.

The parent binds one listening socket set per worker (all with SO_REUSEPORT, on the same
port, so ``--port 0`` works too), forks the workers, and keeps none of the sockets itself:
a listening socket nobody accepts on would still be handed connections by the kernel. Each
worker is an ordinary ``EchoServer`` with its own event loop, graceful shutdown included.

The parent only supervises. It forwards SIGTERM and SIGINT to every worker (the workers
run in their own process group, so a terminal's Ctrl-C reaches them once, through the
parent), and exits once they all have: 0 when every worker exited 0. A worker that exits
on its own is a failure: the others are stopped too and the parent exits 1, so a pod is
restarted whole rather than serving with fewer workers than asked for. Workers receive
SIGINT if the parent dies (PR_SET_PDEATHSIG), so none outlives it.

This helps only where there are cores to spare: on a 2-core machine the load generator
needs one, and the benchmark (docs/performance.md) shows no gain.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from tcpecho import events, loops
from tcpecho.logs import get_logger
from tcpecho.process import STOP_SIGNALS, die_with_parent, raise_open_file_limit, signal_all
from tcpecho.server.server import EchoServer, ServerConfig, failed_to_bind, serve_process
from tcpecho.tcp.names import format_address

_STOP_SIGNALS = set(STOP_SIGNALS)


def run(config: ServerConfig) -> int:
    """Fork ``config.workers`` servers on one port and wait for them; the exit status."""
    open_files = raise_open_file_limit()
    log = get_logger()
    binder = EchoServer(config)
    socket_sets: list[list[socket.socket]] = []
    try:
        socket_sets.append(binder.bind())
        while len(socket_sets) < config.workers:
            socket_sets.append(binder.bind_again(socket_sets[0]))
    except OSError as error:
        for sockets in socket_sets:
            for sock in sockets:
                sock.close()
        events.emit(log, failed_to_bind(config, error))
        return 1
    # Block the signals before forking: none may be lost between fork and sigwait, and
    # the workers unblock them before installing their own handlers.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS | {signal.SIGCHLD})
    addresses = [format_address(sock.getsockname()) for sock in socket_sets[0]]
    workers: dict[int, int] = {}  # pid -> worker number
    parent = os.getpid()
    try:
        for number in range(len(socket_sets)):
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _worker(config, number, socket_sets, parent, previous_mask)
            workers[pid] = number
    finally:
        for sockets in socket_sets:
            for sock in sockets:
                sock.close()
    events.emit(
        log,
        events.WorkersStarted(
            addresses=addresses,
            workers={str(number): pid for pid, number in workers.items()},
            max_open_files=open_files,
        ),
    )
    try:
        return _wait(config, workers)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _worker(
    config: ServerConfig,
    number: int,
    socket_sets: list[list[socket.socket]],
    parent: int,
    mask: set[int | signal.Signals],
) -> None:
    """The forked child: serve on its own socket set, then leave without unwinding."""
    status = 1
    try:
        os.setpgid(0, 0)
        # SIGINT, not SIGTERM: a worker started with --catch-sigterm ignores SIGTERM, and an
        # orphaned worker would keep serving with nobody to stop it.
        die_with_parent(signal.SIGINT)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)
        for index, sockets in enumerate(socket_sets):
            if index != number:
                for sock in sockets:
                    sock.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        server = EchoServer(config, sockets=socket_sets[number], worker=number)
        status = loops.run(serve_process(server), config.loop)
    except BaseException as error:  # a worker must never return into the parent's code
        events.emit(get_logger(worker=number), events.WorkerFailed(error=repr(error)))
    finally:
        sys.stdout.flush()
        os._exit(status)


def _wait(config: ServerConfig, workers: dict[int, int]) -> int:
    """Forward stop signals and reap workers until none is left; the exit status."""
    log = get_logger()
    failed = False
    stopping = False
    while workers:
        info = signal.sigwaitinfo(_STOP_SIGNALS | {signal.SIGCHLD})
        if info.si_signo == signal.SIGCHLD:
            for pid, status in _reap(workers):
                number = workers.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                expected = code == 0 and stopping
                events.emit(
                    log,
                    events.WorkerExited(worker=number, pid=pid, exit_code=code, expected=expected),
                )
                if code != 0 or not stopping:
                    failed = True
                if not stopping:
                    stopping = True
                    # SIGINT: workers started with --catch-sigterm would ignore a SIGTERM.
                    signal_all(workers, signal.SIGINT)
            continue
        signum = signal.Signals(info.si_signo)
        if not (signum == signal.SIGTERM and config.catch_sigterm):
            stopping = True
        # The workers log what they make of it (shutdown, forced shutdown, ignored).
        signal_all(workers, signum)
    return 1 if failed else 0


def _reap(workers: dict[int, int]) -> list[tuple[int, int]]:
    exited = []
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in workers:
            exited.append((pid, status))
    return exited
