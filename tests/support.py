"""Test support: tcpecho processes whose JSON log lines are collected as they arrive."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tcpecho.process import free_port

__all__ = [
    "Event",
    "LoggedProcess",
    "abandoned_namespaces",
    "echo_once",
    "free_port",
    "tcpecho_executable",
]

Event = dict[str, Any]


def tcpecho_executable() -> str:
    """The installed console script: end-to-end tests run what users run."""
    path = shutil.which("tcpecho")
    if path is None:
        raise RuntimeError("the tcpecho console script is not on PATH: pip install the project")
    return path


def echo_once(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``payload``, half-close, and read until the server closes: its whole echo."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


class LoggedProcess:
    """A subprocess emitting JSON log lines; non-JSON stdout lines and stderr are kept too."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.events: list[Event] = []
        self.other_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self, stream: Any) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            with self._changed:
                if isinstance(event, dict):
                    event["_received_at"] = time.monotonic()
                    self.events.append(event)
                else:
                    self.other_lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.stderr_lines.append(line.rstrip("\n"))

    def named(self, name: str) -> list[Event]:
        with self._changed:
            return [event for event in self.events if event.get("event") == name]

    def wait_for(
        self,
        name: str,
        timeout: float = 10.0,
        where: Callable[[Event], bool] = lambda event: True,
        count: int = 1,
    ) -> Event:
        """The ``count``-th event called ``name`` that satisfies ``where``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [e for e in self.events if e.get("event") == name and where(e)]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {name!r} (#{count}) within {timeout}s from {self.argv}; "
                        f"events: {[e.get('event') for e in self.events]}; "
                        f"stderr: {self.stderr_lines[-5:]}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def wait(self, timeout: float = 10.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(2)
        return code

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """Kill the process if it is still running (test teardown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def assert_no_traceback(self) -> None:
        joined = "\n".join(self.stderr_lines + self.other_lines)
        assert "Traceback" not in joined, joined


def abandoned_namespaces(prefix: str) -> list[str]:
    """Namespaces of earlier test runs that were killed: named ``PREFIX<pid>-...`` after a
    process that is gone. A run going on beside this one keeps its own."""
    from tcpecho.lab.topology import leftover_namespaces

    abandoned = []
    for name in leftover_namespaces(prefix):
        pid = name.removeprefix(prefix).split("-")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            abandoned.append(name)
        except (ValueError, PermissionError):
            continue
    return abandoned
