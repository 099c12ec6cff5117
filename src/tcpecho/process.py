"""Process plumbing that several commands share: stop signals, children that die with their
parent, signalling a set of processes, the open-file limit, and waiting for a listener.

Each is written once here because each copy had started to differ: the server, the client,
the load generator and the lab all stop on SIGINT and SIGTERM (handled on their event loop;
``watch``, which has none, holds them back and waits for them); the server's workers and the
load generator's processes must not outlive their parent; the supervisor and the lab's
cleanup both signal every process of a set, some of which may be gone already.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1


def on_stop_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> None:
    """Call ``handler(signum)`` on the loop for SIGINT and SIGTERM.

    Installed explicitly, so they also work for PID 1 of a container, where the kernel drops
    signals whose action is the default."""
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handler, signum)


def forget_stop_signals(loop: asyncio.AbstractEventLoop, *, ignore: bool = False) -> None:
    """Remove the loop's stop-signal handlers; with ``ignore``, ignore later ones.

    A process about to exit ignores them: a late SIGTERM would otherwise turn its exit
    status into 143, and a late SIGINT into a traceback."""
    for signum in STOP_SIGNALS:
        loop.remove_signal_handler(signum)
        if ignore:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[Callable[[float], bool]]:
    """SIGINT and SIGTERM held back while a loop without an event loop does its work (the
    watch: taking and showing a snapshot), and waited for between two rounds:
    ``wait(seconds)`` is True when one came.

    Held back rather than handled, so a stop always falls between two rounds (two whole
    frames of the watch), Ctrl-C raises no KeyboardInterrupt, and there is no handler to
    race the loop. A blocked signal is queued even for PID 1 of a container, which drops
    default-action signals."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield lambda seconds: signal.sigtimedwait(STOP_SIGNALS, seconds) is not None
    finally:
        # A second Ctrl-C still pending would otherwise act the moment it is unblocked.
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_with_parent(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (PR_SET_PDEATHSIG).

    Best effort: where prctl is missing (not Linux) nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts: signalling it is
    refused, it is not gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_all(pids: Iterable[int], signum: int) -> None:
    """Send ``signum`` to every process of ``pids``; one that is gone already is skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; the soft limit now in force.

    Each TCP connection is a file descriptor, and the usual soft limit (1024) would stop a
    server or a load generator far below what the machine holds. Raising the soft limit up
    to the hard one needs no privilege."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is no valid soft limit for open files: Linux caps it at nr_open.
    target = _nr_open(default=soft) if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def _nr_open(default: int) -> int:
    try:
        with open("/proc/sys/fs/nr_open") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return default


def wait_until_listening(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Block until a TCP connect to ``host:port`` succeeds; ``TimeoutError`` after the wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}: {error}") from None
            time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
