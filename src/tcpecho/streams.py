"""The process's standard streams: always open, and output that may go away without harm.

A server or client whose stdout is closed, full (``/dev/full``) or a pipe whose reader left
(``tcpecho server | head -1``, a log collector that died) must keep doing its job, stop
cleanly and exit with its documented status. Two things stand in the way, and this module
removes both:

- A closed descriptor 0, 1 or 2 at start is the next one ``socket()`` returns: the
  connection would then *be* "stdout", log lines would be written into it, and uvloop
  aborts the process when it closes a socket numbered 2 or less. ``secure_standard_streams``
  opens ``/dev/null`` on each closed one before anything else runs.
- Writes through ``sys.stdout`` keep what they could not write in Python's buffer, and the
  interpreter's last flush at exit then fails with status 120 (on some 3.11 builds, not
  others). ``Output`` writes straight to the descriptor instead, and a line that cannot be
  written is dropped; the first failure is said once on stderr.

A third would freeze the event loop: a pipe whose reader is alive but stopped reading (a
log shipper that hangs, ``tcpecho server | less`` left alone). A blocking ``write`` into a
full pipe blocks the whole process, echo included. ``Output`` asks the kernel first
(``poll``, no wait) whether the descriptor can take a write, and drops the line if it
cannot, counting it; the loop never waits for a reader. Lines are written in pieces of at
most ``PIPE_BUF`` bytes, which a pipe that polls writable takes whole without blocking; a
line longer than that waits at most ``LINE_FINISH_S`` for its rest. The logs say how many
lines a burst lost once lines get through again (``log_lines_dropped``, in ``logs``).

What is written can also harm the reader: text tcpecho did not choose (another program's
command line, its last words) may carry terminal sequences that clear the screen or
recolour what follows. ``escape_controls`` makes such text harmless, as ``ps`` does.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading

STDIN, STDOUT, STDERR = 0, 1, 2
# The most a pipe takes in one write without interleaving or, once it polls writable, blocking.
PIPE_BUF = select.PIPE_BUF
# A line longer than PIPE_BUF waits at most this long for room for its rest.
LINE_FINISH_S = 0.1


def secure_standard_streams() -> None:
    """Open ``/dev/null`` on any of descriptors 0-2 that is closed; call first thing."""
    closed = [fd for fd in (STDIN, STDOUT, STDERR) if not _is_open(fd)]
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:  # the lowest free descriptor is usually the closed one itself
            os.dup2(null, fd)
            os.close(null)
    # Python leaves a stream that was closed at start as None; give it the null device.
    if sys.stdout is None:
        sys.stdout = open(STDOUT, "w", closefd=False)  # noqa: SIM115 - lives with the process
    if sys.stderr is None:
        sys.stderr = open(STDERR, "w", closefd=False)  # noqa: SIM115
    if STDOUT in closed:
        say_once_on_stderr("stdout is closed: log lines are discarded")


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class Output:
    """Writes to a descriptor, never raising: whole lines, or a status line kept in place.

    Each line is one ``write``, which keeps lines whole when the workers of ``server
    --workers`` share stdout. A line that cannot be written is dropped (later ones are
    still tried: a full disk may free up); the first failure is said once on stderr.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.tty = os.isatty(fd)
        self.dropped = 0  # lines dropped since the start
        self.dropped_in_burst = 0  # since a line last got through (for log_lines_dropped)
        self._status_shown = False
        self._lock = threading.Lock()
        self._poller = select.poll()
        self._poller.register(fd, select.POLLOUT)

    def line(self, text: str) -> bool:
        """``text`` as a line of its own; a status line on show stays, as it last read.
        Whether it was written (False: dropped)."""
        written = self._write(("\n" if self._status_shown else "") + text + "\n")
        self._status_shown = False
        return written

    def status(self, text: str) -> None:
        """On a terminal, replace the status line with ``text``; elsewhere, a line."""
        if not self.tty:
            self.line(text)
            return
        self._write("\r\x1b[K" + text)
        self._status_shown = True

    def end_status(self) -> None:
        """Leave the status line as it is and go on below it."""
        if self._status_shown:
            self._write("\n")
            self._status_shown = False

    def _write(self, text: str) -> bool:
        data = text.encode("utf-8", "backslashreplace")
        with self._lock:
            try:
                if not self._writable(0):
                    self._drop(None)
                    return False
                # A view, so each write moves a window over the line instead of copying
                # the rest of it (a 20 MB snapshot line took seconds to copy 4 KiB at a time).
                rest = memoryview(data)
                while True:
                    rest = rest[os.write(self.fd, rest[:PIPE_BUF]) :]
                    if not rest:
                        break
                    if not self._writable(LINE_FINISH_S):
                        self._drop(None)  # the rest of the line is lost with it
                        return False
            except OSError as error:
                self._drop(error)
                return False
        return True

    def _writable(self, timeout_s: float) -> bool:
        # POLLERR/POLLHUP come back as writable: the write then fails and says why.
        return bool(self._poller.poll(timeout_s * 1000))

    def _drop(self, error: OSError | None) -> None:
        self.dropped += 1
        self.dropped_in_burst += 1
        if self.dropped_in_burst > 1:
            return
        name = {STDOUT: "stdout", STDERR: "stderr"}.get(self.fd, f"fd {self.fd}")
        if error is None:
            # Once per burst: the reader may come back, and stop again.
            _said.discard(f"{name}: not being read: lines are dropped until it is")
            say_once_on_stderr(f"{name}: not being read: lines are dropped until it is")
        elif self.dropped == 1:
            say_once_on_stderr(
                f"{name}: {error.strerror or type(error).__name__}: "
                "output that cannot be written is dropped"
            )


STDOUT_OUTPUT = Output(STDOUT)


_said: set[str] = set()


def say_once_on_stderr(message: str) -> None:
    """One line on stderr, at most once per message, ignoring a stderr that is gone too."""
    if message in _said:
        return
    _said.add(message)
    with contextlib.suppress(OSError):
        os.write(STDERR, f"tcpecho: {message}\n".encode("utf-8", "backslashreplace"))


# Every control character, C0 (ESC among them), DEL and C1 (CSI among them), to "?".
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0)], "?")


def escape_controls(text: str) -> str:
    """``text`` that tcpecho did not choose (a command line, a program's output), safe to
    show on a terminal: each control character becomes one ``?``, as ``ps`` shows it.

    The rule is procps-ng's for a UTF-8 locale (``library/escape.c``, ``u8charlen``, since
    4.0.5): every C0 control (U+0000-U+001F: ESC, so no terminal sequence survives, but also
    tab and newline), DEL (U+007F) and every C1 control (U+0080-U+009F: CSI, which some
    terminals take for ESC [) becomes ``?``, one for one, so a table's columns still line
    up; everything else stays as it is. Bytes that were not UTF-8, which ps also shows as
    ``?``, reach here already replaced (U+FFFD) by the decoding of whoever read them."""
    return text.translate(_CONTROLS)


def write_stdout(text: str) -> None:
    """A report for the user (the lab's table, the benchmark's figures) on stdout."""
    STDOUT_OUTPUT.line(text)


def discard_unflushed_stdout() -> None:
    """Flush ``sys.stdout`` now, and drop what cannot be written.

    Python flushes ``sys.stdout`` once more at exit and turns a failure there into exit
    status 120, whatever the command returned. Called on the way out, this settles the
    buffer first: its content is written if it can be, and forgotten if it cannot.
    """
    stream = sys.stdout
    if stream is None:
        return
    try:
        stream.flush()
    except (OSError, ValueError):
        # Point the descriptor at the null device: the buffer then flushes into it, here
        # and at exit, instead of failing again.
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, stream.fileno())
            os.close(null)
            stream.flush()
