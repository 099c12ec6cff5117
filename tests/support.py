"""Test support: tcpecho processes whose JSON log lines are collected as they arrive, and
``/metrics`` scraped over a real socket and read with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
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
from dataclasses import dataclass
from typing import Any

from tcpecho.process import free_port

__all__ = [
    "Event",
    "LoggedProcess",
    "Scrape",
    "abandoned_namespaces",
    "echo_once",
    "free_port",
    "http_request",
    "http_request_on_loop",
    "parse_http_answer",
    "port_of",
    "read_table",
    "scrape",
    "scrape_on_loop",
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


def port_of(address: str) -> int:
    """The port of ``127.0.0.1:9100`` or ``[::]:9100``, as the logs print addresses."""
    return int(address.rsplit(":", 1)[1])


def http_request(host: str, port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is, read until the server closes: status, headers, body."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return parse_http_answer(answer)


async def http_request_on_loop(
    host: str, port: int, request: bytes
) -> tuple[int, dict[str, str], bytes]:
    """``http_request`` from a coroutine, for an endpoint served on the test's own loop.
    A connection reset, or a close without an answer, is status 0."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    try:
        async with asyncio.timeout(5):
            answer = await reader.read()
    except ConnectionResetError:
        answer = b""  # closed with our bytes unread: the kernel resets rather than ends
    finally:
        writer.close()
    return parse_http_answer(answer) if answer else (0, {}, b"")


def parse_http_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split(" ")[1]), headers, body


@dataclass(frozen=True)
class Scrape:
    """One scrape of ``/metrics``: every sample by name and labels."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        from prometheus_client.parser import text_string_to_metric_families

        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return cls(text, samples)

    def value(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            raise AssertionError(f"no sample {name}{labels or ''} in the scrape:\n{self.text}")
        return self.samples[key]

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample called ``name``, by its labels."""
        return {labels: value for (found, labels), value in self.samples.items() if found == name}

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: tcpecho\r\nAccept: */*\r\n\r\n"


def scrape(host: str, port: int) -> Scrape:
    """GET /metrics over a real connection, as Prometheus would; it must answer 200 in the
    text format."""
    return _scraped(*http_request(host, port, SCRAPE))


async def scrape_on_loop(host: str, port: int) -> Scrape:
    """``scrape`` from a coroutine, for an endpoint served on the test's own loop."""
    return _scraped(*await http_request_on_loop(host, port, SCRAPE))


def _scraped(status: int, headers: dict[str, str], body: bytes) -> Scrape:
    assert status == 200, (status, body)
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8", headers
    assert int(headers["Content-Length"]) == len(body)
    return Scrape.parse(body.decode())


def read_table(text: str) -> list[dict[str, str]]:
    """The rows of the first table in ``text`` (``lab.report.render_table``'s form: a header,
    a line of dashes per column, rows lined up under them), each as {column: cell}."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans, at = [], 0
    for dashes in lines[rule].split("  "):
        spans.append((at, at + len(dashes)))
        at += len(dashes) + 2
    names = [lines[rule - 1][start:end].strip() for start, end in spans]
    rows = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        rows.append(
            {name: line[start:end].strip() for name, (start, end) in zip(names, spans, strict=True)}
        )
    return rows


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
